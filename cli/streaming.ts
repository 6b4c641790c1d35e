/**
 * The driver shared by the line-streaming commands (`score`, `watch`): input from standard
 * input or `--follow FILE`, a bounded queue between reading and ingesting (`--queue`,
 * `--drop`), state files (`--state`, `--save-every`), and SIGINT/SIGTERM handling.
 *
 * On the first SIGINT or SIGTERM the line in hand is finished, the command's final output is
 * written, the state is saved and the process exits 0. A second SIGINT exits at once with 130.
 */

import { access, constants } from "node:fs/promises";
import { dirname } from "node:path";
import process from "node:process";
import { setImmediate } from "node:timers";
import { type Command, Option } from "commander";
import { InputError, StateError, UsageError } from "../core/errors.ts";
import { FileFollower } from "../core/follow.ts";
import { BoundedQueue } from "../core/line_queue.ts";
import type { LoadedModel } from "../core/model.ts";
import type { StreamingSession } from "../core/session.ts";
import { captureState, modelFingerprint, readStateFile, restoreState, writeStateFile } from "../core/stream_state.ts";
import { readLines } from "../core/text_lines.ts";
import { stdinBytes, StdoutClosedError, writeStderr } from "./io.ts";
import { parseWholeNumber } from "./options.ts";

/** Options of the line-streaming commands. */
export interface StreamOptions {
  follow?: string;
  state?: string;
  saveEvery?: number;
  queue: number;
  drop?: boolean;
  quiet?: boolean;
}

/** Add `--follow`, `--state`, `--save-every`, `--queue` and `--drop` to a command. */
export function addStreamOptions(command: Command): Command {
  return command
    .option("-f, --follow <file>", "read FILE from its start and keep reading as it grows, like tail -F (rotation and truncation included)")
    .option("--state <file>", "resume from FILE when it exists, and save the stream state to it on exit")
    .addOption(
      new Option("--save-every <lines>", "also save the state every N input lines (needs --state)").argParser(
        parseWholeNumber("save interval", 1),
      ),
    )
    .addOption(
      new Option("--queue <lines>", "lines read ahead of the model at most").argParser(parseWholeNumber("queue size", 1)).default(
        1024,
      ),
    )
    .option("--drop", "skip lines that arrive while the queue is full instead of pausing the input; reports the count");
}

/** Callbacks of a command that {@linkcode runLineStream} drives. */
export interface LineConsumer {
  /** Command name, stored in the state file so another command does not resume from it. */
  command: string;
  /** Ingest one input line (or piece of a long line). */
  addLine(text: string): Promise<void>;
  /** Milliseconds until `onTimer` is due, or undefined for no timer. */
  msUntilTimer?(): number | undefined;
  onTimer?(): Promise<void>;
  /** Write the final output; called once at the end of input or after a signal. */
  finish(): Promise<void>;
  exportState(): { pipeline: Record<string, unknown>; blobs: Record<string, Uint8Array> };
  importState(pipeline: Record<string, unknown>, blobs: Record<string, Uint8Array>): void;
}

/** Result of {@linkcode runLineStream}. */
export interface StreamOutcome {
  /** `end` of input, a `signal`, or the reader of standard output going away. */
  ended: "end" | "signal" | "stdout-closed";
  /** Lines read from the input and ingested in this run. */
  lines: number;
  /** Lines skipped by `--drop`. */
  dropped: number;
  /** Whether the stream resumed from a state file. */
  resumed: boolean;
}

/**
 * Run `consumer` over the input lines until the input ends or a signal arrives, then call its
 * `finish` and save the state. Errors other than a closed standard output propagate.
 */
export async function runLineStream(
  model: LoadedModel,
  session: StreamingSession,
  options: StreamOptions,
  consumer: LineConsumer,
  onProgress?: (lines: number) => void,
): Promise<StreamOutcome> {
  if (options.saveEvery !== undefined && options.state === undefined) {
    throw new UsageError("Invalid --save-every without --state: give --state FILE to say where to save");
  }
  if (options.state !== undefined) await checkStateDirectory(options.state);
  const fingerprint = options.state === undefined ? "" : await modelFingerprint(model.path);
  const resumed = options.state === undefined ? false : await resume(session, options.state, fingerprint, consumer);
  const save = async () => {
    if (options.state === undefined) return;
    const { pipeline, blobs } = consumer.exportState();
    await writeStateFile(options.state, captureState(session, fingerprint, { command: consumer.command, ...pipeline }, blobs));
  };

  const queue = new BoundedQueue<string>({ capacity: options.queue, drop: options.drop });
  const stopReading = new AbortController();
  let stopping = false;
  const onSignal = (signal: string) => {
    if (stopping && signal === "SIGINT") process.exit(130);
    stopping = true;
    stopReading.abort();
    queue.close();
  };
  const onSigint = () => onSignal("SIGINT");
  const onSigterm = () => onSignal("SIGTERM");
  process.on("SIGINT", onSigint);
  process.on("SIGTERM", onSigterm);

  void produce(options, queue, stopReading.signal);
  let lines = 0;
  let ended: StreamOutcome["ended"] = "end";
  try {
    try {
      while (!stopping) {
        // Give signal handlers a turn before each line. Ingesting a line can resolve entirely
        // in microtasks, and while lines are queued the loop would otherwise never reach the
        // event loop, where SIGINT and SIGTERM are delivered.
        await new Promise((resolve) => setImmediate(resolve));
        if (stopping) break;
        const taken = await queue.take(consumer.msUntilTimer?.());
        if (stopping) break;
        if (taken.kind === "end") break;
        if (taken.kind === "timeout") {
          await consumer.onTimer?.();
          continue;
        }
        await consumer.addLine(taken.item);
        lines++;
        onProgress?.(lines);
        if (options.saveEvery !== undefined && lines % options.saveEvery === 0) await save();
      }
      if (stopping) ended = "signal";
      await consumer.finish();
    } catch (error) {
      if (!(error instanceof StdoutClosedError)) {
        exitSoonAfterError();
        throw error;
      }
      ended = "stdout-closed";
    }
    await save();
  } finally {
    stopReading.abort();
    queue.close();
    process.off("SIGINT", onSigint);
    process.off("SIGTERM", onSigterm);
  }
  if (queue.dropped > 0 && !options.quiet) {
    writeStderr(`sinkstream: dropped ${queue.dropped} lines that arrived while the queue of ${options.queue} was full (--drop)\n`);
  }
  return { ended, lines, dropped: queue.dropped, resumed };
}

/**
 * Make the process exit shortly after an error is reported. A pending read of standard input
 * cannot be cancelled and would keep the process alive while the writer of the pipe lives.
 */
function exitSoonAfterError(): void {
  // process.exit() without an argument exits with process.exitCode, which main() sets.
  setTimeout(() => process.exit(), 200);
}

/** Load a state file into the session and the consumer; returns whether one existed. */
async function resume(
  session: StreamingSession,
  path: string,
  fingerprint: string,
  consumer: LineConsumer,
): Promise<boolean> {
  const state = await readStateFile(path);
  if (state === undefined) return false;
  const { command, ...pipeline } = state.pipeline;
  if (command !== consumer.command) {
    throw new StateError(
      `Cannot resume from ${path}: it was saved by the ${JSON.stringify(command)} command, not ${JSON.stringify(consumer.command)}; ` +
        `give each command its own state file`,
    );
  }
  restoreState(session, state, fingerprint, path);
  try {
    consumer.importState(pipeline, state.blobs);
  } catch (error) {
    throw new StateError(`Cannot resume from ${path}: ${(error as Error).message}; delete the state file to start over`);
  }
  return true;
}

/** Read lines from the input into the queue until the input ends or reading is stopped. */
async function produce(options: StreamOptions, queue: BoundedQueue<string>, signal: AbortSignal): Promise<void> {
  try {
    const source = options.follow === undefined
      ? stdinBytes()
      : new FileFollower(options.follow, { signal }).bytes();
    for await (const line of readLines(source)) {
      if (signal.aborted) break;
      await queue.push(line);
    }
    queue.close();
  } catch (error) {
    const message = (error as Error).message ?? String(error);
    queue.fail(new InputError(`Failed to read the input${options.follow ? ` ${options.follow}` : ""}: ${message}`));
  }
}

/** Fail before reading any input when the state file's folder cannot be written. */
async function checkStateDirectory(path: string): Promise<void> {
  const folder = dirname(path);
  try {
    await access(folder, constants.W_OK);
  } catch {
    throw new InputError(
      `Cannot write the state file ${path}: the folder ${folder} does not exist or is not writable; create it or choose another --state path`,
    );
  }
}
