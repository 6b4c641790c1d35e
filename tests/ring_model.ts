/**
 * Plain TypeScript model of the sink + window KV cache, the oracle of the kernel tests.
 *
 * It shares no code with the kernel: it keeps a list of entries with their unrotated keys in
 * f64 and, when asked for the past, rotates each key from scratch to its current position with
 * `Math.cos` and `Math.sin`.
 */

import type { RopeConfig } from "../core/types.ts";

/** Sizes of a modelled cache. */
export interface RingModelOptions {
  layers: number;
  kvHeads: number;
  headDim: number;
  sinks: number;
  window: number;
  rope: RopeConfig;
}

/** One cached token. */
interface Entry {
  /** Position the entry entered the cache with. */
  enteredAt: number;
  /** Unrotated keys per layer, `[kvHeads, headDim]`. */
  keys: Float64Array[];
  /** Values per layer, `[kvHeads, headDim]`. */
  values: Float64Array[];
}

/** Rotates the first `rope.dim` elements of `vector` by `position` in f64; returns a new array. */
export function rotate(vector: ArrayLike<number>, position: number, rope: RopeConfig): Float64Array {
  const out = Float64Array.from(vector);
  const half = rope.dim / 2;
  for (let i = 0; i < half; i++) {
    const [a, b] = rope.layout === "adjacent" ? [2 * i, 2 * i + 1] : [i, i + half];
    const angle = position * rope.invFreq[i];
    const cos = Math.cos(angle);
    const sin = Math.sin(angle);
    out[a] = vector[a] * cos - vector[b] * sin;
    out[b] = vector[a] * sin + vector[b] * cos;
  }
  return out;
}

/** Sink + window cache over an array of entries, sinks first, then the window oldest first. */
export class RingModel {
  readonly options: RingModelOptions;
  entries: Entry[] = [];
  totalEvicted = 0;
  totalCommitted = 0;

  constructor(options: RingModelOptions) {
    this.options = options;
  }

  get capacity(): number {
    return this.options.sinks + this.options.window;
  }

  get sinksFilled(): number {
    return Math.min(this.entries.length, this.options.sinks);
  }

  get windowLength(): number {
    return this.entries.length - this.sinksFilled;
  }

  /** Largest chunk that fits after eviction: the free sinks plus the whole window. */
  get maxIncoming(): number {
    return this.capacity - this.sinksFilled;
  }

  /** Drops the oldest window entries so that `incoming` entries fit; returns how many. */
  evictFor(incoming: number): number {
    if (incoming > this.maxIncoming) {
      throw new RangeError(`model: a chunk of ${incoming} cannot fit`);
    }
    const evicted = Math.max(0, this.entries.length + incoming - this.capacity);
    this.entries.splice(this.options.sinks, evicted);
    this.totalEvicted += evicted;
    return evicted;
  }

  /**
   * Adds `count` entries from per-layer unrotated keys and values, `[kvHeads, count, headDim]`.
   * Returns the keys as the model would emit them, rotated at their entry positions, as f32.
   */
  push(count: number, rawKeys: Float64Array[], values: Float64Array[]): Float32Array[] {
    const { layers, kvHeads, headDim, rope } = this.options;
    if (this.entries.length + count > this.capacity) {
      throw new RangeError(`model: no room for ${count} entries`);
    }
    const emitted = rawKeys.map(() => new Float32Array(kvHeads * count * headDim));
    for (let k = 0; k < count; k++) {
      const entry: Entry = { enteredAt: this.entries.length, keys: [], values: [] };
      for (let layer = 0; layer < layers; layer++) {
        const keys = new Float64Array(kvHeads * headDim);
        const layerValues = new Float64Array(kvHeads * headDim);
        for (let head = 0; head < kvHeads; head++) {
          const from = (head * count + k) * headDim;
          const raw = rawKeys[layer].subarray(from, from + headDim);
          keys.set(raw, head * headDim);
          layerValues.set(values[layer].subarray(from, from + headDim), head * headDim);
          emitted[layer].set(rotate(raw, entry.enteredAt, rope), from);
        }
        entry.keys.push(keys);
        entry.values.push(layerValues);
      }
      this.entries.push(entry);
    }
    this.totalCommitted += count;
    return emitted;
  }

  /** Returns the keys of `layer` rotated to current positions, `[kvHeads, length, headDim]`. */
  pastKey(layer: number): Float64Array {
    return this.#past((entry, head, position) => {
      const { headDim, rope } = this.options;
      return rotate(entry.keys[layer].subarray(head * headDim, (head + 1) * headDim), position, rope);
    });
  }

  /** Returns the values of `layer`, `[kvHeads, length, headDim]`. */
  pastValue(layer: number): Float64Array {
    return this.#past((entry, head) => {
      const { headDim } = this.options;
      return entry.values[layer].subarray(head * headDim, (head + 1) * headDim);
    });
  }

  #past(
    rowOf: (entry: Entry, head: number, position: number) => Float64Array,
  ): Float64Array {
    const { kvHeads, headDim } = this.options;
    const length = this.entries.length;
    const out = new Float64Array(kvHeads * length * headDim);
    for (let head = 0; head < kvHeads; head++) {
      this.entries.forEach((entry, position) => {
        out.set(rowOf(entry, head, position), (head * length + position) * headDim);
      });
    }
    return out;
  }

  /** Returns an independent copy; entries are never mutated, so they can be shared. */
  clone(): RingModel {
    const copy = new RingModel(this.options);
    copy.entries = [...this.entries];
    copy.totalEvicted = this.totalEvicted;
    copy.totalCommitted = this.totalCommitted;
    return copy;
  }
}
