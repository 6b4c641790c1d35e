/**
 * The pipeline behind `score`: every input line's negative log-likelihood (NLL) under the
 * model, in the context of the stream before it, so that surprising lines stand out.
 *
 * Each line is ingested as soon as it arrives (in chunks of at most `chunkSize` tokens within
 * the line), so its score is known at once. The logits of token t predict token t + 1, so a
 * line's first token is scored with the last logits row of the line before it. The first line
 * of the stream starts with BOS, whose logits predict its first token. A tokenizer without
 * BOS leaves the first token of the stream without a prediction, so it is left out of the
 * mean and max.
 */

import type { LoadedModel } from "../core/model.ts";
import type { StreamingSession } from "../core/session.ts";
import { encodeStreamLine } from "./answer_stream.ts";

/** Score of one input line (or one piece of a line longer than the reader's limit). */
export interface LineScore {
  /** 1-based number of the input line; the pieces of a split line share it. */
  line: number;
  /** The line's text, with its "\n" when it has one. */
  text: string;
  /** Tokens of the line, BOS not counted. */
  tokens: number;
  /** Mean NLL of the line's tokens in nats, or null when no token of it was predicted. */
  meanNll: number | null;
  /** Largest NLL of one of the line's tokens in nats, or null like `meanNll`. */
  maxNll: number | null;
}

/** Line state of a {@linkcode LineScorer}, for a state file. */
export interface LineScorerState {
  /** Input lines completed so far. */
  lines: number;
  started: boolean;
}

/** Feeds lines to a session one at a time and scores each with the logits of the stream. */
export class LineScorer {
  readonly model: LoadedModel;
  readonly session: StreamingSession;
  /** Completed input lines, for answers and archives. */
  lines = 0;
  /** Always undefined: present so a scorer can stand in for a `LineIngestor` in `answer`. */
  readonly archiver = undefined;
  #started = false;
  /** Logits of the last ingested token, `[vocab]`, which predict the next line's first token. */
  #lastLogits: Float32Array | undefined;

  /** Whether lines are scored; without scores the session computes one logits row per chunk. */
  readonly scoring: boolean;

  constructor(model: LoadedModel, session: StreamingSession, options: { scoring?: boolean } = {}) {
    this.model = model;
    this.session = session;
    this.scoring = options.scoring ?? true;
  }

  /** Whether any input has been tokenized. */
  get started(): boolean {
    return this.#started;
  }

  /**
   * Tokenize and ingest one line, and return its score. A piece without "\n" is the leading
   * part of a longer line, and the next piece continues the same line number, unless `last`
   * marks it as the end of the input.
   */
  async addLine(text: string, last = false): Promise<LineScore> {
    const first = !this.#started;
    const ids = encodeStreamLine(this.model.tokenizer, text, first);
    this.#started = true;
    const line = this.lines + 1;
    const ended = text.endsWith("\n") || last;
    if (ended) this.lines++;

    // With BOS in front, the BOS logits predict the line's first token.
    const bos = this.model.tokenizer.bosId;
    const skipped = first && bos !== undefined && ids[0] === bos ? 1 : 0;
    let sum = 0;
    let max = -Infinity;
    let predicted = 0;
    const add = (nll: number) => {
      sum += nll;
      if (nll > max) max = nll;
      predicted++;
    };
    if (ids.length > 0 && skipped === 0 && this.#lastLogits !== undefined) add(nllOf(this.#lastLogits, ids[0]));

    if (ids.length > 0 && !this.scoring) {
      await this.session.ingest(ids);
    } else if (ids.length > 0) {
      await this.session.ingest(ids, (index, logits) => {
        if (index + 1 < ids.length) add(nllOf(logits, ids[index + 1]));
        else this.#lastLogits = Float32Array.from(logits);
      });
    }
    return {
      line,
      text,
      tokens: ids.length - skipped,
      meanNll: predicted > 0 ? sum / predicted : null,
      maxNll: predicted > 0 ? max : null,
    };
  }

  /** Return the line state and the last logits row, for a state file. */
  exportState(): { state: LineScorerState; lastLogits?: Uint8Array } {
    const state = { lines: this.lines, started: this.#started };
    if (this.#lastLogits === undefined) return { state };
    return { state, lastLogits: new Uint8Array(this.#lastLogits.slice().buffer) };
  }

  /**
   * Bring back the state of `exportState`.
   *
   * @throws RangeError when the logits row does not match the model's vocabulary
   */
  importState(state: LineScorerState, lastLogits?: Uint8Array): void {
    if (lastLogits !== undefined) {
      const vocab = this.model.config.vocabSize;
      if (lastLogits.length !== vocab * 4) {
        throw new RangeError(
          `Invalid saved logits row: current length is ${lastLogits.length} bytes; the model's vocabulary of ${vocab} needs ${vocab * 4}`,
        );
      }
      this.#lastLogits = new Float32Array(lastLogits.slice().buffer);
    } else {
      this.#lastLogits = undefined;
    }
    this.lines = state.lines;
    this.#started = state.started;
  }
}

/** Return `-log softmax(logits)[id]` in nats, computed in float64. */
export function nllOf(logits: Float32Array, id: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return Math.log(sum) + max - logits[id];
}

/** Bin width of {@linkcode TopPercentFilter} in nats. */
export const TOP_BIN_NATS = 0.01;
/** Scores at or above this many nats share the last bin of {@linkcode TopPercentFilter}. */
export const TOP_MAX_NATS = 64;

/**
 * Decides online whether a score is among the highest `percent` percent of the scores seen so
 * far, itself included, with a histogram of fixed bins so memory stays constant over an
 * endless stream. Scores within one bin (0.01 nats) count as ties, and a tie passes when the
 * scores strictly above it leave room. Early in a stream few scores are known, so more lines
 * pass than later.
 */
export class TopPercentFilter {
  readonly percent: number;
  #bins: Uint32Array;
  #count = 0;

  constructor(percent: number) {
    if (!(percent > 0 && percent <= 100)) {
      throw new RangeError(`Invalid top percentage: current value is ${percent}; use a number above 0 and at most 100`);
    }
    this.percent = percent;
    this.#bins = new Uint32Array(Math.ceil(TOP_MAX_NATS / TOP_BIN_NATS) + 1);
  }

  /** Add a score and return whether it is in the top `percent` percent so far. */
  accept(score: number): boolean {
    const bin = Math.min(this.#bins.length - 1, Math.max(0, Math.floor(score / TOP_BIN_NATS)));
    this.#bins[bin]++;
    this.#count++;
    let above = 0;
    for (let i = this.#bins.length - 1; i > bin; i--) above += this.#bins[i];
    return above < Math.ceil((this.percent / 100) * this.#count);
  }

  /** Return the histogram, for a state file. */
  exportState(): { count: number; bins: Uint8Array } {
    return { count: this.#count, bins: new Uint8Array(this.#bins.slice().buffer) };
  }

  /** Bring back the state of `exportState`. */
  importState(count: number, bins: Uint8Array): void {
    if (bins.length !== this.#bins.length * 4) {
      throw new RangeError(
        `Invalid saved histogram: current length is ${bins.length} bytes; it needs ${this.#bins.length * 4}`,
      );
    }
    this.#bins = new Uint32Array(bins.slice().buffer);
    this.#count = count;
  }
}
