/**
 * Checks the speed paths against the plain ones: the native backend against the WebAssembly
 * backend, logits of only the last rows against all rows, and the benchmark's helpers.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { KvKernel } from "../core/kv_kernel.ts";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { DecoderRuntime } from "../core/runtime.ts";
import { kernelPositions, StreamingSession } from "../core/session.ts";
import type { LlamaWeights } from "../core/types.ts";
import { parseNumberList } from "../cli/commands/bench.ts";
import { benchTokens, median, quantile } from "../pipelines/bench.ts";
import { STORIES_V1 } from "./support/stories.ts";
import { maxAbsDifference } from "./support/numeric.ts";
import { emptyPast, nativeInstalled } from "./support/runtime.ts";

const TEST_TIMEOUT_MS = 60_000;
/** Largest difference allowed between two ONNX Runtime builds' logits (float32 kernels differ in summation order). */
const BACKEND_TOLERANCE = 1e-3;

let weights: LlamaWeights;
let wasm: DecoderRuntime;

beforeAll(async () => {
  weights = (await loadLlamaGguf(STORIES_V1)).weights;
  wasm = await DecoderRuntime.create(weights, { maxPositions: 64 });
}, TEST_TIMEOUT_MS);

afterAll(async () => {
  await wasm?.dispose();
});


/** Create a KV kernel shaped for the stories model with the given cache sizes. */
function storiesKernel(sinks: number, window: number, maxPositions?: number): Promise<KvKernel> {
  const { config } = weights;
  return KvKernel.create({
    layers: config.nLayers,
    kvHeads: config.nKvHeads,
    headDim: config.headDim,
    sinks,
    window,
    rope: config.rope,
    maxPositions,
  });
}
describe("logitsToKeep", () => {
  const ids = [1, 403, 407, 261, 378, 429];
  const positions = ids.map((_, i) => i);

  test("last row equals full run's last row", async () => {
    const vocab = weights.config.vocabSize;
    const full = await wasm.run({ inputIds: ids, positionIds: positions, past: emptyPast(5), pastLength: 0 });
    const last = await wasm.run({ inputIds: ids, positionIds: positions, past: emptyPast(5), pastLength: 0, logitsToKeep: 1 });
    expect(full.logits.length).toBe(ids.length * vocab);
    expect(last.logits.length).toBe(vocab);
    expect(maxAbsDifference(last.logits, full.logits.subarray((ids.length - 1) * vocab))).toBeLessThan(1e-5);
    // The present is the same whatever rows get logits.
    expect(maxAbsDifference(last.present[4].key, full.present[4].key)).toBe(0);
  }, TEST_TIMEOUT_MS);

  test("two rows are the last two", async () => {
    const vocab = weights.config.vocabSize;
    const full = await wasm.run({ inputIds: ids, positionIds: positions, past: emptyPast(5), pastLength: 0 });
    const two = await wasm.run({ inputIds: ids, positionIds: positions, past: emptyPast(5), pastLength: 0, logitsToKeep: 2 });
    expect(two.logits.length).toBe(2 * vocab);
    expect(maxAbsDifference(two.logits, full.logits.subarray((ids.length - 2) * vocab))).toBeLessThan(1e-5);
  }, TEST_TIMEOUT_MS);

  test("out-of-range values are rejected", async () => {
    for (const logitsToKeep of [0, 7, 1.5]) {
      const run = wasm.run({ inputIds: ids, positionIds: positions, past: emptyPast(5), pastLength: 0, logitsToKeep });
      await expect(run).rejects.toThrow(
        `Invalid logitsToKeep: current value is ${logitsToKeep}; expected a whole number from 1 to the input length (6)`,
      );
    }
  }, TEST_TIMEOUT_MS);

  test("ingest without callback keeps the same cache", async () => {
    // A session that reads every row and one that reads none must continue identically.
    const tokens = Array.from(benchTokens(40, weights.config.vocabSize, 7));
    const results: Float32Array[] = [];
    for (const withCallback of [true, false]) {
      const kernel = await storiesKernel(2, 14);
      try {
        const session = new StreamingSession(wasm, kernel, { sinks: 2, window: 14, chunkSize: 8 });
        await session.ingest(tokens, withCallback ? () => {} : undefined);
        let last = new Float32Array(0);
        await session.ingest([5], (_, logits) => {
          last = Float32Array.from(logits);
        });
        expect(session.timing.forwards).toBe(6);
        results.push(last);
      } finally {
        kernel.dispose();
      }
    }
    expect(results[0].length).toBe(weights.config.vocabSize);
    expect(maxAbsDifference(results[0], results[1])).toBeLessThan(1e-5);
  }, TEST_TIMEOUT_MS);
});

describe("presentNewOnly", () => {
  test("present is the new entries", async () => {
    const own = await DecoderRuntime.create(weights, { maxPositions: 64, presentNewOnly: true });
    try {
      const ids = [1, 403, 407, 261];
      const first = await wasm.run({ inputIds: ids, positionIds: [0, 1, 2, 3], past: emptyPast(5), pastLength: 0 });
      const input = { inputIds: [378, 429], positionIds: [4, 5], past: first.present, pastLength: 4 };
      const full = await wasm.run(input);
      const newOnly = await own.run(input);
      expect(full.presentStart).toBe(4);
      expect(newOnly.presentStart).toBe(0);
      const { nKvHeads, headDim } = weights.config;
      for (let layer = 0; layer < 5; layer++) {
        expect(newOnly.present[layer].key.length).toBe(nKvHeads * 2 * headDim);
        for (let head = 0; head < nKvHeads; head++) {
          // Head h of the full present contains 6 entries, and its last 2 are the new ones.
          const tail = (data: Float32Array) => data.subarray((head * 6 + 4) * headDim, (head * 6 + 6) * headDim);
          const head2 = (data: Float32Array) => data.subarray(head * 2 * headDim, (head + 1) * 2 * headDim);
          expect(maxAbsDifference(head2(newOnly.present[layer].key), tail(full.present[layer].key))).toBe(0);
          expect(maxAbsDifference(head2(newOnly.present[layer].value), tail(full.present[layer].value))).toBe(0);
        }
      }
      expect(maxAbsDifference(newOnly.logits, full.logits)).toBe(0);
    } finally {
      await own.dispose();
    }
  }, TEST_TIMEOUT_MS);
});

describe.skipIf(!nativeInstalled())("native backend", () => {
  let native: DecoderRuntime;

  beforeAll(async () => {
    native = await DecoderRuntime.create(weights, { maxPositions: 64, backend: "native", numThreads: 2 });
  }, TEST_TIMEOUT_MS);

  afterAll(async () => {
    await native?.dispose();
  });

  test("reports its backend", () => {
    expect(native.backend).toBe("native");
    expect(wasm.backend).toBe("wasm");
  });

  test("prefill matches wasm", async () => {
    const ids = [1, 403, 407, 261, 378, 429, 9, 300];
    const input = { inputIds: ids, positionIds: ids.map((_, i) => i), past: emptyPast(5), pastLength: 0 };
    const a = await wasm.run(input);
    const b = await native.run(input);
    expect(b.logits.length).toBe(a.logits.length);
    expect(maxAbsDifference(a.logits, b.logits)).toBeLessThan(BACKEND_TOLERANCE);
    for (let layer = 0; layer < 5; layer++) {
      expect(maxAbsDifference(a.present[layer].key, b.present[layer].key)).toBeLessThan(BACKEND_TOLERANCE);
      expect(maxAbsDifference(a.present[layer].value, b.present[layer].value)).toBeLessThan(BACKEND_TOLERANCE);
    }
  }, TEST_TIMEOUT_MS);

  test("streaming with eviction matches wasm", async () => {
    // 60 tokens through a 2 + 14 cache evict many times and wrap the ring.
    const tokens = Array.from(benchTokens(60, weights.config.vocabSize, 3));
    const rows: Float32Array[][] = [];
    for (const runtime of [wasm, native]) {
      const kernel = await storiesKernel(2, 14);
      try {
        const session = new StreamingSession(runtime, kernel, { sinks: 2, window: 14, chunkSize: 4 });
        const collected: Float32Array[] = [];
        await session.ingest(tokens, (_, logits) => collected.push(Float32Array.from(logits)));
        expect(session.stats.evictions).toBe(60 - 16);
        const generated = await session.generate([1, 403], { maxTokens: 8 });
        collected.push(Float32Array.from(generated));
        rows.push(collected);
      } finally {
        kernel.dispose();
      }
    }
    expect(rows[1].length).toBe(rows[0].length);
    for (let i = 0; i < rows[0].length - 1; i++) {
      expect(maxAbsDifference(rows[0][i], rows[1][i])).toBeLessThan(BACKEND_TOLERANCE);
    }
    // Greedy ids from both backends.
    expect(Array.from(rows[1][rows[1].length - 1])).toEqual(Array.from(rows[0][rows[0].length - 1]));
  }, TEST_TIMEOUT_MS);
});

describe("steady decode steps", () => {
  const backends = nativeInstalled() ? (["wasm", "native"] as const) : (["wasm"] as const);

  for (const backend of backends) {
    test(`make no tensors or buffers after the first step (${backend})`, async () => {
      // The session's own setup: new entries only, 4 sinks and a 124 window, whose kernel hands
      // out positions beyond the capacity (up to 4x) and rebases them on the way.
      const { config } = weights;
      const runtime = await DecoderRuntime.create(weights, { backend, presentNewOnly: true });
      const sizes = { sinks: 4, window: 124, chunkSize: 32 };
      const capacity = sizes.sinks + sizes.window;
      const maxPositions = kernelPositions(runtime, capacity);
      expect(maxPositions).toBeGreaterThan(capacity);
      const kernel = await storiesKernel(sizes.sinks, sizes.window, maxPositions);
      try {
        const session = new StreamingSession(runtime, kernel, sizes);
        const stream = Array.from(benchTokens(1200, config.vocabSize, 11));
        await session.ingest(stream.slice(0, 300));
        const counts = () => ({ ...runtime.allocations });

        // Generation: counted from the second sampled token, which follows the first decode step.
        let afterFirstStep: ReturnType<typeof counts> | undefined;
        let sampled = 0;
        const generated = await session.generate([1, 403, 407], {
          maxTokens: 48,
          onToken: () => {
            if (++sampled === 2) afterFirstStep = counts();
          },
        });
        expect(generated.length).toBe(48);
        expect(afterFirstStep).toBeDefined();
        expect(counts()).toEqual(afterFirstStep!);

        // Single-token ingest across a rebase of the positions (every maxPositions - capacity tokens).
        await session.ingest(stream.slice(300, 301));
        const afterFirstToken = counts();
        const startTokens = session.stats.tokensIngested;
        for (let i = 301; i < 301 + 2 * (maxPositions - capacity); i++) await session.ingest(stream.slice(i, i + 1));
        expect(session.stats.tokensIngested - startTokens).toBe(2 * (maxPositions - capacity));
        expect(counts()).toEqual(afterFirstToken);
        expect(afterFirstToken.tensors).toBeGreaterThan(0);
      } finally {
        kernel.dispose();
        await runtime.dispose();
      }
    }, TEST_TIMEOUT_MS);
  }

  test.skipIf(!nativeInstalled())("ingest rows outlive the next pass (native)", async () => {
    // Scoring keeps the row before each token past the next pass. With chunk 1 every pass is a
    // decode step, so the session would otherwise reuse its outputs.
    const runtime = await DecoderRuntime.create(weights, { maxPositions: 64, backend: "native", presentNewOnly: true });
    const { config } = weights;
    const kernel = await storiesKernel(2, 14);
    try {
      const session = new StreamingSession(runtime, kernel, { sinks: 2, window: 14, chunkSize: 1 });
      const rows: Float32Array[] = [];
      const copies: Float32Array[] = [];
      await session.ingest(Array.from(benchTokens(20, config.vocabSize, 5)), (_, logits) => {
        rows.push(logits);
        copies.push(logits.slice());
      });
      expect(rows.length).toBe(20);
      for (let t = 0; t < rows.length; t++) expect(Array.from(rows[t])).toEqual(Array.from(copies[t]));
    } finally {
      kernel.dispose();
      await runtime.dispose();
    }
  }, TEST_TIMEOUT_MS);

  test.skipIf(!nativeInstalled())("outputs in reused buffers equal fresh ones (native)", async () => {
    const runtime = await DecoderRuntime.create(weights, { maxPositions: 64, backend: "native", presentNewOnly: true });
    try {
      const prefix = await runtime.run({ inputIds: [1, 403, 407, 261], positionIds: [0, 1, 2, 3], past: emptyPast(5), pastLength: 0 });
      // The prefix's present is new entries only, which here is the whole past.
      const past = prefix.present.map(({ key, value }) => ({ key: key.slice(), value: value.slice() }));
      const step = (token: number, reuseOutputs: boolean) =>
        runtime.run({ inputIds: [token], positionIds: [4], past, pastLength: 4, logitsToKeep: 1, reuseOutputs });
      const fresh = await step(378, false);
      const expected = { logits: fresh.logits.slice(), present: fresh.present.map(({ key, value }) => ({ key: key.slice(), value: value.slice() })) };
      const other = await step(9, true);
      const otherLogits = other.logits.slice();
      const reused = await step(378, true);
      // The last call writes the buffers of the call before it, and gets the fresh call's values.
      expect(reused.logits).toBe(other.logits);
      expect(reused.present[0].key).toBe(other.present[0].key);
      expect(maxAbsDifference(otherLogits, expected.logits)).toBeGreaterThan(0);
      expect(Array.from(reused.logits)).toEqual(Array.from(expected.logits));
      for (let layer = 0; layer < 5; layer++) {
        expect(Array.from(reused.present[layer].key)).toEqual(Array.from(expected.present[layer].key));
        expect(Array.from(reused.present[layer].value)).toEqual(Array.from(expected.present[layer].value));
      }
      expect(reused.presentStart).toBe(0);
    } finally {
      await runtime.dispose();
    }
  }, TEST_TIMEOUT_MS);
});

describe("bench helpers", () => {
  test("benchTokens is deterministic and in range", () => {
    const a = benchTokens(1000, 512, 5);
    const b = benchTokens(1000, 512, 5);
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Math.min(...a)).toBeGreaterThanOrEqual(1);
    expect(Math.max(...a)).toBeLessThanOrEqual(511);
    expect(new Set(a).size).toBeGreaterThan(300);
    expect(Array.from(benchTokens(10, 512, 6))).not.toEqual(Array.from(a.subarray(0, 10)));
  });

  test("quantile uses nearest rank", () => {
    const values = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1
    expect(quantile(values, 0.5)).toBe(50);
    expect(quantile(values, 0.99)).toBe(99);
    expect(quantile(values, 1)).toBe(100);
    expect(quantile([7], 0.99)).toBe(7);
    expect(quantile([], 0.5)).toBeNaN();
  });

  test("median of odd and even counts", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });

  test("parseNumberList rejects bad lists", () => {
    expect(parseNumberList("chunk sizes", "1,8, 32")).toEqual([1, 8, 32]);
    expect(() => parseNumberList("chunk sizes", "1,0")).toThrow(
      'Invalid chunk sizes: current value is "1,0"; use whole numbers ≥ 1 separated by commas',
    );
    expect(() => parseNumberList("positions", "2000,1000", true)).toThrow(
      'Invalid positions: current value is "2000,1000"; list the positions in ascending order',
    );
  });
});
