/** `sinkstream watch`: summaries or answers over an endless stream, on a schedule and on events. */

import process from "node:process";
import { type Command, Option } from "commander";
import { UsageError } from "../../core/errors.ts";
import type { LoadedModel } from "../../core/model.ts";
import type { Request } from "../../core/prompt.ts";
import { Sampler } from "../../core/sampler.ts";
import type { StreamingSession } from "../../core/session.ts";
import { type WatchEvent, Watcher, type WatcherState } from "../../pipelines/watch.ts";
import {
  addArchiveOptions,
  type ArchiveOptions,
  describeRecall,
  openStreamArchive,
  recalledRecord,
  type StreamArchive,
} from "../archive_options.ts";
import { StdoutQueue, writeStderr, writeStdout } from "../io.ts";
import { addModelOptions, type ModelOptions, openModel, openSession, parseNonNegative, parseWholeNumber } from "../options.ts";
import { ProgressReporter } from "../progress.ts";
import { addStreamOptions, type LineConsumer, runLineStream, type StreamOptions } from "../streaming.ts";

interface WatchOptions extends ModelOptions, StreamOptions, ArchiveOptions {
  ask?: string;
  every?: number;
  interval?: number;
  trigger?: RegExp;
  threshold?: number;
}

/** Add the `watch` command to the program. */
export function registerWatch(program: Command): void {
  addArchiveOptions(addStreamOptions(addModelOptions(
    program
      .command("watch")
      .description("summarize (or answer --ask) over an endless stream, every N lines or interval and on trigger lines")
      .option("--ask <question>", "answer this question instead of summarizing")
      .addOption(new Option("--every <lines>", "answer every N input lines").argParser(parseWholeNumber("line count", 1)))
      .addOption(
        new Option("--interval <duration>", "answer every DURATION (500ms, 30s, 5m, 1h) when new lines came in").argParser(
          parseDuration,
        ),
      )
      .addOption(new Option("--trigger <regex>", "answer at once after a line matching the JavaScript regular expression").argParser(parseRegex))
      .addOption(
        new Option("--threshold <nats>", "answer at once after a line whose mean NLL is above NATS").argParser(
          parseNonNegative("threshold"),
        ),
      ),
  ))).action((options) => watchCommand(options));
}

/** Parse `500ms`, `30s`, `5m`, `1h` or a bare number of seconds into milliseconds. */
export function parseDuration(value: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(value);
  const scale = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;
  const ms = match ? Number(match[1]) * scale[(match[2] ?? "s") as keyof typeof scale] : NaN;
  if (!(ms >= 1)) {
    throw new UsageError(
      `Invalid duration: current value is ${JSON.stringify(value)}; use a number with ms, s, m or h, at least 1ms (e.g. 30s)`,
    );
  }
  return ms;
}

function parseRegex(value: string): RegExp {
  try {
    return new RegExp(value);
  } catch (error) {
    throw new UsageError(`Invalid --trigger pattern: current value is ${JSON.stringify(value)}; ${(error as Error).message}`);
  }
}

/** Format a watch event as one NDJSON record; `recallOn` adds the recalled lines. */
export function eventRecord(event: WatchEvent, request: Request, recallOn = false): Record<string, unknown> {
  const { answer } = event;
  const record: Record<string, unknown> = {
    type: answer.kind,
    reason: event.reason,
    lines: answer.lines,
    tokens: answer.tokens,
    cache_tokens: answer.cacheTokens,
  };
  if (event.cause) {
    record.cause = {
      line: event.cause.line,
      text: event.cause.text.replace(/\n$/, ""),
      mean_nll: event.cause.meanNll,
    };
  }
  if (request.kind === "answer") record.question = request.question;
  if (recallOn) {
    record.recalled = answer.recalled.map(recalledRecord);
    record.recall_dropped = answer.recallDropped;
  }
  record.text = answer.text;
  return record;
}

async function watchCommand(options: WatchOptions): Promise<void> {
  const request: Request = options.ask === undefined ? { kind: "summary" } : { kind: "answer", question: options.ask };
  const { model } = await openModel(options);
  const session = await openSession(model, options);
  const archive = await openStreamArchive(options, session);
  try {
    await watchStream(request, options, model, session, archive);
  } finally {
    archive?.close();
  }
}

async function watchStream(
  request: Request,
  options: WatchOptions,
  model: LoadedModel,
  session: StreamingSession,
  archive: StreamArchive | undefined,
): Promise<void> {
  const progress = new ProgressReporter(session, { quiet: options.quiet });
  const sampler = new Sampler({ temperature: options.temperature, seed: options.seed });
  const stdout = new StdoutQueue();

  const watcher = new Watcher(model, session, {
    request,
    maxTokens: options.maxTokens,
    sampler,
    every: options.every,
    intervalMs: options.interval,
    trigger: options.trigger,
    threshold: options.threshold,
    archiver: archive?.archiver,
    recall: archive?.recall,
    onAnswerStart: (reason, header) => {
      progress.clear();
      if (!options.json && !options.quiet && archive?.recall) writeStderr(describeRecall(header.recalled));
      if (!options.json) stdout.write(`[line ${header.lines}, ${reason}]\n`);
    },
    onAnswerText: (text) => {
      if (!options.json) stdout.write(text);
    },
    onEvent: (event) => {
      if (options.json) stdout.write(JSON.stringify(eventRecord(event, request, archive?.recall !== undefined)) + "\n");
      else stdout.write(event.answer.text.endsWith("\n") ? "\n" : "\n\n");
    },
  });

  const consumer: LineConsumer = {
    command: "watch",
    addLine: async (text, last) => {
      await watcher.addLine(text, last);
      await stdout.flush();
    },
    msUntilTimer: () => watcher.msUntilInterval(),
    onTimer: async () => {
      await watcher.checkInterval();
      await stdout.flush();
    },
    finish: async () => {
      await watcher.finish();
      await stdout.flush();
      archive?.finish();
    },
    exportState: () => {
      const { state, lastLogits } = watcher.exportState();
      const blobs: Record<string, Uint8Array> = {};
      if (lastLogits) blobs.lastLogits = lastLogits;
      return { pipeline: { watcher: state }, blobs };
    },
    importState: (pipeline, blobs) => watcher.importState(pipeline.watcher as WatcherState, blobs.lastLogits),
  };

  const outcome = await runLineStream(model, session, options, consumer, (lines) => progress.update(lines));
  if (outcome.ended !== "stdout-closed") {
    if (options.json) {
      await writeStdout(JSON.stringify({ type: "stats", lines: outcome.lines, dropped: outcome.dropped, ...progress.summary() }) + "\n")
        .catch(() => {});
    } else if (!options.quiet) progress.printSummary();
  }
  // Standard input may still be open (a signal, `| head`); nothing more will be read from it.
  if (outcome.ended !== "end") {
    archive?.close();
    process.exit(0);
  }
}
