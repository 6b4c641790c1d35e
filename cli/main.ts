#!/usr/bin/env -S deno run -A
/**
 * The sinkstream command line: a thin layer over `pipelines/` that parses options, reads
 * standard input and writes results to standard output, diagnostics to standard error.
 */

import process from "node:process";
import { Command, CommanderError, Option } from "commander";
import pkg from "../package.json" with { type: "json" };
import { ExitCode, SinkstreamError, UsageError } from "../core/errors.ts";
import { createSession, DEFAULT_MODEL, type LoadedModel, loadModel } from "../core/model.ts";
import type { Request } from "../core/prompt.ts";
import { Sampler } from "../core/sampler.ts";
import { readLines } from "../core/text_lines.ts";
import { type Answer, runAnswerStream } from "../pipelines/answer_stream.ts";
import { runGenerate } from "../pipelines/generate.ts";
import { readStdinText, stdinBytes, StdoutClosedError, writeStderr, writeStdout } from "./io.ts";
import { ProgressReporter } from "./progress.ts";

/** Options shared by every command that runs a model. */
interface ModelOptions {
  model: string;
  sinks?: number;
  window?: number;
  chunk?: number;
  maxTokens: number;
  temperature: number;
  seed: number;
  json?: boolean;
  threads: number;
  offline?: boolean;
  quiet?: boolean;
  debug?: boolean;
}

function parseWholeNumber(name: string, minimum: number) {
  return (value: string): number => {
    const number = Number(value);
    if (!/^\s*-?\d+\s*$/.test(value) || !Number.isSafeInteger(number) || number < minimum) {
      throw new UsageError(`Invalid ${name}: current value is ${JSON.stringify(value)}; use a whole number ≥ ${minimum}`);
    }
    return number;
  };
}

function parseNonNegative(name: string) {
  return (value: string): number => {
    const number = Number(value);
    if (value.trim() === "" || !Number.isFinite(number) || number < 0) {
      throw new UsageError(`Invalid ${name}: current value is ${JSON.stringify(value)}; use a number ≥ 0`);
    }
    return number;
  };
}

function addModelOptions(command: Command): Command {
  return command
    .option("-m, --model <path>", "GGUF model file, or a hub file id org/name/file.gguf[@revision]", DEFAULT_MODEL)
    .option("--sinks <n>", "sink tokens kept forever (default: 4)", parseWholeNumber("sink count", 0))
    .option(
      "--window <n>",
      "recent tokens kept besides the sinks (default: min(1020, context length - sinks))",
      parseWholeNumber("window size", 0),
    )
    .option("--chunk <n>", "maximum tokens per forward pass while ingesting (default: 32; 1 is exact per-token)", parseWholeNumber("chunk size", 0))
    .option("-n, --max-tokens <n>", "maximum tokens to generate per answer", parseWholeNumber("token limit", 0), 128)
    .option("-t, --temperature <t>", "sampling temperature, 0 for greedy", parseNonNegative("temperature"), 0)
    .option("--seed <n>", "seed of the sampler", parseWholeNumber("seed", 0), 0)
    .option("--json", "write NDJSON records to standard output")
    .option("--threads <n>", "ONNX Runtime threads", parseWholeNumber("thread count", 1), 1)
    .option("--offline", "never download; use only local files and the cache")
    .option("-q, --quiet", "print no progress or statistics on standard error")
    .option("--debug", "print stack traces of errors");
}

async function openModel(options: ModelOptions): Promise<{ model: LoadedModel }> {
  let lastDraw = 0;
  const model = await loadModel(options.model, {
    offline: options.offline,
    numThreads: options.threads,
    maxPositions: (options.sinks ?? 4) + (options.window ?? 0),
    onProgress: (progress) => {
      if (options.quiet || !process.stderr.isTTY) return;
      const now = performance.now();
      if (now - lastDraw < 200 && progress.receivedBytes !== progress.totalBytes) return;
      lastDraw = now;
      const total = progress.totalBytes ? ` of ${(progress.totalBytes / 2 ** 20).toFixed(1)} MiB` : "";
      writeStderr(`\r\x1b[Kdownloading ${progress.file}: ${(progress.receivedBytes / 2 ** 20).toFixed(1)} MiB${total}`);
      if (progress.receivedBytes === progress.totalBytes) writeStderr("\n");
    },
  });
  return { model };
}

async function openSession(model: LoadedModel, options: ModelOptions) {
  const { session, warning } = await createSession(model, {
    sinks: options.sinks,
    window: options.window,
    chunkSize: options.chunk,
  });
  if (warning && !options.quiet) writeStderr(`sinkstream: warning: ${warning}\n`);
  return session;
}

async function generateCommand(options: ModelOptions & { prompt?: string }): Promise<void> {
  const prompt = options.prompt ?? (await readStdinText());
  if (prompt === "") throw new UsageError("Missing prompt: give --prompt TEXT or pipe the prompt on standard input");
  const { model } = await openModel(options);
  const session = await openSession(model, options);
  const progress = new ProgressReporter(session, { quiet: options.quiet });
  const sampler = new Sampler({ temperature: options.temperature, seed: options.seed });

  const { ids, text } = await runGenerate(model, session, {
    prompt,
    maxTokens: options.maxTokens,
    sampler,
    onText: (piece) => {
      if (!options.json) void writeStdout(piece).catch(() => {});
    },
  });
  if (options.json) {
    await writeStdout(JSON.stringify({ type: "generation", text, token_ids: ids }) + "\n");
    await writeStdout(JSON.stringify({ type: "stats", ...progress.summary() }) + "\n");
  } else {
    await writeStdout("\n");
    if (!options.quiet) progress.printSummary();
  }
}

async function answerCommand(request: Request, options: ModelOptions & { every?: number }): Promise<void> {
  const { model } = await openModel(options);
  const session = await openSession(model, options);
  const progress = new ProgressReporter(session, { quiet: options.quiet });
  const sampler = new Sampler({ temperature: options.temperature, seed: options.seed });
  let pendingWrite: Promise<void> = Promise.resolve();
  const write = (text: string) => {
    pendingWrite = pendingWrite.then(() => writeStdout(text));
  };

  await runAnswerStream(model, session, readLines(stdinBytes()), {
    request,
    every: options.every,
    maxTokens: options.maxTokens,
    sampler,
    onProgress: (lines) => progress.update(lines),
    onAnswerStart: (answer) => {
      progress.clear();
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
        record.text = answer.text;
        write(JSON.stringify(record) + "\n");
      } else {
        write(answer.text.endsWith("\n") ? "\n" : "\n\n");
      }
    },
  });
  await pendingWrite;
  if (options.json) await writeStdout(JSON.stringify({ type: "stats", ...progress.summary() }) + "\n");
  else if (!options.quiet) progress.printSummary();
}

function buildProgram(): Command {
  const program = new Command("sinkstream")
    .description("Summarize, question and score endless text streams with a small language model and a sink-and-window KV cache")
    .version(String(pkg.version), "-V, --version")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();

  addModelOptions(
    program
      .command("generate")
      .description("continue a prompt and print only the continuation")
      .option("-p, --prompt <text>", "the prompt (default: read from standard input)"),
  ).action((options) => generateCommand(options));

  addModelOptions(
    program
      .command("summarize")
      .description("read standard input to its end and summarize what the cache holds")
      .addOption(new Option("--every <lines>", "also summarize every N input lines").argParser(parseWholeNumber("line count", 1))),
  ).action((options) => answerCommand({ kind: "summary" }, options));

  addModelOptions(
    program
      .command("ask")
      .description("read standard input to its end and answer a question about what the cache holds")
      .argument("<question>", "the question")
      .addOption(new Option("--every <lines>", "also answer every N input lines").argParser(parseWholeNumber("line count", 1))),
  ).action((question: string, options) => answerCommand({ kind: "answer", question }, options));

  for (const command of program.commands) command.exitOverride();
  return program;
}

/** Run the command line and return the exit code. */
export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes("--debug");
  try {
    await buildProgram().parseAsync(argv, { from: "user" });
    return ExitCode.ok;
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.exitCode === 0) return ExitCode.ok; // --help, --version
      return ExitCode.usage; // commander printed the message
    }
    if (error instanceof StdoutClosedError) return ExitCode.ok;
    if (error instanceof SinkstreamError) {
      writeStderr(`sinkstream: ${error.message}\n`);
      if (debug) writeStderr(`${error.stack}\n`);
      return error.exitCode;
    }
    writeStderr(`sinkstream: internal error: ${(error as Error).message ?? error}\n`);
    writeStderr(debug ? `${(error as Error).stack}\n` : "run again with --debug for the stack trace and report it\n");
    return ExitCode.internal;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
