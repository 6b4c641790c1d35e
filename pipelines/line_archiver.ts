/**
 * Tracking of which input lines have left the KV cache window, and their hand-over to the
 * line archive.
 *
 * The session evicts window tokens oldest first and never evicts the first `sinks` tokens of
 * the stream, so after `evictions` evictions every stream token with an index in
 * `[sinks, sinks + evictions)` is gone. A line is archived once its last token index is below
 * `sinks + evictions`: none of its tokens is left in the window. A line that lies wholly
 * inside the sinks is never archived, because the model keeps seeing all of it. A line that
 * straddles the sink boundary is archived when its window part is gone, although its first
 * tokens stay in the sinks.
 */

import type { ArchiveWriter } from "../core/archive.ts";

/** Options of {@linkcode LineArchiver}. */
export interface LineArchiverOptions {
  /** Number of sink tokens of the session, which are never evicted. */
  sinks: number;
  /**
   * Index of the first token passed to the archiver, in the count that eviction
   * uses: `evictions + cacheLength` of the session when the archiver is created. For a fresh
   * session that is the number of tokens ingested, and it stays right for a session whose
   * cache was restored from a state file with its counters reset.
   * @default 0
   */
  firstToken?: number;
  /** Clock for arrival times, in milliseconds since the Unix epoch. @default Date.now */
  now?: () => number;
}

/** A line between tokenization and archiving. */
interface TrackedLine {
  lineNumber: number;
  text: string;
  arrivalTime: number;
  /** UTF-8 byte offset of the line in the text as read (line ends normalized to LF). */
  streamOffset: number;
  /** Stream index one past the line's last token. */
  endToken: number;
}

/** Lines removed from the front of the queue before it is compacted. */
const COMPACT_AFTER = 4096;

/**
 * Queues every input line with its token range and writes each line to an archive once, in
 * input order, when its tokens have left the window.
 *
 * Writes go through an {@linkcode ArchiveWriter}, so the ingest loop only copies lines into a
 * buffer, and SQLite runs once per batch.
 *
 * @example
 * ```ts
 * const archiver = new LineArchiver(archive.createWriter(), { sinks: session.sizes.sinks });
 * archiver.track(line, ids.length);
 * await session.ingest(ids);
 * archiver.release(session.stats.evictions);
 * ```
 */
export class LineArchiver {
  readonly writer: ArchiveWriter;
  readonly #sinks: number;
  readonly #now: () => number;
  readonly #queue: TrackedLine[] = [];
  /** Index of the first queued line that is still waiting. */
  #head = 0;
  #nextToken: number;
  #nextLineNumber = 1;
  #nextOffset = 0;
  /** Number of lines handed to the writer. */
  archivedLines = 0;
  /** Number of lines dropped because they lie wholly inside the sinks. */
  sinkLines = 0;
  /** Seconds spent in `track`, `release` and the writes they triggered. */
  seconds = 0;

  constructor(writer: ArchiveWriter, options: LineArchiverOptions) {
    if (!Number.isSafeInteger(options.sinks) || options.sinks < 0) {
      throw new RangeError(`Invalid sink count for the line archiver: current value is ${options.sinks}; pass a whole number of at least 0`);
    }
    this.writer = writer;
    this.#sinks = options.sinks;
    this.#nextToken = options.firstToken ?? 0;
    this.#now = options.now ?? Date.now;
  }

  /** Number of lines tracked but not archived yet. */
  get pendingLines(): number {
    return this.#queue.length - this.#head;
  }

  /**
   * Records the next input line and the number of tokens it was tokenized into, before or
   * after they are ingested. `lineNumber` defaults to one more than the last line's.
   */
  track(text: string, tokenCount: number, lineNumber?: number): void {
    this.#push(text, this.#nextToken + tokenCount, lineNumber);
  }

  /**
   * Records the next input line right after all its tokens were ingested, from the session's
   * counters: its last token is then the newest token in the cache.
   */
  trackIngested(text: string, evictions: number, cacheLength: number, lineNumber?: number): void {
    this.#push(text, evictions + cacheLength, lineNumber);
  }

  #push(text: string, endToken: number, lineNumber: number | undefined): void {
    const started = performance.now();
    const number = lineNumber ?? this.#nextLineNumber;
    this.#nextLineNumber = number + 1;
    this.#nextToken = endToken;
    this.#queue.push({
      lineNumber: number,
      text,
      arrivalTime: this.#now(),
      streamOffset: this.#nextOffset,
      endToken,
    });
    this.#nextOffset += utf8Length(text);
    this.seconds += (performance.now() - started) / 1000;
  }

  /**
   * Archives the lines whose tokens have all left the window, given the session's count of
   * evicted stream tokens. Returns the number of lines archived by this call.
   */
  release(evictions: number): number {
    const started = performance.now();
    const horizon = this.#sinks + evictions;
    let released = 0;
    while (this.#head < this.#queue.length && this.#queue[this.#head].endToken <= horizon) {
      const line = this.#queue[this.#head++];
      if (line.endToken <= this.#sinks) {
        this.sinkLines++;
      } else {
        this.#archive(line);
        released++;
      }
    }
    this.#compact();
    this.seconds += (performance.now() - started) / 1000;
    return released;
  }

  /**
   * Archives every line still queued, those in the sinks included, and flushes the writer:
   * for the end of a run whose archive outlives the process.
   */
  releaseAll(): number {
    const started = performance.now();
    let released = 0;
    while (this.#head < this.#queue.length) {
      this.#archive(this.#queue[this.#head++]);
      released++;
    }
    this.#compact();
    this.writer.flush();
    this.seconds += (performance.now() - started) / 1000;
    return released;
  }

  /** Writes the buffered lines now, so a search returns every line released so far. */
  flush(): void {
    const started = performance.now();
    this.writer.flush();
    this.seconds += (performance.now() - started) / 1000;
  }

  #archive(line: TrackedLine): void {
    this.writer.add({
      lineNumber: line.lineNumber,
      text: line.text,
      arrivalTime: line.arrivalTime,
      streamOffset: line.streamOffset,
    });
    this.archivedLines++;
  }

  #compact(): void {
    if (this.#head < COMPACT_AFTER) return;
    this.#queue.splice(0, this.#head);
    this.#head = 0;
  }
}

/** Returns the number of bytes of `text` in UTF-8, counting a lone surrogate as U+FFFD (3 bytes). */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}
