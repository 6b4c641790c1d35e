/**
 * `sinkstream summarize` and `sinkstream ask`: answer a request about a line stream, from
 * standard input or `--follow FILE`, every N lines and at the end of input or on a signal.
 */

import process from "node:process";
import { type Command, Option } from "commander";
import type { LoadedModel } from "../../core/model.ts";
import type { Request } from "../../core/prompt.ts";
import { Sampler } from "../../core/sampler.ts";
import type { StreamingSession } from "../../core/session.ts";
import { type Answer, AnswerStream, type AnswerStreamState } from "../../pipelines/answer_stream.ts";
import {
  addArchiveOptions,
  type ArchiveOptions,
  describeRecall,
  openStreamArchive,
  recalledRecord,
  type StreamArchive,
} from "../archive_options.ts";
import { StdoutQueue, writeStderr, writeStdout } from "../io.ts";
import { addModelOptions, type ModelOptions, openModel, openSession, parseWholeNumber } from "../options.ts";
import { ProgressReporter } from "../progress.ts";
import { addStreamOptions, type LineConsumer, runLineStream, type StreamOptions } from "../streaming.ts";

interface AnswerOptions extends ModelOptions, StreamOptions, ArchiveOptions {
  every?: number;
}

/** Add the `summarize` and `ask` commands to the program. */
export function registerAnswerCommands(program: Command): void {
  addArchiveOptions(addStreamOptions(addModelOptions(
    program
      .command("summarize")
      .description("read the input to its end (or a signal) and summarize what the cache holds")
      .addOption(new Option("--every <lines>", "also summarize every N input lines").argParser(parseWholeNumber("line count", 1))),
  ))).action((options) => answerCommand({ kind: "summary" }, options));

  addArchiveOptions(addStreamOptions(addModelOptions(
    program
      .command("ask")
      .description("read the input to its end (or a signal) and answer a question about what the cache holds")
      .argument("<question>", "the question")
      .addOption(new Option("--every <lines>", "also answer every N input lines").argParser(parseWholeNumber("line count", 1))),
  ))).action((question: string, options) => answerCommand({ kind: "answer", question }, options));
}

async function answerCommand(request: Request, options: AnswerOptions): Promise<void> {
  const { model } = await openModel(options);
  const session = await openSession(model, options);
  const archive = await openStreamArchive(options, session);
  try {
    await answerStream(request, options, model, session, archive);
  } finally {
    archive?.close();
  }
}

/** Format an answer as one NDJSON record; `recallOn` adds the recalled lines. */
function answerRecord(answer: Answer, request: Request, recallOn: boolean): Record<string, unknown> {
  const record: Record<string, unknown> = {
    type: answer.kind,
    final: answer.final,
    lines: answer.lines,
    tokens: answer.tokens,
    cache_tokens: answer.cacheTokens,
  };
  if (request.kind === "answer") record.question = request.question;
  if (recallOn) {
    record.recalled = answer.recalled.map(recalledRecord);
    record.recall_dropped = answer.recallDropped;
  }
  record.text = answer.text;
  return record;
}

async function answerStream(
  request: Request,
  options: AnswerOptions,
  model: LoadedModel,
  session: StreamingSession,
  archive: StreamArchive | undefined,
): Promise<void> {
  const progress = new ProgressReporter(session, { quiet: options.quiet });
  const sampler = new Sampler({ temperature: options.temperature, seed: options.seed });
  const stdout = new StdoutQueue();
  // Why the final answer is given, for its plain-text heading.
  let finalReason = "end of input";

  const stream = new AnswerStream(model, session, {
    request,
    every: options.every,
    maxTokens: options.maxTokens,
    sampler,
    archiver: archive?.archiver,
    recall: archive?.recall,
    // With a state file, the tokens waiting for a full chunk stay out of the saved cache.
    resumable: options.state !== undefined,
    onAnswerStart: (answer) => {
      progress.clear();
      if (!options.json && !options.quiet && archive?.recall) writeStderr(describeRecall(answer.recalled));
      if (!options.json && options.every) stdout.write(`[after ${answer.lines} lines${answer.final ? `, ${finalReason}` : ""}]\n`);
    },
    onAnswerText: (text) => {
      if (!options.json) stdout.write(text);
    },
    onAnswer: (answer) => {
      if (options.json) stdout.write(JSON.stringify(answerRecord(answer, request, archive?.recall !== undefined)) + "\n");
      else stdout.write(answer.text.endsWith("\n") ? "\n" : "\n\n");
    },
  });

  const consumer: LineConsumer = {
    command: request.kind === "summary" ? "summarize" : "ask",
    addLine: async (text) => {
      await stream.addLine(text);
      await stdout.flush();
    },
    finish: async (reason) => {
      if (reason === "signal") finalReason = "stopped by a signal";
      await stream.finish();
      await stdout.flush();
      archive?.finish();
    },
    exportState: () => ({ pipeline: { answerStream: stream.exportState() }, blobs: {} }),
    importState: (pipeline) => stream.importState(pipeline.answerStream as AnswerStreamState),
  };

  const outcome = await runLineStream(model, session, options, consumer, () => progress.update(stream.lines));
  if (outcome.ended !== "stdout-closed") {
    const archiveStats = archive === undefined ? {} : {
      archived_lines: archive.archiver.archivedLines,
      archive_s: Math.round(archive.archiver.seconds * 1000) / 1000,
    };
    if (options.json) {
      const record = { type: "stats", lines: outcome.lines, dropped: outcome.dropped, ...progress.summary(), ...archiveStats };
      await writeStdout(JSON.stringify(record) + "\n").catch(() => {});
    } else if (!options.quiet) progress.printSummary();
  }
  // Standard input may still be open (a signal, `| head`), and its pending read would keep
  // the process alive; nothing more will be read from it.
  if (outcome.ended !== "end") {
    archive?.close();
    process.exit(0);
  }
}
