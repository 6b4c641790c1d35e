/**
 * A thin SQLite adapter over each runtime's built-in binding: `bun:sqlite` under Bun and
 * `node:sqlite` under Deno, so code above it is runtime-neutral.
 *
 * Both bindings were checked to have FTS5 compiled in: Bun 1.4.4 embeds SQLite 3.53.4 and
 * Deno 2.9.6 embeds SQLite 3.53.2, and `PRAGMA compile_options` lists `ENABLE_FTS5` in both.
 */

/** A value SQLite can bind or return here. */
export type SqlValue = string | number | bigint | null | Uint8Array;

/** A row as an object keyed by column name. */
export type SqlRow = Record<string, SqlValue>;

/** A prepared statement with positional `?` parameters. */
export interface SqlStatement {
  /** Runs the statement and returns the number of rows it changed. */
  run(...params: SqlValue[]): number;
  get(...params: SqlValue[]): SqlRow | undefined;
  all(...params: SqlValue[]): SqlRow[];
}

/** One open database connection. */
export interface SqlConnection {
  exec(sql: string): void;
  /** Returns a prepared statement, cached per SQL text for the life of the connection. */
  prepare(sql: string): SqlStatement;
  /** Finalizes every prepared statement and closes the connection. */
  close(): void;
}

/** Options of {@linkcode openConnection}. */
export interface OpenConnectionOptions {
  /** Whether to open an existing file without write access, which fails if the file is missing. */
  readOnly: boolean;
}

declare const Bun: unknown;

/** Minimal shape of `bun:sqlite`, declared here so Deno can type-check this file. */
interface BunStatement {
  finalize(): void;
  run(...params: SqlValue[]): { changes: number };
  get(...params: SqlValue[]): SqlRow | null;
  all(...params: SqlValue[]): SqlRow[];
}
interface BunDatabase {
  exec(sql: string): void;
  prepare(sql: string): BunStatement;
  close(): void;
}
interface BunSqliteModule {
  Database: new (path: string, options: { readonly?: boolean; create?: boolean; readwrite?: boolean }) => BunDatabase;
}

/** Minimal shape of `node:sqlite`. */
interface NodeStatement {
  run(...params: SqlValue[]): { changes: number | bigint };
  get(...params: SqlValue[]): SqlRow | undefined;
  all(...params: SqlValue[]): SqlRow[];
}
interface NodeDatabase {
  exec(sql: string): void;
  prepare(sql: string): NodeStatement;
  close(): void;
}
interface NodeSqliteModule {
  DatabaseSync: new (path: string, options: { readOnly?: boolean }) => NodeDatabase;
}

/**
 * Opens a SQLite database file with the binding of the current runtime.
 *
 * The module specifiers are held in variables so that Deno's module graph does not try to
 * resolve `bun:sqlite`, which it cannot.
 */
export async function openConnection(path: string, options: OpenConnectionOptions): Promise<SqlConnection> {
  if (typeof Bun !== "undefined") {
    const specifier = "bun:sqlite";
    const { Database } = (await import(specifier)) as BunSqliteModule;
    const database = options.readOnly
      ? new Database(path, { readonly: true })
      : new Database(path, { readwrite: true, create: true });
    return wrapBun(database);
  }
  const specifier = "node:sqlite";
  const { DatabaseSync } = (await import(specifier)) as NodeSqliteModule;
  return wrapNode(new DatabaseSync(path, { readOnly: options.readOnly }));
}

/**
 * Wraps a `bun:sqlite` database. Its statements must be finalized before `close()`, because
 * SQLite otherwise keeps the connection open until they are garbage-collected, and the WAL
 * file is then neither checkpointed nor deleted.
 */
function wrapBun(database: BunDatabase): SqlConnection {
  const statements = new Map<string, BunStatement>();
  return {
    exec: (sql) => database.exec(sql),
    prepare(sql) {
      const prepared = preparedOnce(statements, sql, () => database.prepare(sql));
      return {
        run: (...params) => prepared.run(...params).changes,
        get: (...params) => prepared.get(...params) ?? undefined,
        all: (...params) => prepared.all(...params),
      };
    },
    close() {
      for (const statement of statements.values()) statement.finalize();
      statements.clear();
      database.close();
    },
  };
}

/** Wraps a `node:sqlite` database, whose `close()` finalizes its statements itself. */
function wrapNode(database: NodeDatabase): SqlConnection {
  const statements = new Map<string, NodeStatement>();
  return {
    exec: (sql) => database.exec(sql),
    prepare(sql) {
      const prepared = preparedOnce(statements, sql, () => database.prepare(sql));
      return {
        run: (...params) => Number(prepared.run(...params).changes),
        get: (...params) => prepared.get(...params),
        all: (...params) => prepared.all(...params),
      };
    },
    close() {
      statements.clear();
      database.close();
    },
  };
}

/** Return the statement prepared earlier for `sql`, preparing and keeping it on first use. */
function preparedOnce<S>(statements: Map<string, S>, sql: string, prepare: () => S): S {
  let statement = statements.get(sql);
  if (statement === undefined) {
    statement = prepare();
    statements.set(sql, statement);
  }
  return statement;
}
