/**
 * `sinkstream bench`: measure this machine's speed with one model and one backend. The same
 * measurements side by side with llama.cpp and recomputation are in `bench/compare.ts`.
 */

import type { Command } from "commander";
import { UsageError } from "../../core/errors.ts";
import { type BenchResult, runBench } from "../../pipelines/bench.ts";
import { peakRssBytes, writeStdout } from "../io.ts";
import { addModelOptions, type ModelOptions, openModel, parseWholeNumber } from "../options.ts";

interface BenchCommandOptions extends ModelOptions {
  chunks: string;
  ingestTokens: number;
  decodeTokens: number;
  positions: string;
  steps: number;
  recomputeSteps: number;
}

/** Add the `bench` command to the program. */
export function registerBench(program: Command): void {
  addModelOptions(
    program
      .command("bench")
      .description("measure prefill and decode speed, per-token latency far into a stream, memory and start-up time")
      .option("--chunks <list>", "comma-separated chunk sizes whose prefill tokens/s is measured", "1,8,32,128")
      .option("--ingest-tokens <n>", "tokens timed per chunk size", parseWholeNumber("ingest token count", 1), 256)
      .option("--decode-tokens <n>", "tokens generated for the decode speed", parseWholeNumber("decode token count", 2), 64)
      .option(
        "--positions <list>",
        "comma-separated stream positions where single-token latency is measured (reached with window-sized chunks)",
        "10000",
      )
      .option("--steps <n>", "single-token steps timed at each position", parseWholeNumber("step count", 1), 100)
      .option(
        "--recompute-steps <n>",
        "recompute steps timed (each a prefill of the whole cache); 0 skips the baseline",
        parseWholeNumber("recompute step count", 0),
        3,
      ),
    { chunk: false, generation: false, seed: true },
  ).action((options) => benchCommand(options));
}

/** Parse a comma-separated list of whole numbers ≥ 1, ascending if `ascending`. */
export function parseNumberList(name: string, text: string, ascending = false): number[] {
  const values = text.split(",").map((part) => Number(part.trim()));
  if (values.length === 0 || values.some((value) => !Number.isSafeInteger(value) || value < 1)) {
    throw new UsageError(`Invalid ${name}: current value is ${JSON.stringify(text)}; use whole numbers ≥ 1 separated by commas`);
  }
  if (ascending && values.some((value, i) => i > 0 && value <= values[i - 1])) {
    throw new UsageError(`Invalid ${name}: current value is ${JSON.stringify(text)}; list the positions in ascending order`);
  }
  return values;
}

async function benchCommand(options: BenchCommandOptions): Promise<void> {
  const chunkSizes = parseNumberList("chunk sizes", options.chunks);
  const positions = parseNumberList("positions", options.positions, true);
  const { model } = await openModel(options);
  const sinks = options.sinks ?? 4;
  const window = options.window ?? Math.min(1020, model.config.contextLength - sinks);
  if (positions[0] < sinks + window) {
    throw new UsageError(
      `Invalid positions: current first value is ${positions[0]}; measure at or after the cache is full (${sinks + window})`,
    );
  }
  const result = await runBench(model, {
    sinks,
    window,
    chunkSizes,
    ingestTokens: options.ingestTokens,
    decodeTokens: options.decodeTokens,
    positions,
    latencySteps: options.steps,
    recomputeSteps: options.recomputeSteps,
    seed: options.seed,
  }, peakRssBytes);
  result.threads = options.threads;
  await model.runtime.dispose();

  if (options.json) {
    await writeStdout(JSON.stringify({ type: "bench", ...result }) + "\n");
  } else {
    await writeStdout(formatBenchTable(result));
  }
}

/** Format one result as an aligned two-column table. */
export function formatBenchTable(result: BenchResult): string {
  const rows: [string, string][] = [
    ["model", result.model],
    ["backend / threads", `${result.backend} / ${result.threads}`],
    ["cache", `${result.sinks} sinks + ${result.window} window`],
    ["load (from process start)", `${result.load_ms.toFixed(0)} ms`],
    ["first token (from process start)", `${result.first_token_ms.toFixed(0)} ms`],
  ];
  for (const [chunk, rate] of Object.entries(result.ingest_tok_s)) {
    rows.push([`prefill, chunk ${chunk}`, `${rate.toFixed(1)} tok/s`]);
  }
  rows.push(["decode", `${result.decode_tok_s.toFixed(1)} tok/s`]);
  for (const point of result.latency) {
    rows.push([
      `latency at position ${point.position}`,
      `p50 ${point.p50_ms.toFixed(2)} ms, p99 ${point.p99_ms.toFixed(2)} ms, RSS ${(point.rss_bytes / 2 ** 20).toFixed(0)} MiB`,
    ]);
  }
  const step = result.step_ms;
  rows.push([
    "decode step by stage",
    `past handoff ${step.prepare_past} ms, runtime call ${step.runtime_call} ms, append ${step.append_present} ms, ` +
    `sampling ${step.sampling} ms, tokenize ${step.tokenize} ms/token`,
  ]);
  rows.push(["K/V bytes copied per step", `${(result.handoff_bytes_per_token / 2 ** 20).toFixed(2)} MiB`]);
  if (result.recompute_step_ms !== undefined) {
    const sinkMs = result.latency[0]?.p50_ms ?? Number.NaN;
    rows.push([
      "recompute step",
      `${result.recompute_step_ms.toFixed(1)} ms (${(result.recompute_step_ms / sinkMs).toFixed(1)}× the sink step's p50)`,
    ]);
  }
  rows.push(["peak RSS", `${(result.peak_rss_bytes / 2 ** 20).toFixed(0)} MiB`]);
  const width = Math.max(...rows.map(([name]) => name.length));
  return rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join("\n") + "\n";
}
