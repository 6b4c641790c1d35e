/**
 * The pipeline behind `watch`: ingest an endless line stream and answer a request (a summary
 * by default) every N lines, every interval, and at once when a line matches a trigger
 * pattern or scores above a threshold.
 *
 * Lines go in one at a time through a {@linkcode LineScorer}, so every line is in the cache
 * before the next check, and a line's score is known as soon as it is ingested.
 */

import type { LoadedModel } from "../core/model.ts";
import type { Request } from "../core/prompt.ts";
import type { Sampler } from "../core/sampler.ts";
import type { StreamingSession } from "../core/session.ts";
import { type Answer, answer, type AnswerStreamRun } from "./answer_stream.ts";
import type { LineArchiver } from "./line_archiver.ts";
import type { RecallSettings } from "./recall.ts";
import { LineScorer, type LineScore, type LineScorerState } from "./score.ts";

/** Why `watch` answered. */
export type WatchReason = "every" | "interval" | "trigger" | "threshold" | "final";

/** One answer of `watch`, with what caused it. */
export interface WatchEvent {
  reason: WatchReason;
  answer: Answer;
  /** The line that matched the trigger or crossed the threshold. */
  cause?: LineScore;
}

/** Options of {@linkcode Watcher}. */
export interface WatchRun {
  request: Request;
  maxTokens: number;
  sampler: Sampler;
  /** Answer after every this many input lines. */
  every?: number;
  /** Answer every this many milliseconds when new lines came in since the last answer. */
  intervalMs?: number;
  /** Answer at once after a line that matches. */
  trigger?: RegExp;
  /** Answer at once after a line whose mean NLL is above this many nats. */
  threshold?: number;
  onAnswerStart?: (reason: WatchReason, answer: Omit<Answer, "text">) => void;
  onAnswerText?: (text: string) => void;
  onEvent?: (event: WatchEvent) => void;
  /** Archiver that receives the lines leaving the window. */
  archiver?: LineArchiver;
  /** Archive search for each answer; off when undefined. */
  recall?: RecallSettings;
}

/** Line and timer state of a {@linkcode Watcher}, for a state file. */
export interface WatcherState {
  scorer: LineScorerState;
  /** Lines ingested since the last answer. */
  linesSinceAnswer: number;
  /** Lines counted towards the next `every` answer. */
  linesSinceEvery: number;
}

/** Drives one session through a `watch` run; see the module documentation. */
export class Watcher {
  readonly model: LoadedModel;
  readonly session: StreamingSession;
  readonly run: WatchRun;
  readonly scorer: LineScorer;
  linesSinceAnswer = 0;
  linesSinceEvery = 0;
  #lastAnswerMs = performance.now();

  constructor(model: LoadedModel, session: StreamingSession, run: WatchRun) {
    this.model = model;
    this.session = session;
    this.run = run;
    this.scorer = new LineScorer(model, session, { scoring: run.threshold !== undefined });
  }

  /** Ingest one line, then answer when it triggers, crosses the threshold or completes `every`. */
  async addLine(text: string, last = false): Promise<LineScore> {
    const score = await this.scorer.addLine(text, last);
    const { archiver } = this.run;
    if (archiver !== undefined) {
      archiver.trackIngested(text, this.session.stats.evictions, this.session.cacheLength, score.line);
      archiver.release(this.session.stats.evictions);
    }
    this.linesSinceAnswer++;
    if (text.endsWith("\n") || last) this.linesSinceEvery++;

    const { trigger, threshold, every } = this.run;
    if (trigger !== undefined) {
      trigger.lastIndex = 0;
      if (trigger.test(text)) {
        await this.answerNow("trigger", score);
        return score;
      }
    }
    if (threshold !== undefined && score.meanNll !== null && score.meanNll > threshold) {
      await this.answerNow("threshold", score);
      return score;
    }
    if (every !== undefined && this.linesSinceEvery >= every) {
      await this.answerNow("every");
    }
    return score;
  }

  /** Milliseconds until the next interval answer is due, or undefined without `intervalMs`. */
  msUntilInterval(now = performance.now()): number | undefined {
    if (this.run.intervalMs === undefined) return undefined;
    return Math.max(0, this.#lastAnswerMs + this.run.intervalMs - now);
  }

  /** Answer if the interval has passed and new lines came in; otherwise restart the interval. */
  async checkInterval(now = performance.now()): Promise<void> {
    if (this.msUntilInterval(now) !== 0) return;
    if (this.linesSinceAnswer > 0) await this.answerNow("interval");
    else this.#lastAnswerMs = now;
  }

  /** Give the final answer when lines came in since the last one. */
  async finish(): Promise<WatchEvent | undefined> {
    if (this.linesSinceAnswer === 0) return undefined;
    return await this.answerNow("final");
  }

  /**
   * Generate the answer to the run's request about what the cache holds now, report it
   * through the callbacks and return it. The cache is left as it was.
   */
  async answerNow(reason: WatchReason, cause?: LineScore): Promise<WatchEvent> {
    const run: AnswerStreamRun = {
      request: this.run.request,
      maxTokens: this.run.maxTokens,
      sampler: this.run.sampler,
      onAnswerStart: (header) => this.run.onAnswerStart?.(reason, header),
      onAnswerText: this.run.onAnswerText,
      archiver: this.run.archiver,
      recall: this.run.recall,
    };
    const result = await answer(this.model, this.session, this.scorer, run, reason === "final");
    this.linesSinceAnswer = 0;
    if (reason === "every") this.linesSinceEvery = 0;
    this.#lastAnswerMs = performance.now();
    const event: WatchEvent = { reason, answer: result, cause };
    this.run.onEvent?.(event);
    return event;
  }

  /** Return the line state and the scorer's logits row, for a state file. */
  exportState(): { state: WatcherState; lastLogits?: Uint8Array } {
    const { state: scorer, lastLogits } = this.scorer.exportState();
    return {
      state: { scorer, linesSinceAnswer: this.linesSinceAnswer, linesSinceEvery: this.linesSinceEvery },
      lastLogits,
    };
  }

  /** Bring back the state of `exportState`. */
  importState(state: WatcherState, lastLogits?: Uint8Array): void {
    this.scorer.importState(state.scorer, lastLogits);
    this.linesSinceAnswer = state.linesSinceAnswer;
    this.linesSinceEvery = state.linesSinceEvery;
  }
}
