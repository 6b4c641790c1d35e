/**
 * An on-disk archive of the input lines that have left the KV cache window, with a
 * full-text index, so questions can recall lines the model has forgotten.
 *
 * Storage is one SQLite file with an FTS5 index, through each runtime's built-in binding
 * (see `archive_sqlite.ts`). The file is in WAL mode, so another process (for example a
 * `recall` command) can read it while a `watch` command writes, and a reader sees only
 * whole committed batches.
 */

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ExitCode, SinkstreamError } from "./errors.ts";
import { openConnection, type SqlConnection, type SqlRow, type SqlStatement } from "./archive_sqlite.ts";

/** Schema version stored in `PRAGMA user_version`. Bump it on any schema change. */
export const ARCHIVE_SCHEMA_VERSION = 1;

/** One input line as it is archived. */
export interface ArchivedLine {
  /** Line number in the input stream, as the caller counts it. */
  lineNumber: number;
  /** Line text, stored exactly as given (a trailing "\n" is kept if present). */
  text: string;
  /** Time the line arrived, in milliseconds since the Unix epoch. */
  arrivalTime: number;
  /** Byte offset of the line's first byte in the input stream. */
  streamOffset: number;
}

/** An archived line returned by {@linkcode LineArchive.search}. */
export interface ArchiveHit extends ArchivedLine {
  /** BM25 relevance, higher is better: the negated value of FTS5's `bm25()`. */
  score: number;
}

/** Options of {@linkcode LineArchive.open}. */
export interface LineArchiveOptions {
  /**
   * Maximum bytes of database pages in use, enforced by {@linkcode LineArchive.prune}.
   * Pruning deletes the oldest lines until usage is at most 90% of this value.
   * @default no limit
   */
  maxBytes?: number;
  /**
   * Maximum age of an archived line in seconds, measured from its `arrivalTime`, enforced
   * by {@linkcode LineArchive.prune}.
   * @default no limit
   */
  maxAgeSeconds?: number;
  /**
   * Open an existing archive without write access, as a second process that only searches.
   * @default false
   */
  readOnly?: boolean;
  /** Clock used for `maxAgeSeconds`, in milliseconds since the Unix epoch. @default Date.now */
  now?: () => number;
}

/** Options of {@linkcode LineArchive.createWriter}. */
export interface ArchiveWriterOptions {
  /** Buffered lines that trigger a flush. @default 512 */
  maxLines?: number;
  /** Maximum time a line waits in the buffer, in milliseconds. @default 1000 */
  maxDelayMs?: number;
  /**
   * Call {@linkcode LineArchive.prune} after every flush, which costs little while the
   * archive is within its limits.
   * @default true
   */
  pruneAfterFlush?: boolean;
}

/**
 * Fraction of `maxBytes` that pruning by size goes down to, so that it does not run on every flush.
 *
 * NOTE: each such prune blocks the caller while it deletes about a tenth of the lines and
 * merges the FTS5 index. Deleting half of a 1,000,000-line archive took 6 s under Deno 2.9.6
 * on one AMD EPYC core, so a flush that crosses `maxBytes` on a large archive pauses for seconds.
 */
const PRUNE_LOW_WATER = 0.9;

/** Upper bound of delete-and-measure rounds in one prune by size. */
const MAX_PRUNE_ROUNDS = 8;

/** Distinct terms and phrases kept from one question; the rest are ignored. */
const MAX_QUERY_TERMS = 32;

/** How long a connection waits for another connection's write lock, in milliseconds. */
const BUSY_TIMEOUT_MS = 5000;

/** WAL file size kept after a checkpoint, in bytes. A larger WAL file is truncated to it. */
const JOURNAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024;

/**
 * Words of English questions that carry no search meaning. They are dropped from a query
 * unless nothing else is left.
 */
const STOP_WORDS = new Set(
  (
    "a about above after again all also am an and any are as at be been before being below between both but by " +
    "can could did do does doing down during each few for from further had has have having he her here hers him " +
    "his how i if in into is it its itself just me more most my no nor not now of off on once only or other our " +
    "ours out over own same she should show so some such than that the their theirs them then there these they " +
    "this those through to too under until up very was we were what when where which while who whom why will " +
    "with would you your yours"
  ).split(" "),
);

/**
 * Turns a free-text question into an FTS5 MATCH expression that cannot be a syntax error.
 *
 * Each whitespace-separated chunk is split into runs of letters, digits and combining marks,
 * which drops every FTS5 operator character (`"`, `*`, `:`, `(`, `^`, `-`, `+`). Every run
 * becomes a double-quoted string, so the bare words AND, OR, NOT and NEAR lose their meaning
 * as operators. A chunk of several runs, such as `/dev/sda1` or `blk_-1608`, also adds the
 * phrase of its runs, which ranks lines with the whole identifier above lines with only its
 * parts. Stop words and single letters are dropped unless nothing else is left, and all
 * terms are joined with OR, so BM25 ranks lines by how many rare terms they share.
 *
 * Returns "" when the question has no letters or digits.
 *
 * @example
 * ```ts
 * toMatchExpression('when did "disk" errors start on /dev/sda1?')
 * // '"disk" OR "errors" OR "start" OR "dev sda1" OR "dev" OR "sda1"'
 * ```
 */
export function toMatchExpression(question: string): string {
  const meaningfulPhrases: string[][] = [];
  const allPhrases: string[][] = [];
  for (const chunk of question.split(/\s+/u)) {
    const words = chunk.match(/[\p{L}\p{N}\p{M}]+/gu);
    if (words === null) continue;
    const meaningful = words.filter((word) => !isStopWord(word));
    if (words.length > 1) {
      allPhrases.push(words);
      if (meaningful.length > 0) meaningfulPhrases.push(words);
    }
    for (const word of words) {
      allPhrases.push([word]);
      if (!isStopWord(word)) meaningfulPhrases.push([word]);
    }
  }

  const chosen = meaningfulPhrases.length > 0 ? meaningfulPhrases : allPhrases;
  const seen = new Set<string>();
  const quoted: string[] = [];
  for (const phrase of chosen) {
    const text = phrase.join(" ").toLowerCase();
    if (seen.has(text)) continue;
    seen.add(text);
    quoted.push(`"${text.replaceAll('"', '""')}"`);
    if (quoted.length === MAX_QUERY_TERMS) break;
  }
  return quoted.join(" OR ");
}

function isStopWord(word: string): boolean {
  const lower = word.toLowerCase();
  return STOP_WORDS.has(lower) || (lower.length === 1 && !/\p{N}/u.test(lower));
}

/**
 * The archive of lines that left the window: a SQLite file with an FTS5 index, searched
 * with BM25.
 *
 * Tokenizer choice: `porter unicode61 remove_diacritics 2`. The unicode61 tokenizer splits
 * on every character that is not a letter or digit, so `kernel:` matches `kernel` and
 * `errors,` matches `errors`. Declaring `-_.:/` as token characters would glue log
 * punctuation to words and break those matches. Identifiers such as `/dev/sda1` or
 * `blk_-1608999687919862906` still match as a whole, because the query adds them as phrases
 * of adjacent tokens. The porter stemmer lets a question's "errors" or "started" match a
 * log's "error" or "start".
 *
 * @example
 * ```ts
 * const archive = await LineArchive.open(undefined, { maxAgeSeconds: 86400 });
 * try {
 *   archive.append([{ lineNumber: 1, text: "disk error on sdb", arrivalTime: Date.now(), streamOffset: 0 }]);
 *   const [hit] = archive.search("when did the disk errors start?", 5);
 *   // hit.lineNumber === 1
 * } finally {
 *   archive.close();
 * }
 * ```
 */
export class LineArchive {
  /** Path of the database file. */
  readonly path: string;
  readonly readOnly: boolean;
  readonly #connection: SqlConnection;
  readonly #options: LineArchiveOptions;
  /** Directory removed on close, for a temporary archive. */
  readonly #temporaryDirectory: string | undefined;
  readonly #insert: SqlStatement | undefined;
  readonly #search: SqlStatement;
  #closed = false;

  private constructor(
    connection: SqlConnection,
    path: string,
    options: LineArchiveOptions,
    temporaryDirectory: string | undefined,
  ) {
    this.#connection = connection;
    this.path = path;
    this.readOnly = options.readOnly === true;
    this.#options = options;
    this.#temporaryDirectory = temporaryDirectory;
    this.#insert = this.readOnly ? undefined : connection.prepare(
      "INSERT INTO archived_lines (line_number, arrival_time, stream_offset, text) VALUES (?, ?, ?, ?)",
    );
    // Ties (repeated log lines score the same) go to the oldest line first.
    this.#search = connection.prepare(
      "SELECT l.line_number, l.arrival_time, l.stream_offset, l.text, bm25(archived_lines_fts) AS bm25 " +
        "FROM archived_lines_fts JOIN archived_lines AS l ON l.id = archived_lines_fts.rowid " +
        "WHERE archived_lines_fts MATCH ? ORDER BY bm25, l.id LIMIT ?",
    );
  }

  /**
   * Opens the archive at `path`, creating it if missing, or a temporary archive that is
   * deleted on {@linkcode close} when `path` is undefined.
   *
   * @throws {SinkstreamError} if the file is not a SQLite database, is a database without the
   * archive schema, has another schema version, or (with `readOnly`) does not exist.
   * @throws {RangeError} if `maxBytes` or `maxAgeSeconds` is not a positive number.
   */
  static async open(path: string | undefined, options: LineArchiveOptions = {}): Promise<LineArchive> {
    validateLimits(options);
    if (path === undefined && options.readOnly === true) {
      throw new TypeError("Invalid line archive options: a temporary archive cannot be read-only; pass a path");
    }

    let temporaryDirectory: string | undefined;
    if (path === undefined) {
      temporaryDirectory = mkdtempSync(join(tmpdir(), "sinkstream-archive-"));
      path = join(temporaryDirectory, "archive.sqlite");
    }
    if (options.readOnly === true && !existsSync(path)) {
      throw new SinkstreamError(`Line archive not found: current path is ${path}`, ExitCode.input);
    }

    let connection: SqlConnection | undefined;
    try {
      connection = await openConnection(path, { readOnly: options.readOnly === true });
      prepareSchema(connection, path, options.readOnly === true);
      return new LineArchive(connection, path, options, temporaryDirectory);
    } catch (error) {
      connection?.close();
      if (temporaryDirectory !== undefined) rmSync(temporaryDirectory, { recursive: true, force: true });
      if (error instanceof SinkstreamError) throw error;
      throw new SinkstreamError(`Failed to open line archive ${path}: ${describeError(error)}`, ExitCode.input);
    }
  }

  /**
   * Appends lines in one transaction, so a reader sees all of them or none. Accepts any
   * iterable, consumed inside the transaction.
   *
   * @throws {TypeError} on a line with a missing or invalid field; no line of the batch is kept.
   */
  append(lines: Iterable<ArchivedLine>): void {
    const insert = this.#writableInsert();
    this.#inTransaction(() => {
      for (const line of lines) {
        validateLine(line);
        insert.run(line.lineNumber, line.arrivalTime, line.streamOffset, line.text);
      }
    });
  }

  /**
   * Returns up to `limit` archived lines that match the words of `question`, best BM25
   * score first. A question without letters or digits returns no lines.
   */
  search(question: string, limit: number): ArchiveHit[] {
    this.#checkOpen();
    if (!Number.isInteger(limit) || limit < 0) {
      throw new RangeError(`Invalid search limit: current value is ${limit}; pass a whole number of at least 0`);
    }
    const expression = toMatchExpression(question);
    if (expression === "" || limit === 0) return [];

    return this.#search.all(expression, limit).map((row) => ({
      lineNumber: row.line_number as number,
      text: row.text as string,
      arrivalTime: row.arrival_time as number,
      streamOffset: row.stream_offset as number,
      score: -(row.bm25 as number),
    }));
  }

  /** Returns the number of archived lines. */
  count(): number {
    this.#checkOpen();
    return selectNumber(this.#connection, "SELECT count(*) AS value FROM archived_lines");
  }

  /**
   * Returns the bytes of database pages in use (page count minus free pages, times page
   * size). The file can be larger until free pages are released, and the WAL file comes on top.
   */
  sizeBytes(): number {
    this.#checkOpen();
    const pageCount = selectNumber(this.#connection, "PRAGMA page_count");
    const freePages = selectNumber(this.#connection, "PRAGMA freelist_count");
    const pageSize = selectNumber(this.#connection, "PRAGMA page_size");
    return (pageCount - freePages) * pageSize;
  }

  /**
   * Deletes the oldest lines until the archive is within `maxAgeSeconds` and `maxBytes`, then
   * releases free pages to the file system. Returns the number of lines deleted.
   *
   * Age pruning deletes the longest prefix of lines (in append order) whose arrival time is
   * older than the limit, so a line with an out-of-order old time waits behind newer ones.
   */
  prune(): number {
    this.#writableInsert();
    let deleted = 0;
    if (this.#options.maxAgeSeconds !== undefined) {
      const now = (this.#options.now ?? Date.now)();
      deleted += this.#pruneByAge(now - this.#options.maxAgeSeconds * 1000);
    }
    if (this.#options.maxBytes !== undefined) {
      deleted += this.#pruneBySize(this.#options.maxBytes);
    }
    if (deleted > 0) this.#connection.exec("PRAGMA incremental_vacuum");
    return deleted;
  }

  /**
   * Creates a buffered writer that appends lines in batches, flushing every `maxLines` lines
   * or `maxDelayMs` milliseconds, whichever comes first.
   */
  createWriter(options: ArchiveWriterOptions = {}): ArchiveWriter {
    this.#writableInsert();
    return new ArchiveWriter(this, options);
  }

  /** Closes the connection, and deletes the files of a temporary archive. Calling it twice does nothing. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#connection.close();
    if (this.#temporaryDirectory !== undefined) {
      rmSync(this.#temporaryDirectory, { recursive: true, force: true });
    }
  }

  #pruneByAge(cutoffTime: number): number {
    const firstKept = this.#connection
      .prepare("SELECT id FROM archived_lines WHERE arrival_time >= ? ORDER BY id LIMIT 1")
      .get(cutoffTime);
    return this.#inTransaction(() => {
      if (firstKept === undefined) return this.#connection.prepare("DELETE FROM archived_lines").run();
      return this.#connection.prepare("DELETE FROM archived_lines WHERE id < ?").run(firstKept.id);
    });
  }

  /**
   * Deletes the oldest lines in rounds until the pages in use are at most the low-water mark.
   * Each round estimates the lines to delete from the average bytes per line, and the FTS5
   * index is merged after each round, because its deletes are first written as extra
   * entries and free pages only once segments merge.
   */
  #pruneBySize(maxBytes: number): number {
    let used = this.sizeBytes();
    if (used <= maxBytes) return 0;

    const target = maxBytes * PRUNE_LOW_WATER;
    let deleted = 0;
    for (let round = 0; round < MAX_PRUNE_ROUNDS && used > target; round++) {
      const lines = this.count();
      if (lines === 0) break;
      const bytesPerLine = used / lines;
      const toDelete = Math.min(lines, Math.max(1, Math.ceil((used - target) / bytesPerLine)));
      deleted += this.#inTransaction(() => {
        const changed = this.#connection
          .prepare("DELETE FROM archived_lines WHERE id IN (SELECT id FROM archived_lines ORDER BY id LIMIT ?)")
          .run(toDelete);
        this.#connection.exec("INSERT INTO archived_lines_fts (archived_lines_fts) VALUES ('optimize')");
        return changed;
      });
      used = this.sizeBytes();
    }
    return deleted;
  }

  #inTransaction<T>(body: () => T): T {
    this.#connection.exec("BEGIN IMMEDIATE");
    try {
      const result = body();
      this.#connection.exec("COMMIT");
      return result;
    } catch (error) {
      this.#connection.exec("ROLLBACK");
      throw error;
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error(`Failed to use line archive ${this.path}: the archive is closed`);
  }

  #writableInsert(): SqlStatement {
    this.#checkOpen();
    if (this.#insert === undefined) {
      throw new Error(`Failed to write line archive ${this.path}: it was opened read-only`);
    }
    return this.#insert;
  }
}

/**
 * A buffer in front of {@linkcode LineArchive.append} that writes lines in batches.
 *
 * `add` only copies the line into the buffer unless the buffer is full or its oldest line
 * has waited `maxDelayMs`, in which case it flushes synchronously. That check keeps the delay
 * bounded while a busy ingest loop never lets a timer run. A timer also flushes older lines
 * after `maxDelayMs` when no more lines are added. The timer does not keep the process alive, so call {@linkcode close} (or {@linkcode flush}) before exiting. An
 * error of a timed flush is kept and thrown by the next `add`, `flush` or `close`, and its
 * lines stay in the buffer for the next attempt.
 */
export class ArchiveWriter {
  readonly #archive: LineArchive;
  readonly #maxLines: number;
  readonly #maxDelayMs: number;
  readonly #pruneAfterFlush: boolean;
  #pending: ArchivedLine[] = [];
  /** `performance.now()` when the oldest buffered line was added, in milliseconds. */
  #oldestPendingMs = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timedFlushError: unknown;
  #closed = false;

  constructor(archive: LineArchive, options: ArchiveWriterOptions = {}) {
    this.#archive = archive;
    this.#maxLines = options.maxLines ?? 512;
    this.#maxDelayMs = options.maxDelayMs ?? 1000;
    this.#pruneAfterFlush = options.pruneAfterFlush ?? true;
    if (!Number.isInteger(this.#maxLines) || this.#maxLines < 1) {
      throw new RangeError(`Invalid writer batch size: current value is ${this.#maxLines}; pass a whole number of at least 1`);
    }
    if (!Number.isFinite(this.#maxDelayMs) || this.#maxDelayMs < 0) {
      throw new RangeError(`Invalid writer delay: current value is ${this.#maxDelayMs} ms; pass a number of at least 0`);
    }
  }

  /** Number of lines added but not yet written. */
  get pendingLines(): number {
    return this.#pending.length;
  }

  /** Buffers one line, and flushes when the buffer contains `maxLines` lines or its oldest line has waited `maxDelayMs`. */
  add(line: ArchivedLine): void {
    if (this.#closed) throw new Error("Failed to add a line: the archive writer is closed");
    this.#throwTimedFlushError();
    validateLine(line);
    const now = performance.now();
    if (this.#pending.length === 0) this.#oldestPendingMs = now;
    this.#pending.push({
      lineNumber: line.lineNumber,
      text: line.text,
      arrivalTime: line.arrivalTime,
      streamOffset: line.streamOffset,
    });
    if (this.#pending.length >= this.#maxLines || now - this.#oldestPendingMs >= this.#maxDelayMs) {
      this.flush();
    } else if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.#timedFlush(), this.#maxDelayMs);
      unrefTimer(this.#timer);
    }
  }

  /** Writes all buffered lines in one transaction, then prunes if configured. */
  flush(): void {
    this.#throwTimedFlushError();
    this.#write();
  }

  /** Flushes and stops the timer. The archive stays open. */
  close(): void {
    if (this.#closed) return;
    this.flush();
    this.#closed = true;
  }

  #write(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.#pending.length === 0) return;
    this.#archive.append(this.#pending);
    this.#pending = [];
    if (this.#pruneAfterFlush) this.#archive.prune();
  }

  #timedFlush(): void {
    this.#timer = undefined;
    try {
      this.#write();
    } catch (error) {
      this.#timedFlushError = error;
    }
  }

  #throwTimedFlushError(): void {
    if (this.#timedFlushError === undefined) return;
    const error = this.#timedFlushError;
    this.#timedFlushError = undefined;
    throw error;
  }
}

/** Creates the schema of a new, empty file, or checks the schema version of an existing one. */
function prepareSchema(connection: SqlConnection, path: string, readOnly: boolean): void {
  connection.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
  if (!readOnly) {
    // Incremental auto-vacuum lets prune() return freed pages to the file system. SQLite
    // applies it only to a new, empty file and only before the journal mode is set, and
    // ignores it on a file that already has tables.
    connection.exec("PRAGMA auto_vacuum = INCREMENTAL");
    // WAL lets other processes read while this one writes. Synchronous NORMAL cannot corrupt
    // a WAL database, but a power loss can drop the last committed batches.
    connection.exec("PRAGMA journal_mode = WAL");
    connection.exec("PRAGMA synchronous = NORMAL");
    connection.exec(`PRAGMA journal_size_limit = ${JOURNAL_SIZE_LIMIT_BYTES}`);
  }

  let version = selectNumber(connection, "PRAGMA user_version");
  if (version === 0 && !readOnly) {
    connection.exec("BEGIN IMMEDIATE");
    try {
      // Checked again inside the write lock, in case another process created the schema.
      version = selectNumber(connection, "PRAGMA user_version");
      const objects = selectNumber(connection, "SELECT count(*) AS value FROM sqlite_master");
      if (version === 0 && objects === 0) {
        createSchema(connection);
        version = ARCHIVE_SCHEMA_VERSION;
      }
      connection.exec("COMMIT");
    } catch (error) {
      connection.exec("ROLLBACK");
      throw error;
    }
  }

  if (version === 0) {
    throw new SinkstreamError(
      `Invalid line archive ${path}: the file is a database without a sinkstream archive schema; pass the path of an archive or of a new file`,
      ExitCode.input,
    );
  }
  if (version !== ARCHIVE_SCHEMA_VERSION) {
    throw new SinkstreamError(
      `Unsupported line archive schema version in ${path}: current value is ${version}, and this version of sinkstream reads version ${ARCHIVE_SCHEMA_VERSION}; delete the file or pass another path`,
      ExitCode.input,
    );
  }
}

function createSchema(connection: SqlConnection): void {
  connection.exec(`
    CREATE TABLE archived_lines (
      id INTEGER PRIMARY KEY,
      line_number INTEGER NOT NULL,
      arrival_time INTEGER NOT NULL, -- milliseconds since the Unix epoch
      stream_offset INTEGER NOT NULL, -- bytes
      text TEXT NOT NULL
    );
    -- External content: the index does not store a second copy of the text.
    CREATE VIRTUAL TABLE archived_lines_fts USING fts5(
      text,
      content = 'archived_lines',
      content_rowid = 'id',
      tokenize = 'porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER archived_lines_index AFTER INSERT ON archived_lines BEGIN
      INSERT INTO archived_lines_fts (rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER archived_lines_unindex AFTER DELETE ON archived_lines BEGIN
      INSERT INTO archived_lines_fts (archived_lines_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    PRAGMA user_version = ${ARCHIVE_SCHEMA_VERSION};
  `);
}

function validateLimits(options: LineArchiveOptions): void {
  const { maxBytes, maxAgeSeconds } = options;
  if (maxBytes !== undefined && !(Number.isFinite(maxBytes) && maxBytes > 0)) {
    throw new RangeError(`Invalid archive size limit: current value is ${maxBytes} bytes; pass a positive number`);
  }
  if (maxAgeSeconds !== undefined && !(Number.isFinite(maxAgeSeconds) && maxAgeSeconds > 0)) {
    throw new RangeError(`Invalid archive age limit: current value is ${maxAgeSeconds} s; pass a positive number`);
  }
}

function validateLine(line: ArchivedLine): void {
  if (typeof line.text !== "string") {
    throw new TypeError(`Invalid archived line text: current type is ${typeof line.text}; pass a string`);
  }
  if (!Number.isSafeInteger(line.lineNumber)) {
    throw new TypeError(`Invalid archived line number: current value is ${line.lineNumber}; pass a whole number`);
  }
  if (!Number.isFinite(line.arrivalTime)) {
    throw new TypeError(`Invalid archived line arrival time: current value is ${line.arrivalTime}; pass milliseconds since the Unix epoch`);
  }
  if (!Number.isSafeInteger(line.streamOffset) || line.streamOffset < 0) {
    throw new TypeError(`Invalid archived line stream offset: current value is ${line.streamOffset}; pass a byte offset of at least 0`);
  }
}

function selectNumber(connection: SqlConnection, sql: string): number {
  const row: SqlRow | undefined = connection.prepare(sql).get();
  if (row === undefined) throw new Error(`Failed to read ${sql}: no row returned`);
  return Number(Object.values(row)[0]);
}

function unrefTimer(timer: ReturnType<typeof setTimeout>): void {
  if (typeof timer === "object" && timer !== null && "unref" in timer) {
    (timer as { unref(): void }).unref();
    return;
  }
  const deno = (globalThis as { Deno?: { unrefTimer(id: number): void } }).Deno;
  if (typeof timer === "number" && deno !== undefined) deno.unrefTimer(timer);
}

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
