/** `eval`: score every token of a stream under a KV cache policy and sum up its perplexity. */

import { ExitCode, SinkstreamError } from "../core/errors.ts";
import { createPolicy, type PolicySizes, type ScoreCallback, type TokenScore } from "../core/policies.ts";
import type { DecoderRuntime } from "../core/runtime.ts";
import { readLines } from "../core/text_lines.ts";
import { encodeStreamLine } from "./answer_stream.ts";
import type { TextTokenizer } from "../core/text_tokenizer.ts";

/** Result of {@linkcode runEval}. */
export interface EvalSummary {
  policy: PolicySizes["policy"];
  sinks: number;
  window: number;
  chunkSize: number;
  /** Tokens read from the stream, including unscored ones. */
  streamTokens: number;
  /** Tokens scored: every token after the first, up to where the policy stopped. */
  scoredTokens: number;
  /** Mean negative log-likelihood in nats, NaN when nothing was scored. */
  meanNll: number;
  /** `exp(meanNll)`. */
  perplexity: number;
  /** Scored tokens per second of model time (reading the input excluded). */
  tokensPerSecond: number;
  /** Maximum tokens in the cache at once, or in one prefill for `recompute`. */
  peakCacheTokens: number;
  /** Reason scoring ended before the input did, if it did. */
  stoppedEarly?: string;
}

/** Callbacks of {@linkcode runEval}. */
export interface EvalHooks {
  /** Receives the scores of each forward pass, in stream order. */
  onScores?: (scores: TokenScore[]) => void | Promise<void>;
}

/**
 * Score a token stream, read in pieces from `source`, under the cache policy `sizes`.
 *
 * The `dense` policy ends at its position limit: scoring stops there, the rest of the input
 * is not read, and the summary gives the reason in `stoppedEarly`.
 */
export async function runEval(
  runtime: DecoderRuntime,
  sizes: PolicySizes,
  source: AsyncIterable<ArrayLike<number>>,
  hooks: EvalHooks = {},
): Promise<EvalSummary> {
  const policy = await createPolicy(runtime, sizes);
  let scored = 0;
  let nllSum = 0;
  let modelSeconds = 0;
  let stoppedEarly: string | undefined;
  let batch: TokenScore[] = [];
  const collect: ScoreCallback = (score) => {
    batch.push(score);
    scored++;
    nllSum += score.nll;
  };
  const flush = async () => {
    if (batch.length === 0) return;
    const scores = batch;
    batch = [];
    await hooks.onScores?.(scores);
  };

  try {
    for await (const piece of source) {
      let ids = piece;
      if (policy.tokensSeen + ids.length > sizes.maxPositions && sizes.policy === "dense") {
        ids = Array.prototype.slice.call(ids, 0, sizes.maxPositions - policy.tokensSeen);
      }
      const started = performance.now();
      await policy.push(ids, collect);
      modelSeconds += (performance.now() - started) / 1000;
      await flush();
      if (policy.full) {
        stoppedEarly = `the dense policy stopped at ${sizes.maxPositions} tokens, the rows of its RoPE table; ` +
          `raise --max-positions to score further`;
        break;
      }
    }
    const started = performance.now();
    await policy.finish(collect);
    modelSeconds += (performance.now() - started) / 1000;
    await flush();
  } finally {
    policy.dispose();
  }

  const meanNll = scored > 0 ? nllSum / scored : NaN;
  return {
    policy: sizes.policy,
    sinks: sizes.sinks,
    window: sizes.window,
    chunkSize: sizes.chunkSize,
    streamTokens: policy.tokensSeen,
    scoredTokens: scored,
    meanNll,
    perplexity: Math.exp(meanNll),
    tokensPerSecond: modelSeconds > 0 ? scored / modelSeconds : 0,
    peakCacheTokens: policy.peakCacheTokens,
    stoppedEarly,
  };
}

/** Tokens per piece when a text or an id list in memory is handed to {@linkcode runEval}. */
const PIECE_TOKENS = 4096;

/** Yield `ids` in pieces of {@link PIECE_TOKENS}. */
export async function* piecesOf(ids: ArrayLike<number>): AsyncGenerator<ArrayLike<number>> {
  for (let start = 0; start < ids.length; start += PIECE_TOKENS) {
    yield Array.prototype.slice.call(ids, start, start + PIECE_TOKENS) as number[];
  }
}

/**
 * Tokenize a text byte stream line by line, as the other commands ingest text: the first
 * line with BOS and the SentencePiece space prefix, later lines with neither. Memory stays
 * bounded however long the input runs.
 */
export async function* tokenizeLines(
  tokenizer: TextTokenizer,
  chunks: AsyncIterable<Uint8Array>,
): AsyncGenerator<number[]> {
  let first = true;
  for await (const line of readLines(chunks)) {
    const ids = encodeStreamLine(tokenizer, line, first);
    first = false;
    if (ids.length > 0) yield ids;
  }
}

/**
 * Parse whitespace-separated token ids from a stream of byte chunks, yielding the ids of each
 * chunk as soon as they are complete, so an endless input is never held whole.
 *
 * @throws SinkstreamError (input exit code) on a word that is not a whole number below `vocabSize`
 */
export async function* parseIdStream(
  chunks: AsyncIterable<Uint8Array>,
  vocabSize: number,
): AsyncGenerator<number[]> {
  const decoder = new TextDecoder();
  let carry = "";
  let count = 0;
  const parseWords = (words: string[]): number[] => {
    const ids: number[] = [];
    for (const word of words) {
      if (word === "") continue;
      const id = Number(word);
      if (!/^\d+$/.test(word) || id >= vocabSize) {
        throw new SinkstreamError(
          `Invalid token id at index ${count}: current value is ${JSON.stringify(word.slice(0, 40))}; ` +
            `--ids expects whitespace-separated whole numbers below the vocabulary size ${vocabSize}`,
          ExitCode.input,
        );
      }
      ids.push(id);
      count++;
    }
    return ids;
  };

  for await (const chunk of chunks) {
    const text = carry + decoder.decode(chunk, { stream: true });
    const words = text.split(/\s+/);
    // The last word may continue in the next chunk.
    carry = words.pop() ?? "";
    const ids = parseWords(words);
    if (ids.length > 0) yield ids;
  }
  const ids = parseWords((carry + decoder.decode()).split(/\s+/));
  if (ids.length > 0) yield ids;
}
