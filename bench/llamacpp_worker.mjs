// The llama.cpp anchor of bench/compare.ts: the same measurements as pipelines/bench.ts, made
// with node-llama-cpp on the same GGUF file. It runs under Node, because node-llama-cpp is a
// Node addon, and prints one JSON object on standard output.
//
// Usage: node bench/llamacpp_worker.mjs PACKAGE_DIR CONFIG_JSON
//   PACKAGE_DIR  folder whose node_modules contains node-llama-cpp (see bench/compare.ts)
//   CONFIG_JSON  {model, vocabSize, version, threads, sinks, window, chunkSizes, ingestTokens,
//                 decodeTokens, positions, latencySteps, seed}
//
// The cache matches sinkstream's: a context of sinks + window tokens, and context shift on.
// When the context is full, the shift erases the oldest tokens after the first `sinks`, as
// llama.cpp's --keep does; node-llama-cpp's default shift size (a tenth of the context) is kept.

import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import process from "node:process";

const [packageDir, configText] = process.argv.slice(2);
const config = JSON.parse(configText);
const require = createRequire(`${packageDir}/package.json`);
const { getLlama } = await import(pathToFileURL(require.resolve("node-llama-cpp")).href);

/** Same generator as benchTokens in pipelines/bench.ts, so both engines see the same ids. */
function benchTokens(count, vocab, seed) {
  const ids = new Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    ids[i] = 1 + (state % (vocab - 1));
  }
  return ids;
}

function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

const round = (value) => Math.round(value * 100) / 100;
const capacity = config.sinks + config.window;
const batchSize = Math.min(512, capacity);

const llama = await getLlama({ gpu: false, build: "never", logLevel: "error", maxThreads: config.threads });
const model = await llama.loadModel({ modelPath: config.model, gpuLayers: 0 });
const vocabSize = config.vocabSize;

async function createSequence() {
  const context = await model.createContext({
    contextSize: capacity,
    batchSize,
    threads: { ideal: config.threads, min: config.threads },
    sequences: 1,
    flashAttention: false,
  });
  const sequence = context.getSequence({
    contextShift: { strategy: ({ size }) => [{ start: config.sinks, end: config.sinks + size }] },
  });
  return { context, sequence };
}

/** Feed `ids` in calls of at most `chunk` tokens, computing no logits. */
async function feed(sequence, ids, chunk) {
  for (let start = 0; start < ids.length; start += chunk) {
    await sequence.evaluateWithoutGeneratingNewTokens(ids.slice(start, start + chunk));
  }
}

const loadMs = performance.now();

// Start-up: a 16-token prompt, then the first generated token.
let firstTokenMs = Number.NaN;
{
  const { context, sequence } = await createSequence();
  for await (const _token of sequence.evaluate(benchTokens(16, vocabSize, config.seed), { temperature: 0 })) {
    firstTokenMs = performance.now();
    break;
  }
  await context.dispose();
}

// Prefill throughput per chunk size, each on a context that is already full.
const ingest = {};
for (const chunk of config.chunkSizes) {
  const { context, sequence } = await createSequence();
  await feed(sequence, benchTokens(capacity, vocabSize, config.seed + 1), batchSize);
  const size = Math.min(chunk, batchSize);
  const count = Math.max(size, Math.floor(config.ingestTokens / size) * size);
  const ids = benchTokens(count, vocabSize, config.seed + 5);
  const started = performance.now();
  await feed(sequence, ids, size);
  ingest[String(chunk)] = round(count / ((performance.now() - started) / 1000));
  await context.dispose();
}

// Decode throughput and per-token latency on one context that walks down the stream.
const { context, sequence } = await createSequence();
await feed(sequence, benchTokens(capacity, vocabSize, config.seed + 2), batchSize);
const stamps = [];
for await (const _token of sequence.evaluate(benchTokens(8, vocabSize, config.seed + 6), { temperature: 0 })) {
  stamps.push(performance.now());
  if (stamps.length >= config.decodeTokens) break;
}
const decodeTokS = (stamps.length - 1) / ((stamps[stamps.length - 1] - stamps[0]) / 1000);

const latency = [];
let position = capacity + stamps.length + 8;
for (const target of config.positions) {
  while (position < target) {
    const count = Math.min(65536, target - position);
    await feed(sequence, benchTokens(count, vocabSize, config.seed + 3 + position), batchSize);
    position += count;
  }
  const ids = benchTokens(config.latencySteps, vocabSize, config.seed + 4);
  const times = [];
  for (const id of ids) {
    const started = performance.now();
    await sequence.evaluateWithoutGeneratingNewTokens([id]);
    times.push(performance.now() - started);
  }
  position += ids.length;
  latency.push({
    position: target,
    p50_ms: round(quantile(times, 0.5)),
    p99_ms: round(quantile(times, 0.99)),
    rss_bytes: process.memoryUsage().rss,
  });
}
await context.dispose();

process.stdout.write(JSON.stringify({
  engine: "llama.cpp",
  backend: `node-llama-cpp ${config.version} (CPU)`,
  threads: config.threads,
  model: config.model,
  sinks: config.sinks,
  window: config.window,
  load_ms: round(loadMs),
  first_token_ms: round(firstTokenMs),
  ingest_tok_s: ingest,
  decode_tok_s: round(decodeTokS),
  latency,
  peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
}) + "\n");
await model.dispose();
await llama.dispose();
