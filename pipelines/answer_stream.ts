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
}

/**
 * Tokenize one line of a stream. The first line gets BOS and the tokenizer's dummy-prefix
 * space. Later lines are tokenized on their own without either, which equals tokenizing the
 * whole text when no vocabulary piece spans a line break.
 */
export function encodeStreamLine(tokenizer: TextTokenizer, line: string, first: boolean): number[] {
  return tokenizer.encode(line, { addBos: first, addSpacePrefix: first });
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
    this.archiver?.track(line, ids.length);
    for (const id of ids) this.#pending.push(id);
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
}

/** Ingest `lines` and answer the request every `every` lines and at the end. */
export async function runAnswerStream(
  model: LoadedModel,
  session: StreamingSession,
  lines: AsyncIterable<string>,
  run: AnswerStreamRun,
): Promise<Answer[]> {
  const ingestor = new LineIngestor(model, session, run.archiver);
  const answers: Answer[] = [];
  for await (const line of lines) {
    await ingestor.addLine(line);
    run.onProgress?.(ingestor.lines);
    if (run.every && ingestor.lines % run.every === 0) {
      await ingestor.flush();
      answers.push(await answer(model, session, ingestor, run, false));
    }
  }
  await ingestor.flush();
  // The final answer is skipped when an --every answer was just given for the same lines.
  const answeredLast = answers.length > 0 && answers[answers.length - 1].lines === ingestor.lines;
  if (!answeredLast) answers.push(await answer(model, session, ingestor, run, true));
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
