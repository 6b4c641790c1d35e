/** `sinkstream eval`: perplexity of a stream from standard input under a KV cache policy. */

import process from "node:process";
import { type Command, Option } from "commander";
import { ExitCode, SinkstreamError, UsageError } from "../../core/errors.ts";
import { DEFAULT_MODEL } from "../../core/model.ts";
import { POLICY_NAMES, type PolicyName, type PolicySizes, requiredPositions } from "../../core/policies.ts";
import type { Backend } from "../../core/runtime.ts";
import { resolveCacheSizes } from "../../core/session.ts";
import { type EvalSummary, parseIdStream, runEval, tokenizeLines } from "../../pipelines/eval.ts";
import { peakRssBytes, stdinBytes, writeStderr, writeStdout } from "../io.ts";
import { addRuntimeOptions, type ModelOptions, openModel, parseWholeNumber } from "../options.ts";

/** Rows of the RoPE table for `--policy dense` when `--max-positions` is not given. */
const DEFAULT_DENSE_POSITIONS = 8192;

const PROGRESS_REFRESH_MS = 200;

interface EvalOptions {
  model: string;
  policy: PolicyName;
  sinks?: number;
  window?: number;
  chunk: number;
  maxPositions?: number;
  ids?: boolean;
  json?: boolean;
  threads: number;
  backend: Backend;
  offline?: boolean;
  onnxFile?: string;
  quiet?: boolean;
  debug?: boolean;
}

/** Add the `eval` command to the program. */
export function registerEval(program: Command): void {
  const command = program
    .command("eval")
    .description(
      "score every token of standard input after the first and print its perplexity under a KV cache policy",
    )
    .option(
      "-m, --model <path>",
      "GGUF file, Hugging Face model directory, hub repository org/name[@revision] or hub file org/name/file.gguf[@revision]",
      DEFAULT_MODEL,
    )
    .addOption(
      new Option(
        "--policy <name>",
        "sink: sinks + recent window, positions within the cache; window: recent window only; " +
          "dense: every token, positions in the stream; recompute: the window before each token re-run from scratch",
      ).choices(POLICY_NAMES).default("sink"),
    )
    .option("--sinks <n>", "sink tokens kept forever, --policy sink only (default: 4)", parseWholeNumber("sink count", 0))
    .option(
      "--window <n>",
      "recent tokens kept (sink, window) or re-run (recompute) (default: min(1020, context length - sinks))",
      parseWholeNumber("window size", 1),
    )
    .option(
      "--chunk <n>",
      "tokens per forward pass; 1 is exact, larger is faster but approximate for sink, window and recompute (exact for dense)",
      parseWholeNumber("chunk size", 1),
      1,
    )
    .option(
      "--max-positions <n>",
      `longest stream --policy dense scores, the rows of its RoPE table (default: ${DEFAULT_DENSE_POSITIONS})`,
      parseWholeNumber("position limit", 1),
    )
    .option("--ids", "read whitespace-separated token ids instead of text")
    .option("--json", "write one NDJSON record per scored token and a summary record");
  addRuntimeOptions(command)
    .option("-q, --quiet", "print no progress on standard error")
    .option("--debug", "print stack traces of errors")
    .action((options) => evalCommand(options));
}

/** Reject options that the chosen policy does not use, instead of ignoring them. */
function checkPolicyOptions(options: EvalOptions): void {
  const { policy } = options;
  if (options.sinks !== undefined && policy !== "sink") {
    throw new UsageError(
      `Invalid option --sinks for --policy ${policy}: current value is ${options.sinks}; only --policy sink keeps sink tokens`,
    );
  }
  if (options.window !== undefined && policy === "dense") {
    throw new UsageError(
      `Invalid option --window for --policy dense: current value is ${options.window}; dense keeps every token, ` +
        `limit it with --max-positions`,
    );
  }
  if (options.maxPositions !== undefined && policy !== "dense") {
    throw new UsageError(
      `Invalid option --max-positions for --policy ${policy}: current value is ${options.maxPositions}; ` +
        `only --policy dense uses positions in the stream`,
    );
  }
}

async function evalCommand(options: EvalOptions): Promise<void> {
  checkPolicyOptions(options);
  const maxPositions = options.maxPositions ?? DEFAULT_DENSE_POSITIONS;
  const explicitSizes: PolicySizes = {
    policy: options.policy,
    sinks: options.policy === "sink" ? options.sinks ?? 4 : 0,
    window: options.window ?? 0,
    chunkSize: options.chunk,
    maxPositions,
  };
  // Without --window the cache stays within the context length, which loadModel always covers.
  const modelOptions: ModelOptions = {
    model: options.model,
    sinks: 0,
    window: requiredPositions(explicitSizes),
    maxTokens: 0,
    temperature: 0,
    seed: 0,
    threads: options.threads,
    backend: options.backend,
    offline: options.offline,
    onnxFile: options.onnxFile,
    quiet: options.quiet,
  };
  const { model } = await openModel(modelOptions);

  const { sizes: cacheSizes, warning } = resolveCacheSizes(
    { sinks: explicitSizes.sinks, window: options.window, chunkSize: options.chunk },
    model.config.contextLength,
  );
  const sizes: PolicySizes = { ...explicitSizes, window: cacheSizes.window };
  if (warning && !options.quiet && options.policy !== "dense") writeStderr(`sinkstream: warning: ${warning}\n`);

  const source = options.ids
    ? parseIdStream(stdinBytes(), model.config.vocabSize)
    : tokenizeLines(model.tokenizer, stdinBytes());

  const live = !options.quiet && Boolean(process.stderr.isTTY);
  let lastDraw = 0;
  let scored = 0;
  let nllSum = 0;
  const started = performance.now();
  const summary = await runEval(model.runtime, sizes, source, {
    onScores: async (scores) => {
      for (const score of scores) nllSum += score.nll;
      scored += scores.length;
      if (options.json) {
        let lines = "";
        for (const { index, token, nll } of scores) lines += `{"i":${index},"token":${token},"nll":${nll}}\n`;
        await writeStdout(lines);
      }
      const now = performance.now();
      if (live && now - lastDraw >= PROGRESS_REFRESH_MS) {
        lastDraw = now;
        const rate = scored / ((now - started) / 1000);
        writeStderr(`\r\x1b[K${scored} tokens scored, perplexity ${Math.exp(nllSum / scored).toFixed(3)}, ${rate.toFixed(0)} tok/s`);
      }
    },
  });
  if (live && lastDraw > 0) writeStderr("\r\x1b[K");
  await model.runtime.dispose();

  if (summary.scoredTokens === 0) {
    throw new SinkstreamError(
      `Cannot score the input: current length is ${summary.streamTokens} tokens; eval scores every token after the first, so give at least 2`,
      ExitCode.input,
    );
  }
  if (summary.stoppedEarly && !options.quiet) writeStderr(`sinkstream: warning: ${summary.stoppedEarly}\n`);
  const wallSeconds = (performance.now() - started) / 1000;
  if (options.json) {
    await writeStdout(JSON.stringify(summaryRecord(summary, wallSeconds)) + "\n");
  } else {
    await writeStdout(describeSummary(summary, wallSeconds) + "\n");
  }
}

function summaryRecord(summary: EvalSummary, wallSeconds: number): Record<string, unknown> {
  return {
    type: "summary",
    policy: summary.policy,
    sinks: summary.sinks,
    window: summary.policy === "dense" ? null : summary.window,
    chunk: summary.chunkSize,
    stream_tokens: summary.streamTokens,
    tokens: summary.scoredTokens,
    mean_nll: summary.meanNll,
    perplexity: summary.perplexity,
    tokens_per_s: round(summary.tokensPerSecond),
    peak_cache_tokens: summary.peakCacheTokens,
    peak_rss_bytes: peakRssBytes(),
    wall_s: round(wallSeconds),
    stopped_early: summary.stoppedEarly ?? null,
  };
}

function describeSummary(summary: EvalSummary, wallSeconds: number): string {
  let cache = String(summary.window);
  if (summary.policy === "sink") cache = `${summary.sinks}+${summary.window}`;
  if (summary.policy === "dense") cache = "all";
  return (
    `policy ${summary.policy}, cache ${cache}, chunk ${summary.chunkSize}: ${summary.scoredTokens} tokens scored, ` +
    `perplexity ${summary.perplexity.toFixed(4)} (mean NLL ${summary.meanNll.toFixed(4)} nats), ` +
    `${summary.tokensPerSecond.toFixed(0)} tok/s, peak cache ${summary.peakCacheTokens} tokens, ` +
    `peak RSS ${(peakRssBytes() / 2 ** 20).toFixed(1)} MiB, ${wallSeconds.toFixed(1)} s`
  );
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}
