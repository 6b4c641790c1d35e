/**
 * Experiments of StreamingLLM (Xiao et al., "Efficient Streaming Language Models with
 * Attention Sinks", 2023) reproduced with the stories model. Each run writes one JSON file
 * under `docs/paper/data/`; `bench/paper_report.ts` turns them into the tables and SVG plots of
 * `docs/paper.md`.
 *
 *   npx bun bench/paper.ts ppl --policy sink --sinks 4 --window 252 --chunk 32 --tokens 1000000
 *   npx bun bench/paper.ts latency --caches 32,64,128,256,512,1024
 *
 * `ppl` scores the self-generated corpus of `bench/paper_corpus.ts`, repeated end to end when
 * the run is longer than the corpus, and records the mean NLL per block of positions, the time
 * per block, and the resident set size along the way. Each run is its own process, so its
 * peak RSS belongs to that policy alone.
 */

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadModel } from "../core/model.ts";
import { createPolicy, negativeLogLikelihood, POLICY_NAMES, type PolicyName, type PolicySizes, requiredPositions } from "../core/policies.ts";
import { runEval } from "../pipelines/eval.ts";
import { loadOrGenerateCorpus } from "./paper_corpus.ts";

declare const Bun: { gc(force: boolean): void };

const STORIES = new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname;
/** Directory of the run files, one JSON file per run. */
export const DATA_DIR = new URL("../docs/paper/data/", import.meta.url).pathname;
/** Tokens in the cached corpus; longer runs repeat it. */
const CORPUS_TOKENS = 100_000;
/** Positions per NLL block in the recorded curve. */
const BLOCK_TOKENS = 256;

/** Resident set size now and at its peak, in bytes, from `/proc/self/status` (Linux only). */
function residentSet(): { rss: number; peak: number } {
  const status = readFileSync("/proc/self/status", "utf8");
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) * 1024;
  return { rss: field("VmRSS"), peak: field("VmHWM") };
}

/** One sample taken along a `ppl` run. */
interface Checkpoint {
  /** Tokens scored so far. */
  tokens: number;
  /** Seconds since scoring started. */
  seconds: number;
  rssBytes: number;
  peakRssBytes: number;
}

/** Tokens per piece handed to `runEval`, which reports scores once per piece. */
const PIECE_TOKENS = 256;

/** Yield `total` tokens of `corpus`, repeated end to end, in pieces of {@link PIECE_TOKENS}. */
async function* repeated(corpus: Int32Array, total: number): AsyncGenerator<number[]> {
  for (let start = 0; start < total; start += PIECE_TOKENS) {
    const piece: number[] = [];
    for (let i = start; i < Math.min(start + PIECE_TOKENS, total); i++) piece.push(corpus[i % corpus.length]);
    yield piece;
  }
}

/**
 * Score `tokens` tokens of the corpus under `sizes` and write `ppl-{name}.json`. With
 * `dropBos`, the BOS tokens that start every story are removed (except the stream's first),
 * so the stories run on without a separator the model could use as an attention sink.
 */
async function runPerplexity(
  sizes: PolicySizes,
  tokens: number,
  name: string,
  dropBos: boolean,
  collectGarbage: boolean,
): Promise<void> {
  let corpus = await loadOrGenerateCorpus(STORIES, CORPUS_TOKENS);
  if (dropBos) corpus = corpus.filter((id, i) => i === 0 || id !== corpus[0]);
  const model = await loadModel(STORIES, { offline: true, maxPositions: requiredPositions(sizes) });
  const blockSums: number[] = [];
  const blockCounts: number[] = [];
  const checkpoints: Checkpoint[] = [];
  const checkpointEvery = Math.max(BLOCK_TOKENS, Math.floor(tokens / 200));
  let scored = 0;
  let nextCheckpoint = checkpointEvery;
  const before = residentSet();
  const started = performance.now();

  const summary = await runEval(model.runtime, sizes, repeated(corpus, tokens), {
    onScores: (scores) => {
      for (const { index, nll } of scores) {
        const block = Math.floor(index / BLOCK_TOKENS);
        blockSums[block] = (blockSums[block] ?? 0) + nll;
        blockCounts[block] = (blockCounts[block] ?? 0) + 1;
      }
      scored += scores.length;
      if (scored >= nextCheckpoint) {
        nextCheckpoint += checkpointEvery;
        // A full collection first makes the RSS sample show live memory rather than garbage
        // the collector has not reclaimed yet.
        if (collectGarbage) Bun.gc(true);
        const { rss, peak } = residentSet();
        checkpoints.push({ tokens: scored, seconds: (performance.now() - started) / 1000, rssBytes: rss, peakRssBytes: peak });
        process.stderr.write(`\r${name}: ${scored} tokens, ${(scored / checkpoints.at(-1)!.seconds).toFixed(0)} tok/s   `);
      }
    },
  });
  process.stderr.write("\n");
  await model.runtime.dispose();

  const result = {
    kind: "ppl",
    name,
    sizes,
    corpusTokens: corpus.length,
    dropBos,
    collectGarbage,
    blockTokens: BLOCK_TOKENS,
    blockMeanNll: blockSums.map((sum, block) => sum / blockCounts[block]),
    checkpoints,
    rssBeforeBytes: before.rss,
    summary,
    finalPeakRssBytes: residentSet().peak,
  };
  mkdirSync(DATA_DIR, { recursive: true });
  writeFileSync(`${DATA_DIR}ppl-${name}.json`, JSON.stringify(result) + "\n");
  console.error(
    `${name}: ${summary.scoredTokens} tokens, perplexity ${summary.perplexity.toFixed(4)}, ` +
      `${summary.tokensPerSecond.toFixed(0)} tok/s, peak RSS ${(result.finalPeakRssBytes / 2 ** 20).toFixed(1)} MiB`,
  );
}

/** Per-token latency of one policy with a full cache: milliseconds of each single-token push. */
async function measureLatency(
  runtime: Awaited<ReturnType<typeof loadModel>>["runtime"],
  sizes: PolicySizes,
  corpus: Int32Array,
  measured: number,
): Promise<number[]> {
  const policy = await createPolicy(runtime, sizes);
  const warmUp = requiredPositions(sizes) + 8;
  const times: number[] = [];
  try {
    const ignore = () => {};
    for (let i = 0; i < warmUp + measured; i++) {
      const started = performance.now();
      await policy.push([corpus[i]], ignore);
      if (i >= warmUp) times.push(performance.now() - started);
    }
  } finally {
    policy.dispose();
  }
  return times;
}

/**
 * Per-token latency of `recompute` with a full window: milliseconds of the step the policy
 * runs for each token once `window` tokens precede it, one prefill of those tokens from an
 * empty past plus the NLL of the target. Timing the policy itself would first need `window`
 * warm-up prefills of growing length, minutes for the largest windows.
 */
async function measureRecomputeLatency(
  runtime: Awaited<ReturnType<typeof loadModel>>["runtime"],
  window: number,
  corpus: Int32Array,
  measured: number,
): Promise<number[]> {
  const emptyPast = Array.from({ length: runtime.config.nLayers }, () => ({
    key: new Float32Array(0),
    value: new Float32Array(0),
  }));
  const positionIds = Array.from({ length: window }, (_, p) => p);
  const times: number[] = [];
  // One untimed step first, so ONNX Runtime has planned buffers for this shape.
  for (let i = 0; i <= measured; i++) {
    const context = Array.from(corpus.subarray(i, i + window));
    const started = performance.now();
    const { logits } = await runtime.run({ inputIds: context, positionIds, past: emptyPast, pastLength: 0 });
    const vocab = logits.length / window;
    negativeLogLikelihood(logits.subarray((window - 1) * vocab), corpus[i + window]);
    if (i > 0) times.push(performance.now() - started);
  }
  return times;
}

async function runLatency(caches: number[], measured: number): Promise<void> {
  const corpus = await loadOrGenerateCorpus(STORIES, CORPUS_TOKENS);
  const model = await loadModel(STORIES, { offline: true, maxPositions: Math.max(...caches) });
  const rows = [];
  for (const cache of caches) {
    const sink = await measureLatency(
      model.runtime,
      { policy: "sink", sinks: 4, window: cache - 4, chunkSize: 1, maxPositions: 0 },
      corpus,
      measured,
    );
    // Recompute costs a prefill of the whole cache per token, so fewer tokens give a stable mean.
    const recompute = await measureRecomputeLatency(model.runtime, cache, corpus, Math.max(10, Math.floor(measured / 4)));
    const row = { cache, sinkMs: describeTimes(sink), recomputeMs: describeTimes(recompute) };
    rows.push(row);
    console.error(
      `cache ${cache}: sink ${row.sinkMs.median.toFixed(2)} ms/token, recompute ${row.recomputeMs.median.toFixed(2)} ms/token`,
    );
  }
  await model.runtime.dispose();
  mkdirSync(DATA_DIR, { recursive: true });
  writeFileSync(`${DATA_DIR}latency.json`, JSON.stringify({ kind: "latency", measured, rows }) + "\n");
}

/** Cache size as written in run names and legends: `S+W` for sink, `all` for dense, else the window. */
export function cacheLabel(sizes: PolicySizes): string {
  if (sizes.policy === "sink") return `${sizes.sinks}+${sizes.window}`;
  if (sizes.policy === "dense") return "all";
  return String(sizes.window);
}

function describeTimes(times: number[]): { median: number; mean: number; count: number } {
  const sorted = [...times].sort((a, b) => a - b);
  return {
    median: sorted[Math.floor(sorted.length / 2)],
    mean: times.reduce((sum, t) => sum + t, 0) / times.length,
    count: times.length,
  };
}

if (import.meta.main) {
  const { positionals, values } = parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: {
      policy: { type: "string", default: "sink" },
      sinks: { type: "string", default: "4" },
      window: { type: "string", default: "252" },
      chunk: { type: "string", default: "1" },
      tokens: { type: "string", default: "10000" },
      "max-positions": { type: "string", default: "8192" },
      name: { type: "string" },
      "drop-bos": { type: "boolean", default: false },
      gc: { type: "boolean", default: false },
      caches: { type: "string", default: "32,64,128,256,512,1024" },
      measured: { type: "string", default: "200" },
    },
  });
  if (positionals[0] === "ppl") {
    const policy = values.policy as PolicyName;
    if (!POLICY_NAMES.includes(policy)) throw new RangeError(`Invalid --policy: current value is ${policy}; use one of ${POLICY_NAMES.join(", ")}`);
    const sizes: PolicySizes = {
      policy,
      sinks: policy === "sink" ? Number(values.sinks) : 0,
      window: Number(values.window),
      chunkSize: Number(values.chunk),
      maxPositions: Number(values["max-positions"]),
    };
    const dropBos = Boolean(values["drop-bos"]);
    const collectGarbage = Boolean(values.gc);
    const suffix = `${dropBos ? "-nobos" : ""}${collectGarbage ? "-gc" : ""}`;
    const name = values.name ?? `${policy}-${cacheLabel(sizes)}-chunk${sizes.chunkSize}${suffix}`;
    await runPerplexity(sizes, Number(values.tokens), name, dropBos, collectGarbage);
  } else if (positionals[0] === "latency") {
    await runLatency(values.caches!.split(",").map(Number), Number(values.measured));
  } else {
    throw new RangeError(`Invalid experiment: current value is ${positionals[0]}; use ppl or latency`);
  }
}
