/**
 * Speed of sinkstream side by side with llama.cpp, in one run on one machine.
 *
 * For each GGUF file, each run starts fresh processes: `sinkstream bench` with
 * `--backend wasm` and with `--backend native`, and the same measurements made with llama.cpp
 * through node-llama-cpp (`bench/llamacpp_worker.mjs`, under Node), with the same thread count
 * and cache size and llama.cpp's context shift on. Results are medians over the runs, each
 * also given as a ratio to llama.cpp's. The recompute baseline (a fresh prefill of the whole
 * cache per token, the StreamingLLM paper's baseline) comes from `sinkstream bench` itself.
 *
 * node-llama-cpp weighs over 700 MB with every optional GPU build, so it is not a dependency:
 * on first use it is installed into `~/.cache/sinkstream/llamacpp` with `--omit=optional`
 * plus the one CPU build for this platform. npm does not run its postinstall script, so
 * nothing is compiled or downloaded beyond the registry packages.
 *
 * Usage:
 *   bun bench/compare.ts [--models a.gguf,b.gguf] [--runs 3] [--threads 2] [--quick]
 *                        [--json out.json] [--markdown out.md]
 */

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { homedir, loadavg } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { type BenchResult, median } from "../pipelines/bench.ts";

const LLAMACPP_VERSION = "3.21.1";
const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const SHARED_MODELS = join(ROOT, "..", "shared", "models");
const BENCH_MODELS = join(homedir(), ".cache", "sinkstream", "bench-models");

/** One engine's measurements, as printed by `sinkstream bench --json` or the llama.cpp worker. */
type EngineResult = Omit<BenchResult, "engine" | "step_ms" | "handoff_bytes_per_token"> & {
  engine: string;
  step_ms?: BenchResult["step_ms"];
  handoff_bytes_per_token?: number;
};

/** Measurement sizes of one comparison. */
interface Plan {
  threads: number;
  runs: number;
  chunkSizes: number[];
  ingestTokens: number;
  decodeTokens: number;
  positions: number[];
  latencySteps: number;
  recomputeSteps: number;
}

/** Return the node-llama-cpp prebuilt package of this platform (CPU only). */
function llamaCppPlatformPackage(): string {
  const arch = process.arch;
  if (process.platform === "linux") return `@node-llama-cpp/linux-${arch}`;
  if (process.platform === "darwin") return arch === "arm64" ? "@node-llama-cpp/mac-arm64-metal" : "@node-llama-cpp/mac-x64";
  if (process.platform === "win32") return `@node-llama-cpp/win-${arch}`;
  throw new Error(`Cannot pick a node-llama-cpp build: current platform is ${process.platform}; use Linux, macOS or Windows`);
}

/** Install node-llama-cpp into the cache folder unless it is there; returns the folder. */
export async function ensureLlamaCpp(folder = join(homedir(), ".cache", "sinkstream", "llamacpp")): Promise<string> {
  const manifest = join(folder, "node_modules", "node-llama-cpp", "package.json");
  if (existsSync(manifest)) {
    const { version } = JSON.parse(await readFile(manifest, "utf8"));
    if (version === LLAMACPP_VERSION) return folder;
  }
  await mkdir(folder, { recursive: true });
  if (!existsSync(join(folder, "package.json"))) {
    await writeFile(join(folder, "package.json"), JSON.stringify({ name: "sinkstream-llamacpp-anchor", private: true }) + "\n");
  }
  process.stderr.write(`installing node-llama-cpp ${LLAMACPP_VERSION} (CPU build only) into ${folder}\n`);
  const args = [
    "install",
    "--save-exact",
    "--omit=optional",
    "--no-audit",
    "--no-fund",
    `node-llama-cpp@${LLAMACPP_VERSION}`,
    `${llamaCppPlatformPackage()}@${LLAMACPP_VERSION}`,
  ];
  const { code, stderr } = await run("npm", args, folder);
  if (code !== 0) {
    throw new Error(`Failed to install node-llama-cpp into ${folder}: npm exited with ${code}: ${stderr.trim()}`);
  }
  return folder;
}

/** Run a command and collect its output. */
function run(command: string, args: string[], cwd = ROOT): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (data) => (stdout += data));
    child.stderr.on("data", (data) => (stderr += data));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

/** Parse the last JSON line of a child's output, or throw with its standard error. */
function lastJson(what: string, output: { code: number; stdout: string; stderr: string }): Record<string, unknown> {
  const line = output.stdout.trim().split("\n").pop() ?? "";
  if (output.code !== 0 || !line.startsWith("{")) {
    throw new Error(`${what} failed with exit code ${output.code}: ${output.stderr.trim().slice(-2000)}`);
  }
  return JSON.parse(line);
}

/** Run `sinkstream bench`, which picks the default cache of the model: 4 sinks + min(1020, context - 4). */
async function runSinkstream(model: string, backend: string, plan: Plan) {
  const args = [
    join(ROOT, "cli", "main.ts"),
    "bench",
    "--json",
    "--quiet",
    "--model",
    model,
    "--backend",
    backend,
    "--threads",
    String(plan.threads),
    "--chunks",
    plan.chunkSizes.join(","),
    "--ingest-tokens",
    String(plan.ingestTokens),
    "--decode-tokens",
    String(plan.decodeTokens),
    "--positions",
    plan.positions.join(","),
    "--steps",
    String(plan.latencySteps),
    "--recompute-steps",
    String(plan.recomputeSteps),
  ];
  return lastJson(`sinkstream bench (${backend}) on ${model}`, await run(process.execPath, args)) as unknown as EngineResult;
}

async function runLlamaCpp(folder: string, model: string, vocabSize: number, cache: { sinks: number; window: number }, plan: Plan) {
  const config = {
    model,
    vocabSize,
    version: LLAMACPP_VERSION,
    threads: plan.threads,
    ...cache,
    chunkSizes: plan.chunkSizes,
    ingestTokens: plan.ingestTokens,
    decodeTokens: plan.decodeTokens,
    positions: plan.positions,
    latencySteps: plan.latencySteps,
    seed: 0,
  };
  const output = await run("node", [join(ROOT, "bench", "llamacpp_worker.mjs"), folder, JSON.stringify(config)]);
  return lastJson(`llama.cpp on ${model}`, output) as unknown as EngineResult;
}

/** Median of each numeric figure over runs of one engine. */
function medianResult(runs: EngineResult[]): EngineResult {
  const first = runs[0];
  const pick = (get: (r: EngineResult) => number | undefined) => {
    const values = runs.map(get).filter((v): v is number => typeof v === "number" && Number.isFinite(v));
    return values.length > 0 ? Math.round(median(values) * 100) / 100 : Number.NaN;
  };
  const ingest: Record<string, number> = {};
  for (const chunk of Object.keys(first.ingest_tok_s)) ingest[chunk] = pick((r) => r.ingest_tok_s[chunk]);
  const result: EngineResult = {
    ...first,
    load_ms: pick((r) => r.load_ms),
    first_token_ms: pick((r) => r.first_token_ms),
    ingest_tok_s: ingest,
    decode_tok_s: pick((r) => r.decode_tok_s),
    latency: first.latency.map((point, i) => ({
      position: point.position,
      p50_ms: pick((r) => r.latency[i]?.p50_ms),
      p99_ms: pick((r) => r.latency[i]?.p99_ms),
      rss_bytes: pick((r) => r.latency[i]?.rss_bytes),
    })),
    peak_rss_bytes: pick((r) => r.peak_rss_bytes),
  };
  if (first.recompute_step_ms !== undefined) result.recompute_step_ms = pick((r) => r.recompute_step_ms);
  if (first.handoff_bytes_per_token !== undefined) result.handoff_bytes_per_token = pick((r) => r.handoff_bytes_per_token);
  if (first.step_ms !== undefined) {
    const keys = Object.keys(first.step_ms) as (keyof BenchResult["step_ms"])[];
    result.step_ms = Object.fromEntries(keys.map((key) => [key, pick((r) => r.step_ms?.[key])])) as BenchResult["step_ms"];
  }
  return result;
}

function formatRatio(value: number, anchor: number): string {
  if (!Number.isFinite(value) || !Number.isFinite(anchor) || anchor === 0) return "–";
  return `${(value / anchor).toFixed(2)}×`;
}

/** Format one model's medians as a Markdown table with ratios to llama.cpp. */
function markdownTable(name: string, engines: EngineResult[], runs: number): string {
  const anchor = engines.find((e) => e.engine === "llama.cpp");
  const header = ["figure", ...engines.map((e) => (e.engine === "llama.cpp" ? "llama.cpp" : `sinkstream ${e.backend}`))];
  const rows: string[][] = [];
  const add = (label: string, get: (e: EngineResult) => number, higherIsBetter: boolean, unit: string) => {
    rows.push([
      label,
      ...engines.map((e) => {
        const value = get(e);
        const text = Number.isFinite(value) ? `${value.toFixed(value >= 100 ? 0 : 2)}${unit ? ` ${unit}` : ""}` : "–";
        if (!anchor || e === anchor) return text;
        const ratio = higherIsBetter ? formatRatio(value, get(anchor)) : formatRatio(get(anchor), value);
        return `${text} (${ratio})`;
      }),
    ]);
  };
  for (const chunk of Object.keys(engines[0].ingest_tok_s)) {
    add(`prefill tok/s, chunk ${chunk}`, (e) => e.ingest_tok_s[chunk], true, "");
  }
  add("decode tok/s", (e) => e.decode_tok_s, true, "");
  engines[0].latency.forEach((point, i) => {
    add(`p50 latency at ${point.position}`, (e) => e.latency[i]?.p50_ms, false, "ms");
    add(`p99 latency at ${point.position}`, (e) => e.latency[i]?.p99_ms, false, "ms");
  });
  add("first token from process start", (e) => e.first_token_ms, false, "ms");
  add("peak RSS", (e) => e.peak_rss_bytes / 2 ** 20, false, "MiB");
  const lines = [
    `### ${name}`,
    "",
    `Medians of ${runs} run(s); in brackets the ratio to llama.cpp, above 1× where sinkstream is faster or smaller.`,
    "",
    `| ${header.join(" | ")} |`,
    `| ${header.map(() => "---").join(" | ")} |`,
    ...rows.map((row) => `| ${row.join(" | ")} |`),
    "",
  ];
  for (const e of engines) {
    if (e.recompute_step_ms !== undefined && e.latency.length > 0) {
      const sinkMs = e.latency[0].p50_ms;
      lines.push(
        `- sinkstream ${e.backend}: recompute step ${e.recompute_step_ms} ms vs sink step p50 ${sinkMs} ms: ` +
          `**${(e.recompute_step_ms / sinkMs).toFixed(1)}×** speed-up of sink over recompute.`,
      );
    }
    if (e.step_ms !== undefined) {
      const s = e.step_ms;
      lines.push(
        `- sinkstream ${e.backend} decode step: past handoff ${s.prepare_past} ms, runtime call ${s.runtime_call} ms, ` +
          `append ${s.append_present} ms, sampling ${s.sampling} ms, tokenization ${s.tokenize} ms/token; ` +
          `${((e.handoff_bytes_per_token ?? 0) / 2 ** 20).toFixed(2)} MiB of K/V passed per step.`,
      );
    }
  }
  return lines.join("\n") + "\n";
}

function defaultModels(): string[] {
  const candidates = [
    join(SHARED_MODELS, "stories260K-v3.gguf"),
    join(BENCH_MODELS, "smollm2-135m-f32.gguf"),
    join(BENCH_MODELS, "qwen2.5-0.5b-f32.gguf"),
  ];
  return candidates.filter((path) => existsSync(path));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      models: { type: "string" },
      runs: { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      backends: { type: "string", default: "wasm,native" },
      positions: { type: "string" },
      quick: { type: "boolean", default: false },
      json: { type: "string" },
      markdown: { type: "string" },
    },
  });
  const quick = values.quick ?? false;
  const models = values.models ? values.models.split(",") : defaultModels();
  const plan: Plan = {
    threads: Number(values.threads),
    runs: Number(values.runs),
    chunkSizes: quick ? [1, 32] : [1, 8, 32, 128],
    ingestTokens: quick ? 64 : 256,
    decodeTokens: quick ? 16 : 64,
    positions: [quick ? 2000 : 10000],
    latencySteps: quick ? 20 : 100,
    recomputeSteps: quick ? 1 : 3,
  };
  if (values.positions) plan.positions = values.positions.split(",").map(Number);
  for (const [name, value] of [["runs", plan.runs], ["threads", plan.threads]] as const) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new Error(`Invalid --${name}: current value is ${value}; use a whole number ≥ 1`);
    }
  }
  const backends = values.backends!.split(",");
  const llamaFolder = await ensureLlamaCpp();

  const report: Record<string, unknown>[] = [];
  let markdown = "";
  for (const model of models) {
    const byEngine = new Map<string, EngineResult[]>();
    let cache = { sinks: 0, window: 0 };
    for (let runIndex = 0; runIndex < plan.runs; runIndex++) {
      const results: EngineResult[] = [];
      for (const backend of backends) results.push(await runSinkstream(model, backend, plan));
      // llama.cpp gets the cache and vocabulary that sinkstream reported for this model.
      const { sinks, window, vocab_size: vocabSize } = results[0];
      cache = { sinks, window };
      results.push(await runLlamaCpp(llamaFolder, model, vocabSize, cache, plan));
      for (const result of results) {
        const key = result.engine === "llama.cpp" ? "llama.cpp" : result.backend;
        byEngine.set(key, [...(byEngine.get(key) ?? []), result]);
        process.stderr.write(`${model} run ${runIndex + 1}: ${key} decode ${result.decode_tok_s} tok/s\n`);
      }
    }
    const medians = [...byEngine.values()].map(medianResult);
    const name = model.split("/").pop()!;
    report.push({ model: name, cache, medians, runs: Object.fromEntries(byEngine) });
    markdown += markdownTable(`${name}, cache ${cache.sinks}+${cache.window}, ${plan.threads} thread(s)`, medians, plan.runs) + "\n";
  }

  const machine = `${process.platform} ${process.arch}, ${navigator.hardwareConcurrency} logical CPUs, ` +
    `load average ${loadavg().map((v) => v.toFixed(1)).join(" ")} at the end`;
  markdown = `Machine: ${machine}.\n\n` + markdown;
  const json = JSON.stringify({ type: "compare", machine, plan, report }, null, 2);
  if (values.json) await writeFile(values.json, json + "\n");
  if (values.markdown) await writeFile(values.markdown, markdown);
  process.stdout.write(markdown);
}

if (import.meta.main) await main();
