/**
 * KV cache policies for scoring a token stream: StreamingLLM's sink-and-window cache and the
 * three baselines it is compared with in "Efficient Streaming Language Models with Attention
 * Sinks" (Xiao et al., 2023).
 *
 * Every policy scores token i (i ≥ 1) by the negative log-likelihood of `ids[i]` under the
 * logits that the model produced for token i - 1. Token 0 is never scored.
 *
 * - `sink`: `sinks` first tokens kept forever plus a window of the `window` most recent
 *   tokens, positions within the cache ({@linkcode StreamingSession}).
 * - `window`: the `window` most recent tokens only, positions within the cache (a session
 *   with 0 sinks).
 * - `dense`: every token kept, positions in the stream (a session whose window is the
 *   position limit, so nothing is ever evicted). It stops at `maxPositions` tokens, the rows
 *   of the runtime's RoPE table.
 * - `recompute`: token i is predicted by running the `window` tokens before it from scratch
 *   at positions 0…window-1, one prefill per scored token.
 *
 * Chunking (`chunkSize` > 1) and exactness:
 * - `sink`, `window`: evict once before each chunk, so the first token of a chunk sees up to
 *   `chunkSize - 1` fewer window tokens than it would one token at a time. Approximate.
 * - `dense`: nothing is evicted, so every token still sees all tokens before it. Exact (up to
 *   float32 rounding, which depends on the batch shape).
 * - `recompute`: one prefill of the `window` tokens before the last target scores
 *   `chunkSize` targets, so the first target sees `window - chunkSize + 1` tokens instead of
 *   `window` (the strided evaluation of sliding-window perplexity). Approximate.
 * With `chunkSize` 1 every policy is exact.
 *
 * Tokens are buffered until a whole chunk is available, so the scores do not depend on how
 * the caller splits the stream into `push` calls; `finish` runs the last partial chunk.
 */

import { UsageError } from "./errors.ts";
import { KvKernel } from "./kv_kernel.ts";
import type { DecoderRuntime, LayerKv } from "./runtime.ts";
import { kernelPositions, StreamingSession } from "./session.ts";

/** Names of the cache policies. */
export const POLICY_NAMES = ["sink", "window", "dense", "recompute"] as const;

/** One of {@linkcode POLICY_NAMES}. */
export type PolicyName = (typeof POLICY_NAMES)[number];

/** Sizes of a cache policy, after defaults are applied. */
export interface PolicySizes {
  policy: PolicyName;
  /** Sink tokens (`sink` only; 0 for the others). */
  sinks: number;
  /** Recent tokens kept (`sink`, `window`) or re-run (`recompute`); unused by `dense`. */
  window: number;
  /** Maximum tokens per forward pass; 1 is exact for every policy. */
  chunkSize: number;
  /** Maximum stream length `dense` can score, because positions must stay below the RoPE table rows. */
  maxPositions: number;
}

/** Score of one token of the stream. */
export interface TokenScore {
  /** Index of the scored token in the stream (≥ 1). */
  index: number;
  /** Token id. */
  token: number;
  /** Negative natural-log likelihood of the token given the tokens before it. */
  nll: number;
}

/** Receives each score as it is computed, in stream order. */
export type ScoreCallback = (score: TokenScore) => void;

/**
 * Return `-log softmax(logits)[target]`, computed in float64.
 *
 * @example
 * ```ts
 * console.assert(Math.abs(negativeLogLikelihood(new Float32Array([0, 0]), 1) - Math.LN2) < 1e-12);
 * ```
 */
export function negativeLogLikelihood(logits: ArrayLike<number>, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += Math.exp(logits[i] - max);
  return Math.log(total) + max - logits[target];
}

/**
 * Positions a runtime's RoPE table needs for a policy: the cache capacity for `sink` and
 * `window`, the window for `recompute`, and `maxPositions` for `dense`.
 */
export function requiredPositions(sizes: PolicySizes): number {
  switch (sizes.policy) {
    case "sink":
    case "window":
      return sizes.sinks + sizes.window;
    case "recompute":
      return sizes.window;
    case "dense":
      return sizes.maxPositions;
  }
}

/** A cache policy that scores a token stream pushed in pieces. */
export interface CachePolicy {
  readonly sizes: PolicySizes;
  /** Tokens received so far. */
  readonly tokensSeen: number;
  /** Maximum tokens held in the cache (or run in one prefill, for `recompute`) at any time. */
  readonly peakCacheTokens: number;
  /** Whether the policy can take no more tokens (`dense` at its position limit). */
  readonly full: boolean;
  /** Add stream tokens; scores every token it can with whole chunks. */
  push(ids: ArrayLike<number>, onScore: ScoreCallback): Promise<void>;
  /** Score the tokens still buffered, as a last shorter chunk. */
  finish(onScore: ScoreCallback): Promise<void>;
  /** Release the kernel; the runtime stays with its owner. */
  dispose(): void;
}

/**
 * Create a cache policy over a runtime.
 *
 * @throws UsageError when the runtime's RoPE table is smaller than the policy needs
 * @example
 * ```ts
 * const policy = await createPolicy(runtime, { policy: "sink", sinks: 4, window: 28, chunkSize: 1, maxPositions: 32 });
 * const scores: TokenScore[] = [];
 * await policy.push([1, 403, 407], (score) => scores.push(score));
 * await policy.finish((score) => scores.push(score));
 * console.assert(scores.length === 2 && scores[0].index === 1);
 * policy.dispose();
 * ```
 */
export async function createPolicy(runtime: DecoderRuntime, sizes: PolicySizes): Promise<CachePolicy> {
  const needed = requiredPositions(sizes);
  if (needed > runtime.maxPositions) {
    throw new UsageError(
      `Cannot run the ${sizes.policy} policy: it needs positions up to ${needed - 1}, but the runtime ` +
        `was built for ${runtime.maxPositions}; load the model with maxPositions ≥ ${needed}`,
    );
  }
  if (sizes.policy === "recompute") return new RecomputePolicy(runtime, sizes);

  const { config } = runtime;
  const kernelSizes = sizes.policy === "dense"
    ? { sinks: 0, window: sizes.maxPositions }
    : { sinks: sizes.sinks, window: sizes.window };
  const kernel = await KvKernel.create({
    layers: config.nLayers,
    kvHeads: config.nKvHeads,
    headDim: config.headDim,
    ...kernelSizes,
    rope: config.rope,
    maxPositions: kernelPositions(runtime, kernelSizes.sinks + kernelSizes.window),
  });
  const session = new StreamingSession(runtime, kernel, {
    ...kernelSizes,
    chunkSize: Math.min(sizes.chunkSize, kernelSizes.window),
  });
  return new SessionPolicy(session, sizes);
}

/** Scores a stream with a {@linkcode StreamingSession}: the `sink`, `window` and `dense` policies. */
class SessionPolicy implements CachePolicy {
  readonly sizes: PolicySizes;
  tokensSeen = 0;
  peakCacheTokens = 0;
  readonly #session: StreamingSession;
  /** Tokens received but not yet run, fewer than a chunk between calls. */
  #pending: number[] = [];
  /** Logits of the last token run, `[vocab]`, which score the next token. */
  #lastLogits: Float32Array | undefined;

  constructor(session: StreamingSession, sizes: PolicySizes) {
    this.#session = session;
    this.sizes = sizes;
  }

  get full(): boolean {
    return this.sizes.policy === "dense" && this.tokensSeen >= this.sizes.maxPositions;
  }

  async push(ids: ArrayLike<number>, onScore: ScoreCallback): Promise<void> {
    const { chunkSize } = this.#session.sizes;
    for (let i = 0; i < ids.length; i++) {
      if (this.full) {
        throw new RangeError(
          `Cannot push more tokens to the dense policy: current stream length is ${this.tokensSeen}, ` +
            `the limit set by maxPositions; raise maxPositions or check full before pushing`,
        );
      }
      this.#pending.push(ids[i]);
      this.tokensSeen++;
      if (this.#pending.length === chunkSize) await this.#run(onScore);
    }
  }

  async finish(onScore: ScoreCallback): Promise<void> {
    if (this.#pending.length > 0) await this.#run(onScore);
  }

  dispose(): void {
    this.#session.kernel.dispose();
  }

  /** Run the pending chunk: score each of its tokens, then keep the last logits row. */
  async #run(onScore: ScoreCallback): Promise<void> {
    const chunk = this.#pending;
    this.#pending = [];
    const first = this.#session.stats.tokensIngested;
    let previous = this.#lastLogits;
    await this.#session.ingest(chunk, (t, logits) => {
      const index = first + t;
      if (previous !== undefined) onScore({ index, token: chunk[t], nll: negativeLogLikelihood(previous, chunk[t]) });
      previous = logits;
    });
    // The row is a view that the next run would overwrite, so keep a copy.
    this.#lastLogits = Float32Array.from(previous!);
    this.peakCacheTokens = Math.max(this.peakCacheTokens, this.#session.cacheLength);
  }
}

/** Scores each target with a fresh prefill of the `window` tokens before it. */
class RecomputePolicy implements CachePolicy {
  readonly sizes: PolicySizes;
  tokensSeen = 0;
  peakCacheTokens = 0;
  readonly full = false;
  readonly #runtime: DecoderRuntime;
  readonly #emptyPast: LayerKv[];
  /** The last tokens of the stream, at most `window + chunkSize`; `#history[0]` is token `#historyStart`. */
  #history: number[] = [];
  #historyStart = 0;
  /** Index of the next token to score. */
  #nextTarget = 1;

  constructor(runtime: DecoderRuntime, sizes: PolicySizes) {
    if (sizes.chunkSize > sizes.window) {
      throw new UsageError(
        `Invalid chunk size for the recompute policy: current value is ${sizes.chunkSize}; ` +
          `use at most the window (${sizes.window}) so every target sees at least one token`,
      );
    }
    this.#runtime = runtime;
    this.sizes = sizes;
    this.#emptyPast = Array.from({ length: runtime.config.nLayers }, () => ({
      key: new Float32Array(0),
      value: new Float32Array(0),
    }));
  }

  async push(ids: ArrayLike<number>, onScore: ScoreCallback): Promise<void> {
    for (let i = 0; i < ids.length; i++) {
      this.#history.push(ids[i]);
      this.tokensSeen++;
      if (this.tokensSeen - this.#nextTarget === this.sizes.chunkSize) await this.#run(this.sizes.chunkSize, onScore);
    }
  }

  async finish(onScore: ScoreCallback): Promise<void> {
    const remaining = this.tokensSeen - this.#nextTarget;
    if (remaining > 0) await this.#run(remaining, onScore);
  }

  dispose(): void {}

  /**
   * Score the next `count` targets with one prefill: the `window` tokens that end just
   * before the last target, at positions from 0.
   */
  async #run(count: number, onScore: ScoreCallback): Promise<void> {
    const first = this.#nextTarget;
    const last = first + count - 1;
    const start = Math.max(0, last - this.sizes.window);
    const context = this.#history.slice(start - this.#historyStart, last - this.#historyStart);
    const { logits } = await this.#runtime.run({
      inputIds: context,
      positionIds: context.map((_, p) => p),
      past: this.#emptyPast,
      pastLength: 0,
    });
    this.peakCacheTokens = Math.max(this.peakCacheTokens, context.length);

    const vocab = logits.length / context.length;
    for (let index = first; index <= last; index++) {
      const row = index - 1 - start;
      const token = this.#history[index - this.#historyStart];
      onScore({ index, token, nll: negativeLogLikelihood(logits.subarray(row * vocab, (row + 1) * vocab), token) });
    }
    this.#nextTarget = last + 1;

    // A later prefill starts at `nextTarget - window` or after it, so older tokens can go. A
    // shorter last chunk starts earliest. Trimming waits for a window's worth of old tokens.
    const keepFrom = Math.max(0, this.#nextTarget - this.sizes.window);
    if (keepFrom - this.#historyStart > this.sizes.window) {
      this.#history = this.#history.slice(keepFrom - this.#historyStart);
      this.#historyStart = keepFrom;
    }
  }
}
