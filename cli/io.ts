/** Standard streams for the command line, the same under Deno, Bun and Node. */

import { fstatSync, read, readFileSync } from "node:fs";
import process from "node:process";

declare const Deno: { stdin: { readable: ReadableStream<Uint8Array> } } | undefined;
declare const Bun: { stdin: { stream(): ReadableStream<Uint8Array> } } | undefined;

/** Return standard input as a stream of byte chunks. */
export function stdinBytes(): AsyncIterable<Uint8Array> {
  if (typeof Deno !== "undefined") return Deno.stdin.readable as unknown as AsyncIterable<Uint8Array>;
  if (typeof Bun !== "undefined") {
    // Bun.stdin reads a regular file from its first byte, not from the descriptor's offset, so
    // `{ read -r header; sinkstream …; } < file` would see the header again.
    if (fstatSync(0).isFile()) return readFromOffset(0);
    return Bun.stdin.stream() as unknown as AsyncIterable<Uint8Array>;
  }
  return process.stdin as unknown as AsyncIterable<Uint8Array>;
}

/** Read a file descriptor from its current offset to its end, in chunks of 64 KiB. */
async function* readFromOffset(descriptor: number): AsyncGenerator<Uint8Array> {
  while (true) {
    const buffer = new Uint8Array(65536);
    const count = await new Promise<number>((resolve, reject) => {
      read(descriptor, buffer, 0, buffer.length, null, (error, bytesRead) => (error ? reject(error) : resolve(bytesRead)));
    });
    if (count === 0) return;
    yield buffer.subarray(0, count);
  }
}

/** Read all of standard input as UTF-8 text. */
export async function readStdinText(): Promise<string> {
  const decoder = new TextDecoder("utf-8", { fatal: false });
  let text = "";
  for await (const chunk of stdinBytes()) text += decoder.decode(chunk, { stream: true });
  return text + decoder.decode();
}

/** Thrown by {@linkcode writeStdout} once the reader of standard output has gone away. */
export class StdoutClosedError extends Error {
  constructor() {
    super("standard output was closed by its reader");
    this.name = "StdoutClosedError";
  }
}

let stdoutClosed = false;
process.stdout.on?.("error", (error: NodeJS.ErrnoException) => {
  if (error.code === "EPIPE") stdoutClosed = true;
});

/** Write text to standard output and wait until it is handed to the pipe. */
export async function writeStdout(text: string): Promise<void> {
  if (stdoutClosed) throw new StdoutClosedError();
  await new Promise<void>((resolve, reject) => {
    const fail = (error: NodeJS.ErrnoException) => {
      if (error.code === "EPIPE") {
        stdoutClosed = true;
        reject(new StdoutClosedError());
      } else reject(error);
    };
    try {
      process.stdout.write(text, (error?: Error | null) => (error ? fail(error as NodeJS.ErrnoException) : resolve()));
    } catch (error) {
      fail(error as NodeJS.ErrnoException);
    }
  });
}

/**
 * Queue of writes to standard output, so that generated text streams without waiting for the
 * pipe. The first failed write (a closed standard output) is kept and skips the writes queued
 * after it, and `flush` throws it.
 */
export class StdoutQueue {
  #pending: Promise<void> = Promise.resolve();
  #error: unknown;

  /** Queue `text` after the writes before it. */
  write(text: string): void {
    this.#pending = this.#pending
      .then(() => (this.#error === undefined ? writeStdout(text) : undefined))
      .catch((error) => {
        this.#error ??= error;
      });
  }

  /** Wait for the queued writes, and throw the first error one of them met. */
  async flush(): Promise<void> {
    await this.#pending;
    if (this.#error !== undefined) throw this.#error;
  }
}

/** Write one diagnostic line to standard error. */
export function writeStderr(text: string): void {
  try {
    process.stderr.write(text);
  } catch {
    // A closed standard error leaves nowhere to report to.
  }
}

/** Return the peak resident set size of this process in bytes (Linux), or the current RSS elsewhere. */
export function peakRssBytes(): number {
  try {
    const status = readFileSync("/proc/self/status", "utf8");
    const match = /^VmHWM:\s+(\d+)\s+kB/m.exec(status);
    if (match) return Number(match[1]) * 1024;
  } catch {
    // Not Linux: fall back to the current RSS.
  }
  return process.memoryUsage().rss;
}
