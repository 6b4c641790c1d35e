/**
 * Token sampling from logits: greedy at temperature 0, otherwise softmax sampling with a
 * seeded pseudo-random generator so that a run with the same seed repeats exactly.
 */

/** Options of {@linkcode Sampler}. */
export interface SamplerOptions {
  /** Softmax temperature; 0 picks the most likely token. @default 0 */
  temperature?: number;
  /** Seed of the pseudo-random generator. @default 0 */
  seed?: number;
}

/** Picks the next token from a row of logits. */
export class Sampler {
  readonly temperature: number;
  #state: number;

  constructor(options: SamplerOptions = {}) {
    const temperature = options.temperature ?? 0;
    if (!Number.isFinite(temperature) || temperature < 0) {
      throw new RangeError(
        `Invalid temperature: current value is ${temperature}; it must be a number ≥ 0 (0 = greedy)`,
      );
    }
    const seed = options.seed ?? 0;
    if (!Number.isSafeInteger(seed)) {
      throw new RangeError(`Invalid seed: current value is ${seed}; it must be a whole number`);
    }
    this.temperature = temperature;
    this.#state = (seed >>> 0) ^ 0x9e3779b9;
  }

  /** Return the id of the next token given the logits of the last position. */
  sample(logits: ArrayLike<number>): number {
    if (this.temperature === 0) return argmax(logits);

    let max = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
    const weights = new Float64Array(logits.length);
    let total = 0;
    for (let i = 0; i < logits.length; i++) {
      weights[i] = Math.exp((logits[i] - max) / this.temperature);
      total += weights[i];
    }
    let target = this.#nextUniform() * total;
    for (let i = 0; i < weights.length; i++) {
      target -= weights[i];
      if (target < 0) return i;
    }
    return argmax(logits);
  }

  /** Mulberry32: a small, fast generator of uniform numbers in [0, 1). */
  #nextUniform(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

/** Return the index of the largest value; the first one on ties, as llama.cpp's greedy sampler. */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Return the natural-log softmax probability of `index` in a row of logits. */
export function logSoftmaxAt(logits: ArrayLike<number>, index: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += Math.exp(logits[i] - max);
  return logits[index] - max - Math.log(total);
}
