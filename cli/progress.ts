/**
 * Progress and statistics on standard error: a live status line when standard error is a
 * terminal, and one summary line when the command ends.
 */

import process from "node:process";
import type { SessionStats, StreamingSession } from "../core/session.ts";
import { peakRssBytes, writeStderr, writeStdout } from "./io.ts";

const REFRESH_MS = 200;

/** Reports ingest progress of one session on standard error. */
export class ProgressReporter {
  readonly #session: StreamingSession;
  readonly #live: boolean;
  readonly #started = performance.now();
  #lastDraw = 0;
  #drawn = false;

  constructor(session: StreamingSession, options: { quiet?: boolean } = {}) {
    this.#session = session;
    this.#live = !options.quiet && Boolean(process.stderr.isTTY);
  }

  /** Redraw the live status line, at most every 200 ms. */
  update(lines: number): void {
    if (!this.#live) return;
    const now = performance.now();
    if (now - this.#lastDraw < REFRESH_MS) return;
    this.#lastDraw = now;
    const { stats } = this.#session;
    const rate = stats.ingestSeconds > 0 ? stats.tokensIngested / stats.ingestSeconds : 0;
    writeStderr(
      `\r\x1b[K${lines} lines, ${stats.tokensIngested} tokens, ${rate.toFixed(0)} tok/s, ` +
        `cache ${this.#session.cacheLength}/${this.#session.capacity}`,
    );
    this.#drawn = true;
  }

  /** Clear the live status line so other output starts on a clean line. */
  clear(): void {
    if (this.#drawn) {
      writeStderr("\r\x1b[K");
      this.#drawn = false;
      this.#lastDraw = 0;
    }
  }

  /** Return the end-of-run statistics. */
  summary(): StatsRecord {
    return statsRecord(this.#session.stats, (performance.now() - this.#started) / 1000);
  }

  /** Print the end-of-run statistics as one line on standard error. */
  printSummary(): void {
    this.clear();
    const { sinks, window } = this.#session.sizes;
    writeStderr(formatStatsLine(this.summary(), `${sinks}+${window}`));
  }

  /**
   * End a command with its statistics: the `stats` record on standard output with `--json`
   * (with `extra` fields such as line counts), else one line on standard error unless quiet.
   */
  async report(options: { json?: boolean; quiet?: boolean }, extra: Record<string, unknown> = {}): Promise<void> {
    if (options.json) {
      await writeStdout(JSON.stringify({ type: "stats", ...extra, ...this.summary() }) + "\n");
    } else if (!options.quiet) {
      this.printSummary();
    }
  }
}

/** The fields of the `stats` record that every streaming command ends with. */
export interface StatsRecord {
  tokens_ingested: number;
  tokens_generated: number;
  ingest_tok_s: number;
  decode_tok_s: number;
  evictions: number;
  peak_rss_bytes: number;
  wall_s: number;
}

/**
 * Build the `stats` record from session counters, for commands that run without a
 * {@linkcode ProgressReporter} (such as `eval` over a cache policy).
 */
export function statsRecord(
  stats: Pick<SessionStats, "tokensIngested" | "tokensGenerated" | "evictions" | "ingestSeconds" | "generateSeconds">,
  wallSeconds: number,
): StatsRecord {
  return {
    tokens_ingested: stats.tokensIngested,
    tokens_generated: stats.tokensGenerated,
    ingest_tok_s: round(stats.ingestSeconds > 0 ? stats.tokensIngested / stats.ingestSeconds : 0),
    decode_tok_s: round(stats.generateSeconds > 0 ? stats.tokensGenerated / stats.generateSeconds : 0),
    evictions: stats.evictions,
    peak_rss_bytes: peakRssBytes(),
    wall_s: round(wallSeconds),
  };
}

/** Format a `stats` record as the end-of-run line on standard error; `cache` is "sinks+window". */
export function formatStatsLine(s: StatsRecord, cache: string): string {
  return (
    `sinkstream: ingested ${s.tokens_ingested} tokens at ${s.ingest_tok_s} tok/s, generated ${s.tokens_generated} ` +
    `at ${s.decode_tok_s} tok/s, ${s.evictions} evictions, cache ${cache}, ` +
    `peak RSS ${(s.peak_rss_bytes / 2 ** 20).toFixed(1)} MiB, ${s.wall_s} s\n`
  );
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}
