/**
 * A llama model built to depend on an attention sink. It is the stories weights with the BOS
 * token turned into a pure sink (a large key and a value of zero). One KV head per layer
 * becomes a dormant head that puts almost all its attention on BOS.
 *
 * Construction, for one residual coordinate `j` chosen where the value projections read the
 * least:
 * 1. Coordinate `j` becomes BOS's own: column `j` of the token embedding and rows `j` of every
 *    attention output and feed-forward down projection are set to 0, so no other token ever
 *    has a component on it. The BOS embedding gets `bosScale` there, so after every RMSNorm
 *    the BOS hidden state is almost exactly `sqrt(nEmbd) * norm[j]` times the unit vector `e_j`.
 * 2. Column `j` of every V and K projection is 0, so BOS has a value of (almost) zero in every
 *    layer, and other keys do not change.
 * 3. In each layer, the KV head whose query heads give BOS the most attention in the original
 *    model (on a calibration text) becomes dormant. Its last rotary pair has the lowest
 *    frequency, `theta = base^(-(rotaryDim - 2) / rotaryDim)`: 0.001 for the stories model, which
 *    turns by less than 0.52 rad over 512 positions. In that pair of the KV head and its query
 *    heads the learned rows are replaced. Every query gets the constant bias `(a, 0)`, other
 *    tokens get the key `(0, 0)`, and BOS gets `(a, 0)` from coordinate `j`. BOS then scores
 *    `a^2 cos(pos * theta) / sqrt(headDim) = sinkLogit * cos(pos * theta)` for every query.
 * 4. The dormant heads' attention output (their columns of `wo`) is multiplied by
 *    `dormantGain`. With BOS in the cache, a dormant head gives BOS all but about
 *    `n * exp(s - sinkLogit)` of its attention (for `n` other tokens of score about `s`), so
 *    its output stays near 0. Once BOS is evicted, that attention goes to the other tokens and
 *    the head's output is `dormantGain` times a whole attention output: the failure of
 *    `window` caches.
 *
 * With BOS in the cache the result behaves like the stories model with the dormant heads
 * switched off and coordinate `j` removed. Its perplexity within the training length is
 * about twice the stories model's (`docs/paper.md` gives the numbers).
 *
 * NOTE: the sink is the BOS token itself, not the first position. A window that starts with
 * another token has no sink, so `recompute` breaks on this model too.
 */

import { ReferenceModel } from "../core/reference.ts";
import type { LlamaWeights, Tensor } from "../core/types.ts";

/** Parameters of {@linkcode buildSinkModel}. */
export interface SinkModelOptions {
  /** BOS token id. */
  bosId: number;
  /**
   * Calibration text: token ids starting with BOS, within the training length. The dormant
   * heads are chosen on it.
   */
  calibrationIds: readonly number[];
  /** Attention logit of BOS in a dormant head at position 0. @default 100 */
  sinkLogit?: number;
  /** Factor on the dormant heads' attention output. @default 10 */
  dormantGain?: number;
  /** Value of the BOS embedding on coordinate `j`. @default 1e5 */
  bosScale?: number;
}

/** Choices made by {@linkcode buildSinkModel}, for reports. */
export interface SinkModelReport {
  /** Residual coordinate reserved for BOS. */
  coordinate: number;
  /** Dormant KV head of each layer. */
  dormantKvHeads: number[];
}

function copyTensor(tensor: Tensor): Tensor {
  return { dims: [...tensor.dims], data: tensor.data.slice() };
}

function fillRows(tensor: Tensor, firstRow: number, rowCount: number, value: number): void {
  const columns = tensor.dims[1];
  tensor.data.fill(value, firstRow * columns, (firstRow + rowCount) * columns);
}

/**
 * Return the residual coordinate that the value projections read the least: the column `j`
 * with the smallest sum over layers of `(norm[j] * |wv[:, j]|)^2`.
 */
export function leastReadCoordinate(weights: LlamaWeights): number {
  const { nEmbd } = weights.config;
  let best = 0;
  let bestLoad = Infinity;
  for (let j = 0; j < nEmbd; j++) {
    let load = 0;
    for (const layer of weights.layers) {
      const gain = layer.attnNorm.data[j];
      for (let r = 0; r < layer.wv.dims[0]; r++) load += (gain * layer.wv.data[r * nEmbd + j]) ** 2;
    }
    if (load < bestLoad) {
      bestLoad = load;
      best = j;
    }
  }
  return best;
}

/**
 * Return the mean attention probability on position 0 of every query head over the queries
 * at positions 1 and later of `ids`, `[layer][head]`, from a float64 forward pass.
 */
export function firstTokenMass(weights: LlamaWeights, ids: readonly number[]): number[][] {
  const { nLayers, nHeads } = weights.config;
  const model = new ReferenceModel(weights);
  const sums = Array.from({ length: nLayers }, () => new Array<number>(nHeads).fill(0));
  model.attentionObserver = (layer, head, probabilities) => {
    if (probabilities.length > 1) sums[layer][head] += probabilities[0] / (ids.length - 1);
  };
  model.forward(ids);
  return sums;
}

/**
 * Build the sink model from llama weights whose rotary dim is the head size. Returns new
 * weights with an untied output projection and leaves `weights` unchanged. Runs one float64
 * forward pass over `calibrationIds`.
 *
 * @throws RangeError when the rotary dim is not the head size, the calibration text does not
 *   start with BOS, or the attention norm weight of coordinate `j` is 0
 */
export function buildSinkModel(weights: LlamaWeights, options: SinkModelOptions): { weights: LlamaWeights; report: SinkModelReport } {
  const { config } = weights;
  const { nEmbd, nHeads, nKvHeads, headDim } = config;
  if (config.rope.dim !== headDim) {
    throw new RangeError(
      `Failed to build the sink model: the rotary dim must be the head size ${headDim}, current value is ${config.rope.dim}`,
    );
  }
  const ids = options.calibrationIds;
  if (ids.length < 2 || ids[0] !== options.bosId) {
    throw new RangeError(
      `Failed to build the sink model: the calibration text must start with BOS ${options.bosId} and have 2 tokens or more, ` +
        `current length is ${ids.length}`,
    );
  }
  const sinkLogit = options.sinkLogit ?? 100;
  const dormantGain = options.dormantGain ?? 10;
  const bosScale = options.bosScale ?? 1e5;
  const j = leastReadCoordinate(weights);
  const group = nHeads / nKvHeads;
  const pairValue = Math.sqrt(sinkLogit * Math.sqrt(headDim));
  const lastPair = headDim - 2;

  // Step 3: the KV head whose query heads already attend to BOS the most.
  const mass = firstTokenMass(weights, ids);
  const dormantKvHeads = mass.map((heads) => {
    const perKvHead = Array.from({ length: nKvHeads }, (_, kv) => heads.slice(kv * group, (kv + 1) * group).reduce((a, b) => a + b, 0));
    return perKvHead.indexOf(Math.max(...perKvHead));
  });

  // Step 1.
  const tokenEmbedding = copyTensor(weights.tokenEmbedding);
  for (let token = 0; token < config.vocabSize; token++) tokenEmbedding.data[token * nEmbd + j] = 0;
  tokenEmbedding.data[options.bosId * nEmbd + j] = bosScale;

  const layers = weights.layers.map((layer, index) => {
    const gain = layer.attnNorm.data[j];
    if (gain === 0) {
      throw new RangeError(`Failed to build the sink model: attention norm weight ${j} of block ${index} is 0, so BOS would have no key`);
    }
    const dormant = dormantKvHeads[index];

    // Step 2.
    const wv = copyTensor(layer.wv);
    const wk = copyTensor(layer.wk);
    for (let r = 0; r < wv.dims[0]; r++) wv.data[r * nEmbd + j] = 0;
    for (let r = 0; r < wk.dims[0]; r++) wk.data[r * nEmbd + j] = 0;

    // Step 3. The normalized BOS input is sqrt(nEmbd) * gain on coordinate j.
    fillRows(wk, dormant * headDim + lastPair, 2, 0);
    wk.data[(dormant * headDim + lastPair) * nEmbd + j] = pairValue / (Math.sqrt(nEmbd) * gain);
    const wq = copyTensor(layer.wq);
    const bq: Tensor = layer.bq === undefined ? { dims: [nHeads * headDim], data: new Float32Array(nHeads * headDim) } : copyTensor(layer.bq);
    for (let head = dormant * group; head < (dormant + 1) * group; head++) {
      fillRows(wq, head * headDim + lastPair, 2, 0);
      bq.data[head * headDim + lastPair] = pairValue;
      bq.data[head * headDim + lastPair + 1] = 0;
    }

    // Step 4, and step 1 for the writes to the residual stream.
    const wo = copyTensor(layer.wo);
    const columns = wo.dims[1];
    for (let row = 0; row < wo.dims[0]; row++) {
      for (let c = dormant * group * headDim; c < (dormant + 1) * group * headDim; c++) wo.data[row * columns + c] *= dormantGain;
    }
    fillRows(wo, j, 1, 0);
    const wDown = copyTensor(layer.wDown);
    fillRows(wDown, j, 1, 0);
    return { ...layer, wq, bq, wk, wv, wo, wDown };
  });

  const sinkWeights: LlamaWeights = {
    config,
    tokenEmbedding,
    layers,
    outputNorm: weights.outputNorm,
    // The embedding changed, so the output projection keeps its own copy of the original rows.
    output: weights.output === weights.tokenEmbedding ? copyTensor(weights.output) : weights.output,
  };
  return { weights: sinkWeights, report: { coordinate: j, dormantKvHeads } };
}
