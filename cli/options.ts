/**
 * Options and set-up shared by every command that runs a model: option parsers, the model
 * options, and loading of the model and its streaming session.
 */

import process from "node:process";
import { type Command, Option } from "commander";
import { type Backend, BACKENDS } from "../core/runtime.ts";
import { UsageError } from "../core/errors.ts";
import { createSession, DEFAULT_MODEL, type LoadedModel, loadModel } from "../core/model.ts";
import type { StreamingSession } from "../core/session.ts";
import { writeStderr } from "./io.ts";

/** Options shared by every command that runs a model. */
export interface ModelOptions {
  model: string;
  sinks?: number;
  window?: number;
  chunk?: number;
  maxTokens: number;
  temperature: number;
  seed: number;
  json?: boolean;
  threads: number;
  backend: Backend;
  offline?: boolean;
  onnxFile?: string;
  quiet?: boolean;
  debug?: boolean;
}

export function parseWholeNumber(name: string, minimum: number) {
  return (value: string): number => {
    const number = Number(value);
    if (!/^\s*-?\d+\s*$/.test(value) || !Number.isSafeInteger(number) || number < minimum) {
      throw new UsageError(`Invalid ${name}: current value is ${JSON.stringify(value)}; use a whole number ≥ ${minimum}`);
    }
    return number;
  };
}

export function parseNonNegative(name: string) {
  return (value: string): number => {
    const number = Number(value);
    if (value.trim() === "" || !Number.isFinite(number) || number < 0) {
      throw new UsageError(`Invalid ${name}: current value is ${JSON.stringify(value)}; use a number ≥ 0`);
    }
    return number;
  };
}

/** Model options a command reads. The others are left out of its help. */
export interface ModelOptionUse {
  /** Whether to add `--chunk`, the ingest chunk size (default true). */
  chunk?: boolean;
  /** Whether to add `--max-tokens` and `--temperature`, for commands that generate text (default true). */
  generation?: boolean;
  /** Whether to add `--seed` (default: the value of `generation`). */
  seed?: boolean;
}

/** Add the model, cache, generation and output options that `use` selects. */
export function addModelOptions(command: Command, use: ModelOptionUse = {}): Command {
  const { chunk = true, generation = true, seed = generation } = use;
  command
    .option(
      "-m, --model <path>",
      "GGUF file, Hugging Face model directory, hub repository org/name[@revision] or hub file org/name/file.gguf[@revision]",
      DEFAULT_MODEL,
    )
    .option("--sinks <n>", "sink tokens kept forever (default: 4)", parseWholeNumber("sink count", 0))
    .option(
      "--window <n>",
      "recent tokens kept besides the sinks (default: min(1020, context length - sinks))",
      parseWholeNumber("window size", 1),
    );
  if (chunk) {
    command.option(
      "--chunk <n>",
      "maximum tokens per forward pass while ingesting (default: 32; 1 is exact per-token)",
      parseWholeNumber("chunk size", 0),
    );
  }
  if (generation) {
    command
      .option("-n, --max-tokens <n>", "maximum tokens to generate per answer", parseWholeNumber("token limit", 0), 128)
      .option("-t, --temperature <t>", "sampling temperature, 0 for greedy", parseNonNegative("temperature"), 0);
  }
  if (seed) command.option("--seed <n>", "seed of the random generator: the sampler, or the benchmark's token ids", parseWholeNumber("seed", 0), 0);
  command.option("--json", "write NDJSON records to standard output");
  return addRuntimeOptions(command)
    .option("-q, --quiet", "print no progress or statistics on standard error")
    .option("--debug", "print stack traces of errors");
}

/** Add the options that choose how and from where the model runs: threads, backend, files. */
export function addRuntimeOptions(command: Command): Command {
  return command
    .option("--threads <n>", "ONNX Runtime threads", parseWholeNumber("thread count", 1), 1)
    .addOption(
      new Option("--backend <name>", "ONNX Runtime build: wasm (onnxruntime-web) or native (onnxruntime-node, optional)")
        .choices(BACKENDS)
        .default("wasm"),
    )
    .option("--offline", "never download; use only local files and the cache")
    .option("--onnx-file <name>", "ONNX file under onnx/ of a Hugging Face model (default: the first of model.onnx, model_quantized.onnx, …)");
}

export async function openModel(options: ModelOptions): Promise<{ model: LoadedModel }> {
  let lastDraw = 0;
  const model = await loadModel(options.model, {
    offline: options.offline,
    onnxFile: options.onnxFile,
    cacheTokens: options.window === undefined ? undefined : (options.sinks ?? 4) + options.window,
    numThreads: options.threads,
    backend: options.backend,
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

export async function openSession(model: LoadedModel, options: ModelOptions): Promise<StreamingSession> {
  const { session, warning } = await createSession(model, {
    sinks: options.sinks,
    window: options.window,
    chunkSize: options.chunk,
  });
  if (warning && !options.quiet) writeStderr(`sinkstream: warning: ${warning}\n`);
  return session;
}

