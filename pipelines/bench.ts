/**
 * Speed measurements of sinkstream on one model and one backend: prefill and decode
 * throughput, per-token latency far into a stream, memory, start-up time and where a decode
 * step spends its time. `sinkstream bench` prints them, and `bench/compare.ts` puts them next
 * to llama.cpp's.
 *
 * Token ids come from a fixed pseudo-random sequence over the vocabulary, so every run and
 * every engine gets the same input. Random ids cost the same to compute as text.
 */

import process from "node:process";
import { KvKernel } from "../core/kv_kernel.ts";
import type { LoadedModel } from "../core/model.ts";
import type { DecoderRuntime, LayerKv } from "../core/runtime.ts";
import { Sampler } from "../core/sampler.ts";
import { kernelPositions, StreamingSession } from "../core/session.ts";

/** Options of {@linkcode runBench}. */
export interface BenchOptions {
  sinks: number;
  window: number;
  /** Chunk sizes whose prefill throughput is measured. */
  chunkSizes: number[];
  /** Tokens timed per chunk size, after the cache is full. */
  ingestTokens: number;
  /** Tokens generated for the decode throughput. */
  decodeTokens: number;
  /** Stream positions at which single-token latency is measured, ascending. */
  positions: number[];
  /** Single-token steps timed at each position. */
  latencySteps: number;
  /** Recompute steps timed (each one a prefill of the whole cache); 0 skips the baseline. */
  recomputeSteps: number;
  /** Seed of the token sequence. */
  seed: number;
}

/** Latency of single-token steps at one stream position, in milliseconds. */
export interface PositionLatency {
  position: number;
  p50_ms: number;
  p99_ms: number;
  /** Current resident set size after the steps, in bytes. */
  rss_bytes: number;
}

/** Results of {@linkcode runBench}; field names are the JSON keys. */
export interface BenchResult {
  engine: "sinkstream";
  backend: string;
  threads: number;
  model: string;
  vocab_size: number;
  sinks: number;
  window: number;
  /** Milliseconds from process start until the model and cache were ready. */
  load_ms: number;
  /** Milliseconds from process start to the first generated token of a 16-token prompt. */
  first_token_ms: number;
  /** Prefill throughput per chunk size, at a full cache (every chunk evicts), tokens/s. */
  ingest_tok_s: Record<string, number>;
  /** Greedy decode throughput at a full cache, tokens/s. */
  decode_tok_s: number;
  latency: PositionLatency[];
  /**
   * Bytes of K/V copied between the kernel and the runtime per decode step: the kernel's own
   * preparation of the past, the past again where the runtime copies its inputs, and the new
   * entries copied back.
   */
  handoff_bytes_per_token: number;
  /** Milliseconds per decode step by stage, from the single-token steps. */
  step_ms: { prepare_past: number; runtime_call: number; append_present: number; sampling: number; tokenize: number };
  /** Milliseconds of one recompute step: a fresh prefill of the `sinks + window` tokens before the next one. */
  recompute_step_ms?: number;
  peak_rss_bytes: number;
}

/** Deterministic token ids in `1..vocab-1`, from a 32-bit linear congruential generator. */
export function benchTokens(count: number, vocab: number, seed: number): Int32Array {
  const ids = new Int32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    ids[i] = 1 + (state % (vocab - 1));
  }
  return ids;
}

/** Return the value at quantile `q` (0..1) of `values`, by the nearest-rank method. */
export function quantile(values: number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

/** Return the median of `values`. */
export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * Measure a loaded model. `readRss` returns the peak resident set size in bytes (or the
 * current one where the platform reports no peak). Start-up figures are `performance.now()` values, so they count from
 * process start.
 */
export async function runBench(
  model: LoadedModel,
  options: BenchOptions,
  readRss: () => number,
): Promise<BenchResult> {
  const { runtime, config } = model;
  const { sinks, window } = options;
  const capacity = sinks + window;
  const kernel = await createKernel(model, sinks, window);
  try {
    const loadMs = performance.now();

    // Start-up: a short prompt, then the first generated token.
    const firstToken = await measureFirstToken(runtime, kernel, options);
    kernel.dispose();

    // Prefill throughput per chunk size, each on a cache that is already full.
    const ingest: Record<string, number> = {};
    for (const chunkSize of options.chunkSizes) {
      ingest[String(chunkSize)] = round(await measureIngest(model, options, chunkSize));
    }

    // Decode throughput and per-token latency share one cache that walks down the stream.
    const streamKernel = await createKernel(model, sinks, window);
    try {
      const fast = new StreamingSession(runtime, streamKernel, { sinks, window, chunkSize: window });
      const single = new StreamingSession(runtime, streamKernel, { sinks, window, chunkSize: 1 });
      const tokens = benchTokens(capacity, config.vocabSize, options.seed + 2);
      await fast.ingest(tokens);
      const decodeTokS = await measureDecode(single, options);

      const latency: PositionLatency[] = [];
      let position = fast.stats.tokensIngested;
      for (const target of options.positions) {
        position = await fastForward(fast, position, target, options.seed + 3);
        const times = await timeSingleSteps(single, options.latencySteps, options.seed + 4);
        position += options.latencySteps;
        latency.push({
          position: target,
          p50_ms: round(quantile(times, 0.5)),
          p99_ms: round(quantile(times, 0.99)),
          rss_bytes: process.memoryUsage().rss,
        });
      }

      const timing = single.timing;
      const steps = timing.forwards;
      const stepMs = {
        prepare_past: round((timing.prepareSeconds * 1000) / steps),
        runtime_call: round((timing.runSeconds * 1000) / steps),
        append_present: round((timing.appendSeconds * 1000) / steps),
        sampling: round(measureSampling(config.vocabSize)),
        tokenize: round(measureTokenize(model)),
      };
      const result: BenchResult = {
        engine: "sinkstream",
        backend: runtime.backend,
        threads: 0,
        model: model.path,
        vocab_size: config.vocabSize,
        sinks,
        window,
        load_ms: round(loadMs),
        first_token_ms: round(firstToken),
        ingest_tok_s: ingest,
        decode_tok_s: round(decodeTokS),
        latency,
        handoff_bytes_per_token: Math.round(timing.handoffBytes / steps),
        step_ms: stepMs,
        peak_rss_bytes: 0,
      };
      if (options.recomputeSteps > 0) {
        result.recompute_step_ms = round(await measureRecompute(runtime, capacity, options));
      }
      result.peak_rss_bytes = readRss();
      return result;
    } finally {
      streamKernel.dispose();
    }
  } finally {
    kernel.dispose();
  }
}

async function createKernel(model: LoadedModel, sinks: number, window: number): Promise<KvKernel> {
  const { config } = model;
  return await KvKernel.create({
    layers: config.nLayers,
    kvHeads: config.nKvHeads,
    headDim: config.headDim,
    sinks,
    window,
    rope: config.rope,
    maxPositions: kernelPositions(model.runtime, sinks + window),
  });
}

/** Milliseconds from process start to the first token generated after a 16-token prompt. */
async function measureFirstToken(runtime: DecoderRuntime, kernel: KvKernel, options: BenchOptions): Promise<number> {
  const session = new StreamingSession(runtime, kernel, { sinks: options.sinks, window: options.window, chunkSize: 32 });
  const prompt = Array.from(benchTokens(16, runtime.config.vocabSize, options.seed));
  let first = Number.NaN;
  await session.generate(prompt, {
    maxTokens: 1,
    onToken: () => {
      first = performance.now();
    },
  });
  return first;
}

/** Prefill tokens/s with chunks of `chunkSize`, timed after the cache is full. */
async function measureIngest(model: LoadedModel, options: BenchOptions, chunkSize: number): Promise<number> {
  const { sinks, window } = options;
  const kernel = await createKernel(model, sinks, window);
  try {
    const fill = new StreamingSession(model.runtime, kernel, { sinks, window, chunkSize: window });
    await fill.ingest(benchTokens(sinks + window, model.config.vocabSize, options.seed + 1));
    const session = new StreamingSession(model.runtime, kernel, { sinks, window, chunkSize: Math.min(chunkSize, window) });
    // Time whole chunks only, at least one.
    const count = Math.max(chunkSize, Math.floor(options.ingestTokens / chunkSize) * chunkSize);
    const tokens = benchTokens(count, model.config.vocabSize, options.seed + 5);
    const started = performance.now();
    await session.ingest(tokens);
    return count / ((performance.now() - started) / 1000);
  } finally {
    kernel.dispose();
  }
}

/** Greedy decode tokens/s, from the first generated token to the last. */
async function measureDecode(session: StreamingSession, options: BenchOptions): Promise<number> {
  const stamps: number[] = [];
  const prompt = Array.from(benchTokens(8, session.runtime.config.vocabSize, options.seed + 6));
  await session.generate(prompt, {
    maxTokens: options.decodeTokens,
    sampler: new Sampler(),
    onToken: () => {
      stamps.push(performance.now());
    },
  });
  if (stamps.length < 2) return Number.NaN;
  return (stamps.length - 1) / ((stamps[stamps.length - 1] - stamps[0]) / 1000);
}

/** Ingest in whole-window chunks from `position` up to `target`; returns the new position. */
async function fastForward(session: StreamingSession, position: number, target: number, seed: number): Promise<number> {
  const block = 65536;
  let current = position;
  while (current < target) {
    const count = Math.min(block, target - current);
    await session.ingest(benchTokens(count, session.runtime.config.vocabSize, seed + current));
    current += count;
  }
  return current;
}

/** Milliseconds of each of `steps` single-token ingest steps. */
async function timeSingleSteps(session: StreamingSession, steps: number, seed: number): Promise<number[]> {
  const tokens = benchTokens(steps, session.runtime.config.vocabSize, seed);
  const token = [0];
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    token[0] = tokens[i];
    const started = performance.now();
    await session.ingest(token);
    times.push(performance.now() - started);
  }
  return times;
}

/** Milliseconds of one greedy sample over a vocabulary-sized logits row. */
function measureSampling(vocab: number): number {
  const logits = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) logits[i] = Math.sin(i * 12.9898) * 10;
  const sampler = new Sampler();
  const rounds = 200;
  const started = performance.now();
  for (let i = 0; i < rounds; i++) {
    logits[i % vocab] += 0.001;
    sampler.sample(logits);
  }
  return (performance.now() - started) / rounds;
}

/** Milliseconds of tokenization per token, over a typical log line. */
function measureTokenize(model: LoadedModel): number {
  const line = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block " +
    "blk_38865049064139660 terminating, received 67108864 bytes from /10.250.19.102:54106";
  const rounds = 50;
  let tokens = 0;
  const started = performance.now();
  for (let i = 0; i < rounds; i++) tokens += model.tokenizer.encode(line, { addBos: false }).length;
  return (performance.now() - started) / Math.max(1, tokens);
}

/**
 * Milliseconds of one recompute step. The recompute baseline of the StreamingLLM paper
 * (Xiao et al., 2023, "Efficient Streaming Language Models with Attention Sinks") re-runs the
 * last `capacity` tokens from an empty cache for every new token. Only the last logits row is kept.
 */
async function measureRecompute(runtime: DecoderRuntime, capacity: number, options: BenchOptions): Promise<number> {
  const empty: LayerKv[] = Array.from({ length: runtime.config.nLayers }, () => ({
    key: new Float32Array(0),
    value: new Float32Array(0),
  }));
  const ids = benchTokens(capacity, runtime.config.vocabSize, options.seed + 7);
  const positions = Array.from({ length: capacity }, (_, i) => i);
  const times: number[] = [];
  for (let step = 0; step < options.recomputeSteps; step++) {
    const started = performance.now();
    await runtime.run({ inputIds: ids, positionIds: positions, past: empty, pastLength: 0, logitsToKeep: 1 });
    times.push(performance.now() - started);
  }
  return median(times);
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}
