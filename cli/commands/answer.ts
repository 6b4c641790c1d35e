/** `sinkstream summarize` and `sinkstream ask`: answer a request about a stream read from stdin. */

import process from "node:process";
import { type Command, Option } from "commander";
import type { LoadedModel } from "../../core/model.ts";
import type { Request } from "../../core/prompt.ts";
import { Sampler } from "../../core/sampler.ts";
import type { StreamingSession } from "../../core/session.ts";
import { readLines } from "../../core/text_lines.ts";
import { type Answer, runAnswerStream } from "../../pipelines/answer_stream.ts";
import {
  addArchiveOptions,
  type ArchiveOptions,
  describeRecall,
  openStreamArchive,
  recalledRecord,
  type StreamArchive,
} from "../archive_options.ts";
import { stdinBytes, StdoutClosedError, writeStderr, writeStdout } from "../io.ts";
import { addModelOptions, type ModelOptions, openModel, openSession, parseWholeNumber } from "../options.ts";
import { ProgressReporter } from "../progress.ts";

/** Add the `summarize` and `ask` commands to the program. */
export function registerAnswerCommands(program: Command): void {
  addArchiveOptions(addModelOptions(
    program
      .command("summarize")
      .description("read standard input to its end and summarize what the cache holds")
      .addOption(new Option("--every <lines>", "also summarize every N input lines").argParser(parseWholeNumber("line count", 1))),
  )).action((options) => answerCommand({ kind: "summary" }, options));

  addArchiveOptions(addModelOptions(
    program
      .command("ask")
      .description("read standard input to its end and answer a question about what the cache holds")
      .argument("<question>", "the question")
      .addOption(new Option("--every <lines>", "also answer every N input lines").argParser(parseWholeNumber("line count", 1))),
  )).action((question: string, options) => answerCommand({ kind: "answer", question }, options));
}

async function answerCommand(request: Request, options: ModelOptions & ArchiveOptions & { every?: number }): Promise<void> {
  const { model } = await openModel(options);
  const session = await openSession(model, options);
  const archive = await openStreamArchive(options, session);
  let ended: "end" | "stdout-closed";
  try {
    ended = await answerStream(request, options, model, session, archive);
  } finally {
    archive?.close();
  }
  // Standard input may still be open (`| head`). Nothing more will be read from it, and its
  // pending read would keep the process alive.
  if (ended === "stdout-closed") process.exit(0);
}

async function answerStream(
  request: Request,
  options: ModelOptions & { every?: number },
  model: LoadedModel,
  session: StreamingSession,
  archive: StreamArchive | undefined,
): Promise<"end" | "stdout-closed"> {
  const progress = new ProgressReporter(session, { quiet: options.quiet });
  const sampler = new Sampler({ temperature: options.temperature, seed: options.seed });

  // Writes are queued so that answers stream without waiting for the pipe. The first failed
  // write rejects `writeFailure` and skips the writes queued after it.
  let writeFailed = false;
  let rejectWrites!: (error: unknown) => void;
  const writeFailure = new Promise<never>((_, reject) => (rejectWrites = reject));
  let pendingWrite: Promise<void> = Promise.resolve();
  const write = (text: string) => {
    pendingWrite = pendingWrite
      .then(() => (writeFailed ? undefined : writeStdout(text)))
      .catch((error) => {
        writeFailed = true;
        rejectWrites(error);
      });
  };

  const streamed = runAnswerStream(model, session, readLines(stdinBytes()), {
    request,
    every: options.every,
    maxTokens: options.maxTokens,
    sampler,
    archiver: archive?.archiver,
    recall: archive?.recall,
    onProgress: (lines) => progress.update(lines),
    onAnswerStart: (answer) => {
      progress.clear();
      if (!options.json && !options.quiet && archive?.recall) writeStderr(describeRecall(answer.recalled));
      if (!options.json && options.every) write(`[after ${answer.lines} lines${answer.final ? ", end of input" : ""}]\n`);
    },
    onAnswerText: (text) => {
      if (!options.json) write(text);
    },
    onAnswer: (answer: Answer) => {
      if (options.json) {
        const record: Record<string, unknown> = {
          type: answer.kind,
          final: answer.final,
          lines: answer.lines,
          tokens: answer.tokens,
          cache_tokens: answer.cacheTokens,
        };
        if (request.kind === "answer") record.question = request.question;
        if (archive?.recall) {
          record.recalled = answer.recalled.map(recalledRecord);
          record.recall_dropped = answer.recallDropped;
        }
        record.text = answer.text;
        write(JSON.stringify(record) + "\n");
      } else {
        write(answer.text.endsWith("\n") ? "\n" : "\n\n");
      }
    },
  }).then(() => pendingWrite);
  // The race settles on whichever fails first. Marking both handled keeps the loser's later
  // rejection from being reported as unhandled.
  streamed.catch(() => {});
  writeFailure.catch(() => {});
  try {
    // A closed standard output ends the stream at once, even while the read of standard input
    // waits for a line that may never come.
    await Promise.race([streamed, writeFailure]);
    if (writeFailed) await writeFailure;
  } catch (error) {
    if (error instanceof StdoutClosedError) return "stdout-closed";
    throw error;
  }
  archive?.finish();
  const archiveStats = archive === undefined ? {} : {
    archived_lines: archive.archiver.archivedLines,
    archive_s: Math.round(archive.archiver.seconds * 1000) / 1000,
  };
  if (options.json) await writeStdout(JSON.stringify({ type: "stats", ...progress.summary(), ...archiveStats }) + "\n");
  else if (!options.quiet) progress.printSummary();
  return "end";
}
