/**
 * Plain float64 forward pass of a llama decoder, the test oracle for the ONNX graph and the
 * wasm KV kernel. Slow by design: no batching tricks, every value in f64.
 *
 * Per block: RMSNorm, Q/K/V projections (with optional biases), RoPE, grouped-query
 * attention with causal softmax, output projection and residual, then RMSNorm, SwiGLU
 * feed-forward and residual. After the last block: RMSNorm and the output projection.
 */

import type { LlamaConfig, LlamaWeights, RopeConfig, Tensor } from "./types.ts";

/** One linear layer's weight `[rows, cols]` in f64, row-major. */
interface Matrix {
  rows: number;
  cols: number;
  data: Float64Array;
}

interface ReferenceLayer {
  attnNorm: Float64Array;
  wq: Matrix;
  wk: Matrix;
  wv: Matrix;
  wo: Matrix;
  bq?: Float64Array;
  bk?: Float64Array;
  bv?: Float64Array;
  ffnNorm: Float64Array;
  wGate: Matrix;
  wUp: Matrix;
  wDown: Matrix;
}

function toMatrix(tensor: Tensor): Matrix {
  return { rows: tensor.dims[0], cols: tensor.dims[1], data: Float64Array.from(tensor.data) };
}

function toVector(tensor: Tensor | undefined): Float64Array | undefined {
  return tensor === undefined ? undefined : Float64Array.from(tensor.data);
}

/** Compute `W x (+ bias)`. */
function matVec(w: Matrix, x: Float64Array, bias?: Float64Array): Float64Array {
  const y = new Float64Array(w.rows);
  for (let r = 0; r < w.rows; r++) {
    let sum = bias === undefined ? 0 : bias[r];
    const row = r * w.cols;
    for (let c = 0; c < w.cols; c++) sum += w.data[row + c] * x[c];
    y[r] = sum;
  }
  return y;
}

/** Compute `x / sqrt(mean(x^2) + eps) * weight`. */
function rmsNorm(x: Float64Array, weight: Float64Array, eps: number): Float64Array {
  let sumSquares = 0;
  for (let i = 0; i < x.length; i++) sumSquares += x[i] * x[i];
  const scale = 1 / Math.sqrt(sumSquares / x.length + eps);
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = x[i] * scale * weight[i];
  return y;
}

/**
 * Rotate the first `rope.dim` elements of each head of `x` (heads of `headDim` elements)
 * by the angles `pos * invFreq[i]`. Returns a new array and leaves `x` unchanged.
 */
export function applyRope(x: Float64Array, headDim: number, rope: RopeConfig, pos: number): Float64Array {
  const y = Float64Array.from(x);
  const half = rope.dim / 2;
  for (let head = 0; head < x.length / headDim; head++) {
    const base = head * headDim;
    for (let i = 0; i < half; i++) {
      const angle = pos * rope.invFreq[i];
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      const a = rope.layout === "adjacent" ? base + 2 * i : base + i;
      const b = rope.layout === "adjacent" ? base + 2 * i + 1 : base + i + half;
      y[a] = x[a] * cos - x[b] * sin;
      y[b] = x[a] * sin + x[b] * cos;
    }
  }
  return y;
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * Receives the attention probabilities of one query head over the attended tokens, in cache
 * slot order (stream order for `forward`), in a new array for each call.
 */
export type AttentionObserver = (layer: number, head: number, probabilities: Float64Array) => void;

/**
 * Attend one query (all heads, already rotated) to `keys` (rotated) and `values`, one array
 * of `nKvHeads * headDim` per attended token. Query head h reads KV head
 * `floor(h / (nHeads / nKvHeads))`.
 */
function attend(
  config: LlamaConfig,
  query: Float64Array,
  keys: Float64Array[],
  values: Float64Array[],
  observe?: (head: number, probabilities: Float64Array) => void,
): Float64Array {
  const { nHeads, nKvHeads, headDim } = config;
  const group = nHeads / nKvHeads;
  const scale = 1 / Math.sqrt(headDim);
  const out = new Float64Array(nHeads * headDim);
  const scores = new Float64Array(keys.length);
  for (let h = 0; h < nHeads; h++) {
    const q = h * headDim;
    const kv = Math.floor(h / group) * headDim;

    let max = -Infinity;
    for (let t = 0; t < keys.length; t++) {
      let dot = 0;
      for (let d = 0; d < headDim; d++) dot += query[q + d] * keys[t][kv + d];
      scores[t] = dot * scale;
      if (scores[t] > max) max = scores[t];
    }

    let total = 0;
    for (let t = 0; t < keys.length; t++) {
      scores[t] = Math.exp(scores[t] - max);
      total += scores[t];
    }
    if (observe !== undefined) {
      const probabilities = new Float64Array(keys.length);
      for (let t = 0; t < keys.length; t++) probabilities[t] = scores[t] / total;
      observe(h, probabilities);
    }

    for (let t = 0; t < keys.length; t++) {
      const weight = scores[t] / total;
      for (let d = 0; d < headDim; d++) out[q + d] += weight * values[t][kv + d];
    }
  }
  return out;
}

/** Return the index of the largest value, the first one on ties. */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * Float64 llama model. `forward` runs a whole sequence at positions 0..n-1, and
 * `createStream` makes a sink+window session that runs one token per step.
 *
 * @example
 * ```ts
 * const model = new ReferenceModel(weights);
 * const logits = model.forward([1, 403, 407]); // one Float64Array of vocabSize per token
 * ```
 */
export class ReferenceModel {
  readonly config: LlamaConfig;
  private readonly embedding: Matrix;
  private readonly layers: ReferenceLayer[];
  private readonly outputNorm: Float64Array;
  private readonly output: Matrix;
  /** Called with every query head's attention probabilities, when set. Leaves results unchanged. */
  attentionObserver?: AttentionObserver;

  constructor(weights: LlamaWeights) {
    this.config = weights.config;
    this.embedding = toMatrix(weights.tokenEmbedding);
    this.layers = weights.layers.map((layer) => ({
      attnNorm: Float64Array.from(layer.attnNorm.data),
      wq: toMatrix(layer.wq),
      wk: toMatrix(layer.wk),
      wv: toMatrix(layer.wv),
      wo: toMatrix(layer.wo),
      bq: toVector(layer.bq),
      bk: toVector(layer.bk),
      bv: toVector(layer.bv),
      ffnNorm: Float64Array.from(layer.ffnNorm.data),
      wGate: toMatrix(layer.wGate),
      wUp: toMatrix(layer.wUp),
      wDown: toMatrix(layer.wDown),
    }));
    this.outputNorm = Float64Array.from(weights.outputNorm.data);
    this.output = weights.output === weights.tokenEmbedding ? this.embedding : toMatrix(weights.output);
  }

  /** Return the embedding row of a token as f64. */
  embed(token: number): Float64Array {
    if (!Number.isInteger(token) || token < 0 || token >= this.config.vocabSize) {
      throw new RangeError(`Failed to embed token: current id is ${token}, valid ids are 0 to ${this.config.vocabSize - 1}`);
    }
    const n = this.embedding.cols;
    return this.embedding.data.slice(token * n, (token + 1) * n);
  }

  /** Return the logits of a hidden state after the last block. */
  logits(hidden: Float64Array): Float64Array {
    return matVec(this.output, rmsNorm(hidden, this.outputNorm, this.config.rmsNormEps));
  }

  /** Return the unrotated key and the value of block `layer` for its input `x`. */
  keyValue(layer: number, x: Float64Array): { key: Float64Array; value: Float64Array } {
    const w = this.layers[layer];
    const xn = rmsNorm(x, w.attnNorm, this.config.rmsNormEps);
    return { key: matVec(w.wk, xn, w.bk), value: matVec(w.wv, xn, w.bv) };
  }

  /**
   * Finish block `layer` for one token: its query at `pos` attends to the given rotated keys
   * and values (the token's own included), then the feed-forward runs. Returns the block output.
   */
  finishBlock(layer: number, x: Float64Array, pos: number, keys: Float64Array[], values: Float64Array[]): Float64Array {
    const { config } = this;
    const w = this.layers[layer];
    const xn = rmsNorm(x, w.attnNorm, config.rmsNormEps);
    const query = applyRope(matVec(w.wq, xn, w.bq), config.headDim, config.rope, pos);
    const observer = this.attentionObserver;
    const observe = observer === undefined ? undefined : (head: number, p: Float64Array) => observer(layer, head, p);
    const attention = matVec(w.wo, attend(config, query, keys, values, observe));
    const h = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) h[i] = x[i] + attention[i];

    const hn = rmsNorm(h, w.ffnNorm, config.rmsNormEps);
    const gate = matVec(w.wGate, hn);
    const up = matVec(w.wUp, hn);
    for (let i = 0; i < gate.length; i++) gate[i] = silu(gate[i]) * up[i];
    const down = matVec(w.wDown, gate);
    for (let i = 0; i < h.length; i++) h[i] += down[i];
    return h;
  }

  /**
   * Run a whole sequence with token i at position i and causal attention. Returns the
   * logits after every token. Cost grows with the square of the length: use short inputs.
   */
  forward(tokens: readonly number[]): Float64Array[] {
    const { headDim, rope } = this.config;
    let hidden = tokens.map((token) => this.embed(token));
    for (let layer = 0; layer < this.layers.length; layer++) {
      const keys: Float64Array[] = [];
      const values: Float64Array[] = [];
      for (let pos = 0; pos < hidden.length; pos++) {
        const { key, value } = this.keyValue(layer, hidden[pos]);
        keys.push(applyRope(key, headDim, rope, pos));
        values.push(value);
      }
      hidden = hidden.map((x, pos) => this.finishBlock(layer, x, pos, keys.slice(0, pos + 1), values.slice(0, pos + 1)));
    }
    return hidden.map((x) => this.logits(x));
  }

  /** Create a sink+window streaming session over this model. */
  createStream(options: SinkWindowOptions): ReferenceSinkStream {
    return new ReferenceSinkStream(this, options);
  }
}

/** Cache policy of `ReferenceSinkStream`. */
export interface SinkWindowOptions {
  /** Number of first tokens kept forever (attention sinks), at least 0. */
  sinks: number;
  /** Number of most recent tokens kept besides the sinks, at least 1. */
  window: number;
}

/**
 * Streaming session with a StreamingLLM sink+window KV cache, kept as unrotated keys and
 * values in f64. The cache contains at most `sinks + window` tokens. When it is full, the
 * oldest non-sink token is evicted before a new token enters. The token in cache slot i
 * has position i: keys are rotated at their current slot on every step, and the new token's
 * query at its own slot.
 */
export class ReferenceSinkStream {
  readonly sinks: number;
  readonly window: number;
  /** Unrotated keys, `(layer, slot)` → `nKvHeads * headDim` values. */
  private keys: Float64Array[][];
  /** Values, `(layer, slot)` → `nKvHeads * headDim` values. */
  private values: Float64Array[][];
  /** Token id of each slot. */
  private tokens: number[] = [];

  constructor(private readonly model: ReferenceModel, options: SinkWindowOptions) {
    const { sinks, window } = options;
    if (!Number.isInteger(sinks) || sinks < 0) {
      throw new RangeError(`Failed to create the stream: sinks must be an integer of at least 0, current value is ${sinks}`);
    }
    if (!Number.isInteger(window) || window < 1) {
      throw new RangeError(`Failed to create the stream: window must be an integer of at least 1, current value is ${window}`);
    }
    this.sinks = sinks;
    this.window = window;
    this.keys = Array.from({ length: model.config.nLayers }, () => []);
    this.values = Array.from({ length: model.config.nLayers }, () => []);
  }

  /** Maximum number of cached tokens, `sinks + window`. */
  get capacity(): number {
    return this.sinks + this.window;
  }

  /** Token ids in the cache, slot order. */
  get cachedTokens(): readonly number[] {
    return this.tokens;
  }

  /** Feed one token and return the logits for the next one. */
  step(token: number): Float64Array {
    const { headDim, rope } = this.model.config;
    let x = this.model.embed(token);

    if (this.tokens.length === this.capacity) {
      this.tokens.splice(this.sinks, 1);
      for (const layerKeys of this.keys) layerKeys.splice(this.sinks, 1);
      for (const layerValues of this.values) layerValues.splice(this.sinks, 1);
    }
    this.tokens.push(token);
    const pos = this.tokens.length - 1;

    for (let layer = 0; layer < this.keys.length; layer++) {
      const { key, value } = this.model.keyValue(layer, x);
      this.keys[layer].push(key);
      this.values[layer].push(value);
      const rotated = this.keys[layer].map((k, slot) => applyRope(k, headDim, rope, slot));
      x = this.model.finishBlock(layer, x, pos, rotated, this.values[layer]);
    }
    return this.model.logits(x);
  }

  /** Empty the cache. */
  reset(): void {
    this.tokens = [];
    for (const layerKeys of this.keys) layerKeys.length = 0;
    for (const layerValues of this.values) layerValues.length = 0;
  }
}
