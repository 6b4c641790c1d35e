/**
 * Attention sinks, with the stories model and with a model built to need them
 * (`bench/sink_model.ts`):
 *
 *   npx bun bench/attention.ts [--tokens 2048]
 *
 * 1. Attention mass on the first tokens: for every layer and head, the mean fraction of each
 *    query's attention probability that lands on cache slots 0 to 3, from the float64
 *    reference (`ReferenceModel.attentionObserver`). Under `dense` over the first 512 tokens
 *    (queries at positions 4 and later), and under `sink 4+252` and `window 256` over 1,024
 *    tokens (queries once the cache is full).
 * 2. Perplexity of both models under the four policies, from `sinkstream eval --ids --json`
 *    run on their GGUF files, in blocks of 256 positions.
 *
 * The stream is the corpus of `bench/paper_corpus.ts` without the BOS tokens that start each
 * story (the stream's first token stays BOS), so BOS appears once, at position 0. The sink
 * model and the stream's ids are written to the paper cache directory, not to the repository. Results go to
 * `docs/paper/data/attention.json`, the plots to `docs/paper/attention_*.svg`, and the tables
 * of `docs/paper.md` to standard output.
 */

import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { writeLlamaGgufFile } from "../core/gguf_writer.ts";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { ReferenceModel } from "../core/reference.ts";
import type { LlamaWeights } from "../core/types.ts";
import { loadOrGenerateCorpus, PAPER_CACHE_DIR } from "./paper_corpus.ts";
import { buildSinkModel } from "./sink_model.ts";
import { lineChart } from "./svg_chart.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const STORIES = new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname;
const DATA_DIR = join(ROOT, "docs/paper/data");
const PLOT_DIR = join(ROOT, "docs/paper");
/** Cache slots whose attention mass is measured: the 4 sinks of the `sink` runs. */
const FIRST_SLOTS = 4;
const SINKS = 4;
const WINDOW = 256;
/** Tokens of the `dense` attention run, the stories model's training length. */
const DENSE_TOKENS = 512;
/** Tokens of the `sink` and `window` attention runs. */
const STREAM_ATTENTION_TOKENS = 1024;
/** Positions per perplexity block. */
const BLOCK_TOKENS = 256;
/** Tokens per forward pass of the `recompute` runs, see `sinkstream eval --chunk`. */
const RECOMPUTE_CHUNK = 32;

/** Mean attention mass on the first slots, `[layer][head]`, and the number of queries averaged. */
interface MassTable {
  mass: number[][];
  queries: number;
}

/**
 * Run `feed` with an observer on `model` that sums, for queries that see more than
 * {@link FIRST_SLOTS} slots and for which `counting()` is true, the probability on slots
 * 0 to 3. Returns the mean per layer and head.
 */
function measureMass(model: ReferenceModel, counting: () => boolean, feed: () => void): MassTable {
  const { nLayers, nHeads } = model.config;
  const sums = Array.from({ length: nLayers }, () => new Array<number>(nHeads).fill(0));
  let observed = 0;
  model.attentionObserver = (layer, head, probabilities) => {
    if (probabilities.length <= FIRST_SLOTS || !counting()) return;
    let mass = 0;
    for (let slot = 0; slot < FIRST_SLOTS; slot++) mass += probabilities[slot];
    sums[layer][head] += mass;
    if (layer === 0 && head === 0) observed++;
  };
  try {
    feed();
  } finally {
    model.attentionObserver = undefined;
  }
  return { mass: sums.map((heads) => heads.map((sum) => sum / observed)), queries: observed };
}

/** Attention mass under `dense`, `sink 4+252` and `window 256`. */
function attentionMass(weights: LlamaWeights, stream: readonly number[]): Record<string, MassTable> {
  const model = new ReferenceModel(weights);
  const dense = measureMass(model, () => true, () => model.forward(stream.slice(0, DENSE_TOKENS)));
  const bounded = (sinks: number): MassTable => {
    const cache = model.createStream({ sinks, window: WINDOW - sinks });
    let step = 0;
    return measureMass(model, () => step >= WINDOW, () => {
      for (; step < STREAM_ATTENTION_TOKENS; step++) cache.step(stream[step]);
    });
  };
  return { dense, [`sink ${SINKS}+${WINDOW - SINKS}`]: bounded(SINKS), [`window ${WINDOW}`]: bounded(0) };
}

/** One `sinkstream eval` run: its command line and the perplexity of each block of positions. */
interface EvalRun {
  label: string;
  command: string;
  perplexity: number;
  /** `[first position of the block, perplexity]`. */
  blocks: [number, number][];
}

/** Run `sinkstream eval --ids --json` on `ids` and return its perplexity per block. */
function runEvalCommand(modelPath: string, label: string, args: string[], ids: readonly number[]): EvalRun {
  const argv = ["cli/main.ts", "eval", "-m", modelPath, "--ids", "--json", "--offline", "-q", ...args];
  const result = spawnSync(join(ROOT, "node_modules/.bin/bun"), argv, {
    cwd: ROOT,
    input: ids.join(" "),
    maxBuffer: 1 << 28,
    encoding: "utf8",
  });
  if (result.status !== 0) {
    throw new Error(`Failed to run sinkstream eval ${args.join(" ")}: exit status ${result.status}, stderr: ${result.stderr}`);
  }
  const sums = new Map<number, [number, number]>();
  let perplexity = NaN;
  for (const line of result.stdout.trim().split("\n")) {
    const record = JSON.parse(line);
    if (typeof record.nll !== "number") {
      perplexity = record.perplexity;
      continue;
    }
    const block = Math.floor(record.i / BLOCK_TOKENS) * BLOCK_TOKENS;
    const [sum, count] = sums.get(block) ?? [0, 0];
    sums.set(block, [sum + record.nll, count + 1]);
  }
  const blocks = [...sums].sort(([a], [b]) => a - b).map(([block, [sum, count]]): [number, number] => [block, Math.exp(sum / count)]);
  const shownArgs = args.join(" ");
  return { label, command: `sinkstream eval -m MODEL --ids --json ${shownArgs}`, perplexity, blocks };
}

function evalRuns(modelPath: string, ids: readonly number[]): EvalRun[] {
  return [
    runEvalCommand(modelPath, "dense", ["--policy", "dense", "--max-positions", String(ids.length)], ids),
    runEvalCommand(modelPath, `window ${WINDOW}`, ["--policy", "window", "--window", String(WINDOW)], ids),
    runEvalCommand(modelPath, `recompute ${WINDOW} (chunk ${RECOMPUTE_CHUNK})`, [
      "--policy",
      "recompute",
      "--window",
      String(WINDOW),
      "--chunk",
      String(RECOMPUTE_CHUNK),
    ], ids),
    runEvalCommand(modelPath, `sink ${SINKS}+${WINDOW - SINKS}`, [
      "--policy",
      "sink",
      "--sinks",
      String(SINKS),
      "--window",
      String(WINDOW - SINKS),
    ], ids),
  ];
}

function format(value: number, digits = 3): string {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function layerMeans(table: MassTable): number[] {
  return table.mass.map((heads) => heads.reduce((a, b) => a + b, 0) / heads.length);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { tokens: { type: "string", default: "2048" } } });
  const tokens = Number(values.tokens);
  if (!Number.isInteger(tokens) || tokens < STREAM_ATTENTION_TOKENS) {
    throw new RangeError(`Invalid --tokens: current value is ${values.tokens}; use a whole number of at least ${STREAM_ATTENTION_TOKENS}`);
  }

  const corpus = await loadOrGenerateCorpus(STORIES, 100_000);
  const bos = corpus[0];
  const withoutBos = Array.from(corpus).filter((id, i) => i === 0 || id !== bos);
  const stream = withoutBos.slice(0, tokens);
  // Calibrate on text after the stream, so the measured runs do not score the text the model was tuned on.
  const calibrationIds = [bos, ...withoutBos.slice(tokens, tokens + DENSE_TOKENS / 2 - 1)];

  const stories = await loadLlamaGguf(STORIES);
  const built = buildSinkModel(stories.weights, { bosId: bos, calibrationIds });
  mkdirSync(PAPER_CACHE_DIR, { recursive: true });
  const sinkModelPath = join(PAPER_CACHE_DIR, "stories260K-sink.gguf");
  await writeLlamaGgufFile(sinkModelPath, built.weights, stories.tokenizer.data, { name: "stories260K with a BOS attention sink" });
  const streamPath = join(PAPER_CACHE_DIR, `attention-stream-${tokens}.ids`);
  writeFileSync(streamPath, stream.join(" ") + "\n");
  console.error(`wrote ${streamPath}`);
  console.error(`wrote ${sinkModelPath}: coordinate ${built.report.coordinate}, dormant KV heads ${built.report.dormantKvHeads.join(",")}`);

  const models = [
    { name: "stories", path: STORIES, weights: stories.weights },
    { name: "sink model", path: sinkModelPath, weights: built.weights },
  ];
  const results = models.map((model) => {
    console.error(`${model.name}: attention mass`);
    const mass = attentionMass(model.weights, stream);
    console.error(`${model.name}: sinkstream eval, ${tokens} tokens`);
    const runs = evalRuns(model.path, stream);
    return { name: model.name, mass, runs };
  });

  mkdirSync(DATA_DIR, { recursive: true });
  writeFileSync(
    join(DATA_DIR, "attention.json"),
    JSON.stringify({ tokens, sinkModel: built.report, results }, null, 1) + "\n",
  );

  const layers = stories.weights.config.nLayers;
  writeFileSync(
    join(PLOT_DIR, "attention_mass_by_layer.svg"),
    lineChart({
      title: "Attention probability on cache slots 0-3, mean over heads and queries",
      xLabel: "layer",
      yLabel: "fraction of attention",
      yRange: [0, 1],
      series: results.flatMap((result) =>
        Object.entries(result.mass).map(([policy, table]) => ({
          label: `${result.name}, ${policy}`,
          points: layerMeans(table).map((mass, layer): [number, number] => [layer, mass]),
        }))
      ),
    }),
  );
  writeFileSync(
    join(PLOT_DIR, "attention_sink_model_ppl.svg"),
    lineChart({
      title: "Perplexity against position, model built to need a sink",
      xLabel: "position (start of a 256-token block)",
      yLabel: "perplexity",
      yLog: true,
      series: [
        ...results[1].runs.map((run) => ({ label: `sink model, ${run.label}`, points: run.blocks })),
        { label: `stories, sink ${SINKS}+${WINDOW - SINKS}`, points: results[0].runs[3].blocks },
      ],
    }),
  );

  // Tables for docs/paper.md.
  const lines: string[] = [];
  lines.push("| model | policy | queries | " + Array.from({ length: layers }, (_, l) => `layer ${l}`).join(" | ") + " |");
  lines.push("|---|---|---:|" + "---:|".repeat(layers));
  for (const result of results) {
    for (const [policy, table] of Object.entries(result.mass)) {
      lines.push(`| ${result.name} | ${policy} | ${table.queries} | ${layerMeans(table).map((v) => format(v)).join(" | ")} |`);
    }
  }
  lines.push("");
  const heads = stories.weights.config.nHeads;
  lines.push("| model, dense | " + Array.from({ length: heads }, (_, h) => `head ${h}`).join(" | ") + " |");
  lines.push("|---|" + "---:|".repeat(heads));
  for (const result of results) {
    result.mass.dense.mass.forEach((row, layer) => lines.push(`| ${result.name}, layer ${layer} | ${row.map((v) => format(v)).join(" | ")} |`));
  }
  lines.push("");
  const blockStarts = results[0].runs[0].blocks.map(([start]) => start);
  lines.push("| model | run | " + blockStarts.map((s) => `${s}–${s + BLOCK_TOKENS}`).join(" | ") + " | whole run |");
  lines.push("|---|---|" + "---:|".repeat(blockStarts.length + 1));
  for (const result of results) {
    for (const run of result.runs) {
      const byStart = new Map(run.blocks);
      lines.push(`| ${result.name} | ${run.label} | ${blockStarts.map((s) => format(byStart.get(s) ?? NaN)).join(" | ")} | ${format(run.perplexity)} |`);
    }
  }
  console.log(lines.join("\n"));
}

await main();
