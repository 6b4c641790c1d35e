/**
 * Tests of the wasm KV kernel against `RingModel`, a plain TypeScript model that rotates
 * unrotated f64 keys straight to their current positions. Requires `scripts/build-wasm.sh`.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { KvKernel, type KvKernelOptions } from "../core/kv_kernel.ts";
import { type RopeConfig, ropeInvFreq } from "../core/types.ts";
import { RingModel, rotate } from "./ring_model.ts";
import { mulberry32 } from "./support/numeric.ts";

/** Max absolute error of a handed-out key against the f64 model, for keys in [-1, 1). */
const KEY_TOLERANCE = 2e-6;

/** Time limit of the long-stream and property tests. */
const LONG_TEST_TIMEOUT_MS = 60_000;

/** Returns a whole number in `low..=high`. */
function randomInt(random: () => number, low: number, high: number): number {
  return low + Math.floor(random() * (high - low + 1));
}

function makeRope(dim: number, layout: RopeConfig["layout"], base = 10000): RopeConfig {
  return { dim, base, layout, invFreq: ropeInvFreq(dim, base) };
}

/** A kernel and the model of the same cache, fed the same stream. */
class Pair {
  readonly kernel: KvKernel;
  readonly options: KvKernelOptions;
  model: RingModel;
  #random: () => number;

  constructor(options: KvKernelOptions, seed: number) {
    this.options = options;
    this.kernel = new KvKernel(options);
    this.model = new RingModel(options);
    this.#random = mulberry32(seed);
  }

  /**
   * Feeds `count` random tokens to both. With `pastLength` > 0 the kernel copies them out of a
   * `present`-shaped tensor `[kvHeads, pastLength + count, headDim]` filled with noise before them.
   */
  push(count: number, pastLength = 0): void {
    const { layers, kvHeads, headDim } = this.options;
    const rawKeys: Float64Array[] = [];
    const values: Float64Array[] = [];
    for (let layer = 0; layer < layers; layer++) {
      rawKeys.push(Float64Array.from({ length: kvHeads * count * headDim }, () => this.#random() * 2 - 1));
      values.push(Float64Array.from({ length: kvHeads * count * headDim }, () => this.#random() * 2 - 1));
    }

    const evicted = this.kernel.evictFor(count);
    expect(evicted).toBe(this.model.evictFor(count));
    const emitted = this.model.push(count, rawKeys, values);

    for (let layer = 0; layer < layers; layer++) {
      const newValues = Float32Array.from(values[layer]);
      if (pastLength === 0) {
        this.kernel.append(layer, emitted[layer], newValues, count);
        continue;
      }
      const sequence = pastLength + count;
      const presentKey = new Float32Array(kvHeads * sequence * headDim).fill(99);
      const presentValue = new Float32Array(kvHeads * sequence * headDim).fill(-99);
      for (let head = 0; head < kvHeads; head++) {
        const run = count * headDim;
        const to = (head * sequence + pastLength) * headDim;
        presentKey.set(emitted[layer].subarray(head * run, (head + 1) * run), to);
        presentValue.set(newValues.subarray(head * run, (head + 1) * run), to);
      }
      if (layer % 2 === 0) {
        this.kernel.append(layer, presentKey, presentValue, count, pastLength);
      } else {
        this.kernel.appendPresent(layer, presentKey, presentValue, pastLength, count);
      }
    }
    this.kernel.commit(count);
  }

  /** Checks counters, entry positions and every layer's past keys and values. */
  check(): void {
    const { kernel, model } = this;
    expect(kernel.length).toBe(model.entries.length);
    expect(kernel.sinksFilled).toBe(model.sinksFilled);
    expect(kernel.windowLength).toBe(model.windowLength);
    expect(kernel.totalEvicted).toBe(model.totalEvicted);
    expect(kernel.totalCommitted).toBe(model.totalCommitted);
    expect(kernel.maxIncoming).toBe(model.maxIncoming);
    for (let i = 0; i < model.entries.length; i++) {
      expect(kernel.enteredAt(i)).toBe(model.entries[i].enteredAt);
    }

    kernel.preparePast();
    for (let layer = 0; layer < this.options.layers; layer++) {
      expectClose(kernel.pastKey(layer), model.pastKey(layer), KEY_TOLERANCE);
      expectClose(kernel.pastValue(layer), Float32Array.from(model.pastValue(layer)), 0);
    }
  }
}

/** Fails on the first element farther than `tolerance` from `expected`, naming its index. */
function expectClose(actual: Float32Array, expected: ArrayLike<number>, tolerance: number): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  let worstIndex = -1;
  for (let i = 0; i < actual.length; i++) {
    const error = Math.abs(actual[i] - expected[i]);
    if (!(error <= worst)) {
      worst = error;
      worstIndex = i;
    }
  }
  if (worst > tolerance) {
    throw new Error(
      `element ${worstIndex}: ${actual[worstIndex]} differs from ${
        expected[worstIndex]
      } by ${worst} (tolerance ${tolerance})`,
    );
  }
}

/** Returns the first element of each entry of head 0 in a past view. */
function firstElements(view: Float32Array, headDim: number, length: number): number[] {
  return Array.from({ length }, (_, i) => view[i * headDim]);
}

beforeAll(async () => {
  await KvKernel.load();
});

describe("KvKernel ring", () => {
  test("evictFor drops oldest window entries", () => {
    const options = { layers: 1, kvHeads: 1, headDim: 2, sinks: 2, window: 3, rope: makeRope(0, "adjacent") };
    const kernel = new KvKernel(options);
    try {
      const pushIds = (ids: number[]) => {
        const data = Float32Array.from(ids.flatMap((id) => [id, id]));
        const evicted = kernel.evictFor(ids.length);
        kernel.append(0, data, data, ids.length);
        kernel.commit(ids.length);
        return evicted;
      };
      expect(pushIds([0, 1, 2, 3])).toBe(0);
      expect(pushIds([4])).toBe(0);
      expect(pushIds([5, 6])).toBe(2);
      kernel.preparePast();
      expect(firstElements(kernel.pastKey(0), 2, kernel.length)).toEqual([0, 1, 4, 5, 6]);
      expect(firstElements(kernel.pastValue(0), 2, kernel.length)).toEqual([0, 1, 4, 5, 6]);
      expect(pushIds([7, 8, 9])).toBe(3);
      kernel.preparePast();
      expect(firstElements(kernel.pastKey(0), 2, kernel.length)).toEqual([0, 1, 7, 8, 9]);
      expect(kernel.totalEvicted).toBe(5);
    } finally {
      kernel.dispose();
    }
  });

  test("sinks kept across many wraps", () => {
    const pair = new Pair({ layers: 2, kvHeads: 2, headDim: 8, sinks: 4, window: 5, rope: makeRope(8, "adjacent") }, 1);
    try {
      for (let step = 0; step < 400; step++) {
        pair.push(1 + (step % 3));
        pair.check();
      }
      expect(pair.kernel.totalEvicted).toBeGreaterThan(100 * pair.options.window);
    } finally {
      pair.kernel.dispose();
    }
  });

  test("zero sinks keep only the window", () => {
    const pair = new Pair({ layers: 1, kvHeads: 3, headDim: 4, sinks: 0, window: 6, rope: makeRope(4, "halves") }, 2);
    try {
      for (const count of [6, 1, 5, 6, 2, 3]) {
        pair.push(count);
        pair.check();
      }
      expect(pair.kernel.sinksFilled).toBe(0);
      expect(pair.kernel.layers).toBe(1);
    } finally {
      pair.kernel.dispose();
    }
  });

  test("window of one keeps the newest", () => {
    const pair = new Pair({ layers: 2, kvHeads: 1, headDim: 6, sinks: 3, window: 1, rope: makeRope(6, "adjacent") }, 3);
    try {
      pair.push(4);
      pair.check();
      for (let step = 0; step < 50; step++) {
        pair.push(1);
        pair.check();
      }
      expect(pair.kernel.maxIncoming).toBe(1);
    } finally {
      pair.kernel.dispose();
    }
  });

  test("append from present tensor slice", () => {
    const pair = new Pair({ layers: 2, kvHeads: 2, headDim: 4, sinks: 1, window: 4, rope: makeRope(4, "halves") }, 4);
    try {
      pair.push(3, 5);
      pair.check();
      pair.push(2, 3);
      pair.check();
      pair.push(1, 4);
      pair.check();
    } finally {
      pair.kernel.dispose();
    }
  });

  test(
    "random streams match the model",
    () => {
      const random = mulberry32(20240601);
      for (let round = 0; round < 60; round++) {
        const headDim = 2 * randomInt(random, 1, 10);
        const ropeDim = 2 * randomInt(random, 0, headDim / 2);
        const layout = random() < 0.5 ? "adjacent" : "halves";
        const options = {
          layers: randomInt(random, 1, 3),
          kvHeads: randomInt(random, 1, 3),
          headDim,
          sinks: randomInt(random, 0, 4),
          window: randomInt(random, 1, 12),
          rope: makeRope(ropeDim, layout, random() < 0.5 ? 10000 : 10),
        };
        const pair = new Pair(options, round);
        try {
          for (let step = 0; step < 60; step++) {
            const count = randomInt(random, 0, Math.min(pair.kernel.maxIncoming, 1 + randomInt(random, 0, 5)));
            const pastLength = random() < 0.3 ? randomInt(random, 1, 7) : 0;
            pair.push(count, pastLength);
            pair.check();
          }
        } finally {
          pair.kernel.dispose();
        }
      }
    },
    LONG_TEST_TIMEOUT_MS,
  );

  test(
    "long stream has no drift",
    () => {
      // Base 10 makes every pair turn by at least 0.1 rad per position.
      const pair = new Pair({
        layers: 1,
        kvHeads: 2,
        headDim: 8,
        sinks: 2,
        window: 9,
        rope: makeRope(8, "adjacent", 10),
      }, 5);
      try {
        const random = mulberry32(77);
        let checks = 0;
        for (let step = 1; pair.kernel.totalCommitted < 100_000; step++) {
          pair.push(randomInt(random, 1, 4));
          // Every 13th step keeps the f64 model fast, and 13 is coprime to the window of 9, so
          // the checks still reach every ring offset.
          if (step % 13 === 0) {
            pair.check();
            checks++;
          }
        }
        pair.check();
        expect(checks).toBeGreaterThan(1_000);
      } finally {
        pair.kernel.dispose();
      }
    },
    LONG_TEST_TIMEOUT_MS,
  );
});

describe("KvKernel snapshot", () => {
  test("restore rolls back a question", () => {
    const pair = new Pair({ layers: 2, kvHeads: 2, headDim: 8, sinks: 2, window: 7, rope: makeRope(6, "halves") }, 6);
    try {
      for (const count of [3, 4, 2]) pair.push(count);
      pair.kernel.snapshot();
      const saved = pair.model.clone();

      // A question and its answer wrap the window and evict entries.
      for (const count of [5, 7, 1, 3]) pair.push(count);
      pair.check();

      pair.kernel.restore();
      pair.model = saved.clone();
      pair.check();

      // The stream goes on as if nothing was asked, and the snapshot stays usable.
      pair.push(4);
      pair.check();
      pair.kernel.restore();
      pair.model = saved.clone();
      pair.check();
    } finally {
      pair.kernel.dispose();
    }
  });

  test("restore drops pending appends", () => {
    const options = { layers: 2, kvHeads: 1, headDim: 2, sinks: 1, window: 2, rope: makeRope(2, "adjacent") };
    const kernel = new KvKernel(options);
    try {
      const one = new Float32Array([1, 2]);
      kernel.evictFor(1);
      kernel.append(0, one, one, 1);
      kernel.append(1, one, one, 1);
      kernel.commit(1);
      kernel.snapshot();
      kernel.evictFor(1);
      kernel.append(0, one, one, 1);
      kernel.restore();
      expect(kernel.length).toBe(1);
      expect(() => kernel.commit(1)).toThrow(
        "Failed to commit 1 entries: not every layer was appended with 1 entries; call append for each of the 2 layers first",
      );
    } finally {
      kernel.dispose();
    }
  });
});

describe("KvKernel SIMD", () => {
  const cases: Array<[number, number, RopeConfig["layout"]]> = [
    [64, 64, "adjacent"],
    [64, 64, "halves"],
    [12, 10, "adjacent"],
    [20, 20, "halves"],
    [24, 16, "halves"],
    [7, 2, "adjacent"],
  ];
  for (const [headDim, ropeDim, layout] of cases) {
    test(`SIMD matches scalar, head ${headDim} rotary ${ropeDim} ${layout}`, () => {
      const options = { layers: 2, kvHeads: 3, headDim, sinks: 3, window: 11, rope: makeRope(ropeDim, layout) };
      const simd = new Pair(options, 8);
      const scalar = new Pair(options, 8);
      try {
        expect(simd.kernel.setSimd(true)).toBe(true);
        expect(scalar.kernel.setSimd(false)).toBe(false);
        for (let step = 0; step < 30; step++) {
          const count = 1 + (step % 5);
          simd.push(count);
          scalar.push(count);
          simd.check();
          scalar.check();
          for (let layer = 0; layer < options.layers; layer++) {
            expect(simd.kernel.pastKey(layer)).toEqual(scalar.kernel.pastKey(layer));
            expect(simd.kernel.pastValue(layer)).toEqual(scalar.kernel.pastValue(layer));
          }
        }
      } finally {
        simd.kernel.dispose();
        scalar.kernel.dispose();
      }
    });
  }
});

describe("KvKernel errors", () => {
  const good: KvKernelOptions = {
    layers: 1,
    kvHeads: 1,
    headDim: 4,
    sinks: 1,
    window: 2,
    rope: makeRope(4, "adjacent"),
  };
  const badOptions: Array<[string, KvKernelOptions, string]> = [
    [
      "window 0",
      { ...good, window: 0 },
      "Invalid window size: current value is 0; the window must be a whole number ≥ 1",
    ],
    [
      "window 1.5",
      { ...good, window: 1.5 },
      "Invalid window size: current value is 1.5; the window must be a whole number ≥ 1",
    ],
    [
      "layers 0",
      { ...good, layers: 0 },
      "Invalid layer count: current value is 0; the layer count must be a whole number ≥ 1",
    ],
    [
      "kvHeads NaN",
      { ...good, kvHeads: NaN },
      "Invalid KV head count: current value is NaN; the KV head count must be a whole number ≥ 1",
    ],
    [
      "headDim 0",
      { ...good, headDim: 0 },
      "Invalid head size: current value is 0; the head size must be a whole number ≥ 1",
    ],
    [
      "sinks -1",
      { ...good, sinks: -1 },
      "Invalid sink count: current value is -1; the sink count must be a whole number ≥ 0",
    ],
    [
      "odd rotary dim",
      { ...good, rope: { ...good.rope, dim: 3 } },
      "Invalid rotary dim: current value is 3; it must be an even whole number from 0 to the head size 4",
    ],
    [
      "rotary dim above head size",
      { ...good, rope: makeRope(6, "adjacent") },
      "Invalid rotary dim: current value is 6; it must be an even whole number from 0 to the head size 4",
    ],
    [
      "unknown layout",
      { ...good, rope: { ...good.rope, layout: "neox" as RopeConfig["layout"] } },
      'Invalid RoPE layout: current value is "neox"; it must be "adjacent" or "halves"',
    ],
    [
      "short invFreq",
      { ...good, rope: { ...good.rope, invFreq: new Float64Array(1) } },
      "Invalid inverse frequency count: current value is 1; it must be half the rotary dim, 2",
    ],
    [
      "NaN invFreq",
      { ...good, rope: { ...good.rope, invFreq: new Float64Array([1, NaN]) } },
      "Invalid inverse frequency at index 1: current value is NaN; every frequency must be finite",
    ],
    [
      "capacity above 2^31 - 1",
      { ...good, sinks: 2 ** 31, window: 1 },
      "Invalid capacity: current value is 2147483649; sinks plus window must be at most 2147483647",
    ],
    [
      "buffers beyond wasm memory",
      { ...good, layers: 1000, kvHeads: 1000, headDim: 1000 },
      "Failed to create a KV cache of 1000 layers × 1000 heads × 1000 dims × 3 slots: the buffers do not fit in 4 GiB of wasm memory; reduce the layers, heads, head size or capacity",
    ],
  ];
  for (const [name, options, message] of badOptions) {
    test(`constructor rejects ${name}`, () => {
      expect(() => new KvKernel(options)).toThrow(new RangeError(message));
    });
  }

  test("evictFor rejects chunk above maxIncoming", () => {
    const kernel = new KvKernel({ ...good, sinks: 2, window: 3 });
    try {
      expect(() => kernel.evictFor(6)).toThrow(
        new RangeError(
          "Invalid chunk size: current value is 6; a chunk can hold at most 5 entries (the free sinks plus the window), so split it",
        ),
      );
      const data = new Float32Array(8);
      kernel.evictFor(2);
      kernel.append(0, data, data, 2);
      kernel.commit(2);
      expect(() => kernel.evictFor(4)).toThrow(
        new RangeError(
          "Invalid chunk size: current value is 4; a chunk can hold at most 3 entries (the free sinks plus the window), so split it",
        ),
      );
      expect(kernel.evictFor(3)).toBe(0);
    } finally {
      kernel.dispose();
    }
  });

  test("append rejects bad arguments", () => {
    const kernel = new KvKernel({ ...good, kvHeads: 2, window: 2 });
    try {
      const data = new Float32Array(2 * 2 * 4);
      expect(() => kernel.append(1, data, data, 2)).toThrow(
        new RangeError("Invalid layer index: current value is 1; the index must be a whole number below 1"),
      );
      expect(() => kernel.append(0, data.subarray(1), data, 2)).toThrow(
        new RangeError("Invalid key tensor length: current value is 15; a [2, 2, 4] tensor has 16 elements"),
      );
      expect(() => kernel.append(0, data, new Float32Array(8), 2)).toThrow(
        new RangeError("Invalid value tensor length: current value is 8; a [2, 2, 4] tensor has 16 elements"),
      );
      expect(() => kernel.append(0, data, data, 1, 2, 2)).toThrow(
        new RangeError(
          "Invalid sequence length: current value is 2; the sequence must hold tokens 2 to 2, so it needs at least 3",
        ),
      );
      kernel.append(0, data, data, 2);
      kernel.commit(2);
      expect(() => kernel.append(0, data, data, 2)).toThrow(
        new RangeError("Invalid entry count: current value is 2; only 1 slots are free; call evictFor(2) first"),
      );
    } finally {
      kernel.dispose();
    }
  });

  test("restore without snapshot throws", () => {
    const kernel = new KvKernel(good);
    try {
      expect(() => kernel.restore()).toThrow(
        "Failed to restore the KV cache: no snapshot was taken; call snapshot() first",
      );
    } finally {
      kernel.dispose();
    }
  });

  test("disposed kernel throws", () => {
    const kernel = new KvKernel(good);
    kernel.dispose();
    kernel.dispose();
    expect(() => kernel.length).toThrow("Failed to use the KV cache: it was disposed");
    expect(() => kernel.preparePast()).toThrow("Failed to use the KV cache: it was disposed");
  });

  test("enteredAt rejects index past length", () => {
    const kernel = new KvKernel(good);
    try {
      expect(() => kernel.enteredAt(0)).toThrow(
        new RangeError("Invalid entry index: current value is 0; the index must be a whole number below the length 0"),
      );
    } finally {
      kernel.dispose();
    }
  });
});

describe("ring model", () => {
  test("rotate composes and keeps norms", () => {
    const rope = makeRope(6, "halves", 10);
    const vector = [0.5, -1, 0.25, 2, -0.75, 1.5, 3];
    const once = rotate(vector, 7, rope);
    const twice = rotate(rotate(vector, 3, rope), 4, rope);
    expectClose(Float32Array.from(once), twice, 1e-6);
    expect(once[6]).toBe(3);
    const norm = (v: ArrayLike<number>) => Math.hypot(...Array.from(v).slice(0, 6));
    expect(Math.abs(norm(once) - norm(vector))).toBeLessThan(1e-12);
  });
});

describe("KvKernel handoff", () => {
  /** Keys and values of token `id`: key element d is sin(id + d), value element d is id. */
  function raw(id: number, headDim: number): number[] {
    return Array.from({ length: headDim }, (_, d) => Math.sin(id * 0.37 + d));
  }

  test("keys sit at base plus index", () => {
    const headDim = 8;
    const rope = makeRope(headDim, "halves", 10);
    const options = { layers: 1, kvHeads: 2, headDim, sinks: 2, window: 6, rope, maxPositions: 13 };
    const kernel = new KvKernel(options);
    const random = mulberry32(5);
    const cached: number[] = [];
    let total = 0;
    let rebases = 0;
    try {
      expect(kernel.maxPositions).toBe(13);
      while (total < 400) {
        const count = randomInt(random, 1, Math.min(3, kernel.maxIncoming));
        kernel.evictFor(count);
        while (cached.length + count > kernel.capacity) cached.splice(options.sinks, 1);
        const first = kernel.prepareHandoff(count);
        const base = kernel.base;
        expect(first).toBe(base + kernel.length);
        expect(first + count).toBeLessThanOrEqual(13);
        if (base === 0 && total >= kernel.capacity) rebases++;

        const { key, value } = kernel.handoff()[0];
        const length = kernel.length;
        expect(key.length).toBe(2 * length * headDim);
        for (let head = 0; head < 2; head++) {
          const seen = new Set<number>();
          for (let row = 0; row < length; row++) {
            const at = (head * length + row) * headDim;
            const id = value[at];
            const index = cached.indexOf(id);
            expect(index).toBeGreaterThanOrEqual(0);
            expect(seen.has(id)).toBe(false);
            seen.add(id);
            const expected = rotate(raw(id, headDim), base + index, rope);
            for (let d = 0; d < headDim; d++) expect(Math.abs(key[at + d] - expected[d])).toBeLessThan(KEY_TOLERANCE);
          }
        }

        const keys = new Float32Array(2 * count * headDim);
        const values = new Float32Array(2 * count * headDim);
        for (let head = 0; head < 2; head++) {
          for (let k = 0; k < count; k++) {
            keys.set(rotate(raw(total + k, headDim), first + k, rope), (head * count + k) * headDim);
            values.fill(total + k, (head * count + k) * headDim, (head * count + k + 1) * headDim);
          }
        }
        kernel.append(0, keys, values, count);
        kernel.commit(count);
        for (let k = 0; k < count; k++) cached.push(total + k);
        total += count;
      }
      expect(rebases).toBeGreaterThan(20);
    } finally {
      kernel.dispose();
    }
  });

  test("steady decoding copies nothing", () => {
    const rope = makeRope(4, "adjacent");
    const kernel = new KvKernel({ layers: 2, kvHeads: 1, headDim: 4, sinks: 1, window: 3, rope, maxPositions: 100 });
    const step = () => {
      kernel.evictFor(1);
      kernel.prepareHandoff(1);
      const past = kernel.handoff();
      const entry = new Float32Array(4).fill(1);
      for (let layer = 0; layer < 2; layer++) kernel.append(layer, entry, entry, 1);
      kernel.commit(1);
      return past;
    };
    try {
      for (let i = 0; i < 4; i++) step();
      const past = step();
      const before = kernel.preparedBytes;
      expect(step()).toBe(past);
      // One sink row rotated per layer, plus one row moved into the evicted row: 3 arrays of
      // one row per layer.
      expect(kernel.preparedBytes - before).toBe(2 * 16 + 3 * 2 * 16);
    } finally {
      kernel.dispose();
    }
  });

  test("constructor rejects low position limit", () => {
    const rope = makeRope(4, "adjacent");
    expect(() => new KvKernel({ layers: 1, kvHeads: 1, headDim: 4, sinks: 1, window: 3, rope, maxPositions: 3 }))
      .toThrow(new RangeError("Invalid position limit: current value is 3; it must be a whole number from the capacity 4 to 2147483647"));
  });
});
