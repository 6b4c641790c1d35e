/**
 * The pipeline behind `summarize` and `ask`: ingest a line stream into the sink cache and,
 * every N lines and at the end, generate an answer to a request about what the cache holds.
 */

import type { LoadedModel } from "../core/model.ts";
import { type RecalledLine, type Request, renderPrompt } from "../core/prompt.ts";
import type { Sampler } from "../core/sampler.ts";
import type { StreamingSession } from "../core/session.ts";
import { assertPromptFits } from "../core/stop_text.ts";
import type { TextTokenizer } from "../core/text_tokenizer.ts";
import { generateText } from "./generate.ts";
import type { LineArchiver } from "./line_archiver.ts";
import { promptTokenBudget, type RecallHit, recallForPrompt, type RecallSettings } from "./recall.ts";

/** One generated summary or answer. */
export interface Answer {
  kind: Request["kind"];
  /** Input lines read when the answer was asked for. */
  lines: number;
  /** Stream tokens ingested when the answer was asked for. */
  tokens: number;
  /** Tokens in the cache when the answer was asked for. */
  cacheTokens: number;
  text: string;
  /** True for the answer given at the end of the input. */
  final: boolean;
  /** Archived lines placed in the prompt, best match first; empty when recall is off. */
  recalled: RecallHit[];
  /** Archive matches left out of the prompt because they did not fit its token budget. */
  recallDropped: number;
  /** Tokens of the prompt, recalled lines included. */
  promptTokens: number;
}

/** Options of {@linkcode runAnswerStream}. */
export interface AnswerStreamRun {
  request: Request;
  /** Also answer after every this many input lines. */
  every?: number;
  maxTokens: number;
  sampler: Sampler;
  /** Receives answer text as it is generated; called with `final` at the end of each answer. */
  onAnswerText?: (text: string) => void;
  onAnswerStart?: (answer: Omit<Answer, "text">) => void;
  onAnswer?: (answer: Answer) => void;
  /** Called after each ingested chunk of input. */
  onProgress?: (lines: number) => void;
  /** Archiver that receives the lines leaving the window. */
  archiver?: LineArchiver;
  /** Archive search at question time; off when undefined. */
  recall?: RecallSettings;
  /**
   * {@linkcode AnswerStream} only: after the final answer, take the tokens that wait for a
   * full chunk out of the cache again, so that a state saved afterwards resumes the stream
   * with the same chunks as an uninterrupted run.
   */
  resumable?: boolean;
}

/**
 * Tokenize one line of a stream. The first line gets BOS and the tokenizer's dummy-prefix
 * space. Later lines are tokenized on their own without either, which equals tokenizing the
 * whole text when no vocabulary piece spans a line break.
 */
export function encodeStreamLine(tokenizer: TextTokenizer, line: string, first: boolean): number[] {
  return tokenizer.encode(line, { addBos: first, addSpacePrefix: first });
}

/** Line and token state of a {@linkcode LineIngestor}, for a state file. */
export interface LineIngestorState {
  /** Input lines (pieces of long lines counted one each) tokenized so far. */
  lines: number;
  /** Whether the first line, which carries BOS, was tokenized. */
  started: boolean;
  /** Token ids tokenized but not ingested yet, fewer than one chunk. */
  pendingTokens: number[];
}

/**
 * Feeds text lines to a session as tokens, in whole chunks, and hands the lines that left the
 * window to an optional {@linkcode LineArchiver}.
 */
export class LineIngestor {
  readonly model: LoadedModel;
  readonly session: StreamingSession;
  readonly archiver: LineArchiver | undefined;
  #pending: number[] = [];
  #started = false;
  lines = 0;

  constructor(model: LoadedModel, session: StreamingSession, archiver?: LineArchiver) {
    this.model = model;
    this.session = session;
    this.archiver = archiver;
  }

  /** Tokenize one line (see {@linkcode encodeStreamLine}) and ingest the whole chunks that are ready. */
  async addLine(line: string): Promise<void> {
    const ids = encodeStreamLine(this.model.tokenizer, line, !this.#started);
    this.#started = true;
    this.lines++;
    for (const id of ids) this.#pending.push(id);
    if (this.archiver !== undefined) {
      // Pass the stream index one past the line's last token. That is the number of tokens
      // ingested (evictions plus cache length, also after a restored state) plus those pending.
      const { evictions } = this.session.stats;
      this.archiver.trackIngested(line, evictions, this.session.cacheLength + this.#pending.length, this.lines);
    }
    const { chunkSize } = this.session.sizes;
    const ready = this.#pending.length - (this.#pending.length % chunkSize);
    if (ready > 0) {
      await this.session.ingest(this.#pending.splice(0, ready));
      this.archiver?.release(this.session.stats.evictions);
    }
  }

  /** Ingest the tokens still waiting for a full chunk. */
  async flush(): Promise<void> {
    if (this.#pending.length > 0) {
      await this.session.ingest(this.#pending.splice(0));
      this.archiver?.release(this.session.stats.evictions);
    }
  }

  /** Whether any input has been tokenized. */
  get started(): boolean {
    return this.#started;
  }

  /** Number of tokens waiting for a full chunk. */
  get pendingTokens(): number {
    return this.#pending.length;
  }

  /** Return the line count, the BOS flag and the pending tokens, for a state file. */
  exportState(): LineIngestorState {
    return { lines: this.lines, started: this.#started, pendingTokens: [...this.#pending] };
  }

  /**
   * Bring back the state of `exportState`.
   *
   * @throws RangeError when the state is malformed or a pending token is outside the vocabulary
   */
  importState(state: LineIngestorState): void {
    const vocab = this.model.config.vocabSize;
    const { lines, started, pendingTokens } = state ?? {};
    if (!Number.isSafeInteger(lines) || lines < 0 || typeof started !== "boolean" || !Array.isArray(pendingTokens)) {
      throw new RangeError(`Invalid saved line state: current value is ${JSON.stringify(state)}; it needs lines, started and pendingTokens`);
    }
    const invalid = pendingTokens.find((id) => !Number.isSafeInteger(id) || id < 0 || id >= vocab);
    if (invalid !== undefined) {
      throw new RangeError(`Invalid saved pending token: current value is ${JSON.stringify(invalid)}; the model's vocabulary has ${vocab} ids`);
    }
    this.lines = lines;
    this.#started = started;
    this.#pending = [...pendingTokens];
  }
}

/** State of an {@linkcode AnswerStream}, for a state file. */
export interface AnswerStreamState {
  ingestor: LineIngestorState;
  /** Line count at the last `every` answer; absent before the first. */
  everyAnswerLines?: number;
}

/** The parts of a stream that ingesting the pending tokens changes. */
interface SavedIngest {
  /** Bytes of `KvKernel.exportState`. */
  kernel: Uint8Array;
  evictions: number;
  tokensIngested: number;
  ingestor: LineIngestorState;
}

/**
 * Ingests a line stream and answers the request every `run.every` lines and once at the end.
 *
 * The final answer needs every line in the cache, so it ingests the tokens that wait for a
 * full chunk first. With `run.resumable` the cache and counters go back to their state before
 * that, and the tokens wait again, so a state saved after {@linkcode finish} continues the
 * chunks exactly as an uninterrupted stream would.
 *
 * @example
 * ```ts
 * const stream = new AnswerStream(model, session, { request: { kind: "summary" }, maxTokens: 16, sampler, every: 100 });
 * for (const line of lines) await stream.addLine(line);
 * const final = await stream.finish();
 * assert(final === undefined || final.final);
 * ```
 */
export class AnswerStream {
  readonly model: LoadedModel;
  readonly session: StreamingSession;
  readonly run: AnswerStreamRun;
  readonly ingestor: LineIngestor;
  /** Line count at the last `every` answer. */
  #everyAnswerLines: number | undefined;

  constructor(model: LoadedModel, session: StreamingSession, run: AnswerStreamRun) {
    this.model = model;
    this.session = session;
    this.run = run;
    this.ingestor = new LineIngestor(model, session, run.archiver);
  }

  /** Input lines tokenized so far, across a restored state. */
  get lines(): number {
    return this.ingestor.lines;
  }

  /** Ingest one line, and answer when it completes `every` lines. */
  async addLine(line: string): Promise<Answer | undefined> {
    await this.ingestor.addLine(line);
    this.run.onProgress?.(this.ingestor.lines);
    if (!this.run.every || this.ingestor.lines % this.run.every !== 0) return undefined;
    await this.ingestor.flush();
    const result = await answer(this.model, this.session, this.ingestor, this.run, false);
    this.#everyAnswerLines = this.ingestor.lines;
    return result;
  }

  /**
   * Give the final answer, unless an `every` answer was just given for the same lines. Call
   * it once, after the last line.
   */
  async finish(): Promise<Answer | undefined> {
    // An `every` answer flushed the pending tokens, so none wait when it is skipped.
    if (this.#everyAnswerLines === this.ingestor.lines) return undefined;
    const before = this.run.resumable && this.ingestor.pendingTokens > 0 ? this.#saveIngest() : undefined;
    await this.ingestor.flush();
    try {
      return await answer(this.model, this.session, this.ingestor, this.run, true);
    } finally {
      if (before !== undefined) this.#restoreIngest(before);
    }
  }

  /** Return what ingesting the pending tokens changes: the cache, two counters and the ingestor. */
  #saveIngest(): SavedIngest {
    const { evictions, tokensIngested } = this.session.stats;
    return { kernel: this.session.kernel.exportState(), evictions, tokensIngested, ingestor: this.ingestor.exportState() };
  }

  #restoreIngest(saved: SavedIngest): void {
    this.session.kernel.importState(saved.kernel);
    this.session.stats.evictions = saved.evictions;
    this.session.stats.tokensIngested = saved.tokensIngested;
    this.ingestor.importState(saved.ingestor);
  }

  /** Return the line, token and answer state, for a state file. */
  exportState(): AnswerStreamState {
    return { ingestor: this.ingestor.exportState(), everyAnswerLines: this.#everyAnswerLines };
  }

  /**
   * Bring back the state of `exportState`.
   *
   * @throws RangeError when the state is malformed
   */
  importState(state: AnswerStreamState): void {
    const everyAnswerLines = state?.everyAnswerLines;
    if (everyAnswerLines !== undefined && (!Number.isSafeInteger(everyAnswerLines) || everyAnswerLines < 0)) {
      throw new RangeError(`Invalid saved answer line count: current value is ${JSON.stringify(everyAnswerLines)}; it needs a whole number`);
    }
    this.ingestor.importState(state?.ingestor);
    this.#everyAnswerLines = everyAnswerLines;
  }
}

/** Ingest `lines` and answer the request every `every` lines and at the end. */
export async function runAnswerStream(
  model: LoadedModel,
  session: StreamingSession,
  lines: AsyncIterable<string>,
  run: AnswerStreamRun,
): Promise<Answer[]> {
  const answers: Answer[] = [];
  const onAnswer = (result: Answer) => {
    answers.push(result);
    run.onAnswer?.(result);
  };
  const stream = new AnswerStream(model, session, { ...run, onAnswer });
  for await (const line of lines) await stream.addLine(line);
  await stream.finish();
  return answers;
}

/** The part of a line feeder that {@linkcode answer} reads: lines so far, whether BOS went in, the archiver. */
export type AnswerSource = Pick<LineIngestor, "lines" | "started" | "archiver">;

/**
 * Generate the answer to `run.request` about what the cache holds now, on a snapshot, so the
 * stream continues as if nothing had been asked. Tokens the feeder has not ingested yet are
 * not seen, so flush it first. Streams text through `run.onAnswerText` and returns the answer.
 */
export async function answer(
  model: LoadedModel,
  session: StreamingSession,
  ingestor: AnswerSource,
  run: AnswerStreamRun,
  final: boolean,
): Promise<Answer> {
  const { tokenizer } = model;
  const templateTokens = {
    bos: tokenizer.bosId === undefined ? undefined : tokenizer.pieceText(tokenizer.bosId),
    eos: tokenizer.eosId === undefined ? undefined : tokenizer.pieceText(tokenizer.eosId),
  };
  // An empty stream still needs BOS in front of the prompt.
  const encodePrompt = (recalled: readonly RecalledLine[]) =>
    tokenizer.encode(renderPrompt(run.request, model.chatTemplate, templateTokens, recalled), {
      addBos: !ingestor.started,
      addSpacePrefix: false,
      parseSpecial: model.chatTemplate !== undefined,
    });

  let promptIds: number[];
  let recalled: RecallHit[] = [];
  let recallDropped = 0;
  if (run.recall) {
    // Lines still in the writer's buffer must be searchable.
    run.archiver?.flush();
    const budget = promptTokenBudget(session.sizes.window, run.maxTokens);
    const countTokens = (text: string) => tokenizer.encode(text, { addBos: false, addSpacePrefix: false }).length;
    const result = recallForPrompt(run.recall, run.request, budget, encodePrompt, countTokens);
    promptIds = result.promptIds;
    recalled = result.lines;
    recallDropped = result.droppedForBudget;
  } else {
    promptIds = encodePrompt([]);
  }

  assertPromptFits(promptIds.length, run.maxTokens, session.sizes.window);

  const header = {
    kind: run.request.kind,
    lines: ingestor.lines,
    tokens: session.stats.tokensIngested,
    cacheTokens: session.cacheLength,
    final,
    recalled,
    recallDropped,
    promptTokens: promptIds.length,
  };
  run.onAnswerStart?.(header);

  const { text } = await generateText(model, session, promptIds, {
    maxTokens: run.maxTokens,
    sampler: run.sampler,
    onText: (piece) => run.onAnswerText?.(piece),
  });

  const result = { ...header, text };
  run.onAnswer?.(result);
  return result;
}
