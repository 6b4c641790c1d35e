/**
 * Float64 oracles of the cache policies in `policies.ts`, built on {@linkcode ReferenceModel}
 * and independent of ONNX Runtime and the wasm kernel. Each returns the negative
 * log-likelihood of tokens 1…n-1 (index i - 1 of the result scores token i).
 */

import { ReferenceModel } from "./reference.ts";

/** Return `-log softmax(logits)[target]` in float64. */
function nllOf(logits: Float64Array, target: number): number {
  let max = -Infinity;
  for (const value of logits) if (value > max) max = value;
  let total = 0;
  for (const value of logits) total += Math.exp(value - max);
  return Math.log(total) + max - logits[target];
}

/**
 * Score a stream one token at a time through a sink+window cache with positions within the
 * cache: the `sink` policy, or the `window` policy with `sinks` 0.
 */
export function referenceSinkWindowNll(model: ReferenceModel, ids: readonly number[], sinks: number, window: number): number[] {
  const stream = model.createStream({ sinks, window });
  const nll: number[] = [];
  for (let i = 0; i + 1 < ids.length; i++) nll.push(nllOf(stream.step(ids[i]), ids[i + 1]));
  return nll;
}

/** Score a stream with every token kept at its position in the stream: the `dense` policy. */
export function referenceDenseNll(model: ReferenceModel, ids: readonly number[]): number[] {
  const logits = model.forward(ids);
  return ids.slice(1).map((token, i) => nllOf(logits[i], token));
}

/**
 * Score a stream by re-running a window from scratch at positions 0…: the `recompute`
 * policy. Targets are taken `chunkSize` at a time, and each group is scored from one run of
 * the `window` tokens that end just before its last target (with `chunkSize` 1, the `window`
 * tokens before each target).
 */
export function referenceRecomputeNll(
  model: ReferenceModel,
  ids: readonly number[],
  window: number,
  chunkSize = 1,
): number[] {
  const nll: number[] = [];
  for (let first = 1; first < ids.length; first += chunkSize) {
    const last = Math.min(first + chunkSize, ids.length) - 1;
    const start = Math.max(0, last - window);
    const logits = model.forward(ids.slice(start, last));
    for (let target = first; target <= last; target++) nll.push(nllOf(logits[target - 1 - start], ids[target]));
  }
  return nll;
}
