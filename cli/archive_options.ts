/**
 * Options and set-up of the archive of evicted lines, shared by the commands that ingest a
 * stream (`ask`, `summarize`, `watch`): `--archive`, `--archive-max-bytes`,
 * `--archive-max-age` and `--recall`.
 */

import type { Command } from "commander";
import { LineArchive } from "../core/archive.ts";
import { UsageError } from "../core/errors.ts";
import type { StreamingSession } from "../core/session.ts";
import { LineArchiver } from "../pipelines/line_archiver.ts";
import type { RecallHit, RecallSettings } from "../pipelines/recall.ts";
import { parseWholeNumber } from "./options.ts";

/** Archive lines recalled per answer when `--recall` is not given. */
export const DEFAULT_RECALL_LINES = 8;

/** Options added by {@linkcode addArchiveOptions}. */
export interface ArchiveOptions {
  archive?: string;
  archiveMaxBytes?: number;
  archiveMaxAge?: number;
  recall: number;
}

const SIZE_UNITS: Record<string, number> = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 };
const AGE_UNITS: Record<string, number> = { "": 1, s: 1, m: 60, h: 3600, d: 86400 };

/** Parses a byte count with an optional binary suffix: `500000`, `64k`, `16M`, `2G`. */
export function parseByteSize(value: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*$/i.exec(value);
  const bytes = match ? Math.floor(Number(match[1]) * SIZE_UNITS[match[2].toLowerCase()]) : NaN;
  if (!(bytes >= 1)) {
    throw new UsageError(
      `Invalid archive size limit: current value is ${JSON.stringify(value)}; use a positive number of bytes, optionally with k, M or G (--archive-max-bytes)`,
    );
  }
  return bytes;
}

/** Parses an age in seconds with an optional unit: `90`, `90s`, `15m`, `12h`, `7d`. */
export function parseAge(value: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$/i.exec(value);
  const seconds = match ? Number(match[1]) * AGE_UNITS[match[2].toLowerCase()] : NaN;
  if (!(seconds > 0)) {
    throw new UsageError(
      `Invalid archive age limit: current value is ${JSON.stringify(value)}; use a positive number of seconds, optionally with s, m, h or d (--archive-max-age)`,
    );
  }
  return seconds;
}

/** Adds the archive and recall options to a command. */
export function addArchiveOptions(command: Command): Command {
  return command
    .option(
      "--archive <path>",
      "SQLite file that keeps the lines that left the window, across runs (default: a temporary file deleted at exit)",
    )
    .option("--archive-max-bytes <bytes>", "delete the oldest archived lines beyond this size (k, M, G suffixes)", parseByteSize)
    .option("--archive-max-age <seconds>", "delete archived lines older than this (s, m, h, d suffixes)", parseAge)
    .option(
      "--recall <k>",
      `archived lines to recall into each answer's prompt, 0 to turn recall off`,
      parseWholeNumber("recall line count", 0),
      DEFAULT_RECALL_LINES,
    );
}

/** An open archive wired to one session's stream. */
export interface StreamArchive {
  archive: LineArchive;
  archiver: LineArchiver;
  /** Search settings for answers, or undefined with `--recall 0`. */
  recall: RecallSettings | undefined;
  /** Whether the archive outlives the process (`--archive PATH`). */
  persistent: boolean;
  /**
   * Writes the lines still buffered. A persistent archive also gets the lines still in the
   * cache, because they leave it when the process ends. Call it once the stream has ended.
   */
  finish(): void;
  /** Calls {@linkcode finish} unless that was done, and closes the archive. */
  close(): void;
}

/**
 * Opens the archive for a stream, or returns undefined when nothing would use it: recall is
 * off and no `--archive` path was given.
 *
 * NOTE: a temporary archive is deleted by `close()` only. A process that ends without running
 * its `finally` blocks (SIGKILL, or a second SIGINT, which exits at once) leaves the
 * `sinkstream-archive-*` folder in the temporary directory.
 */
export async function openStreamArchive(
  options: ArchiveOptions,
  session: StreamingSession,
): Promise<StreamArchive | undefined> {
  if (options.recall === 0 && options.archive === undefined) return undefined;
  const archive = await LineArchive.open(options.archive, {
    maxBytes: options.archiveMaxBytes,
    maxAgeSeconds: options.archiveMaxAge,
  });
  const archiver = new LineArchiver(archive.createWriter(), {
    sinks: session.sizes.sinks,
    firstToken: session.stats.evictions + session.cacheLength,
  });
  const persistent = options.archive !== undefined;
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    if (persistent) archiver.releaseAll();
    archiver.writer.close();
  };
  return {
    archive,
    archiver,
    recall: options.recall > 0 ? { archive, limit: options.recall } : undefined,
    persistent,
    finish,
    close() {
      try {
        finish();
      } finally {
        archive.close();
      }
    },
  };
}

/** Returns the JSON form of a recalled line, as `recall --json` prints it. */
export function recalledRecord(hit: Omit<RecallHit, "rank"> & { rank?: number }): Record<string, unknown> {
  return {
    ...(hit.rank === undefined ? {} : { rank: hit.rank }),
    line: hit.lineNumber,
    time: new Date(hit.arrivalTime).toISOString(),
    offset: hit.streamOffset,
    score: Number(hit.score.toPrecision(4)),
    text: hit.text.endsWith("\n") ? hit.text.slice(0, -1) : hit.text,
  };
}

/** Returns the stderr line that lists the recalled line numbers. */
export function describeRecall(recalled: RecallHit[]): string {
  if (recalled.length === 0) return "sinkstream: recalled no archived lines\n";
  const numbers = recalled.map((hit) => hit.lineNumber).join(", ");
  return `sinkstream: recalled ${recalled.length} archived line${recalled.length === 1 ? "" : "s"}: ${numbers}\n`;
}

