/**
 * The pipeline behind `summarize` and `ask`: ingest a line stream into the sink cache and,
 * every N lines and at the end, generate an answer to a request about what the cache holds.
 */

import type { LoadedModel } from "../core/model.ts";
import { type Request, renderPrompt } from "../core/prompt.ts";
import type { Sampler } from "../core/sampler.ts";
import type { StreamingSession } from "../core/session.ts";
import { Detokenizer } from "../core/tokenizer.ts";

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
}

/** Feeds text lines to a session as tokens, in whole chunks. */
export class LineIngestor {
  readonly model: LoadedModel;
  readonly session: StreamingSession;
  #pending: number[] = [];
  #started = false;
  lines = 0;

  constructor(model: LoadedModel, session: StreamingSession) {
    this.model = model;
    this.session = session;
  }

  /**
   * Tokenize one line and ingest the whole chunks that are ready.
   *
   * The first line of the stream gets BOS and the tokenizer's dummy-prefix space; later lines
   * are tokenized on their own without either, which equals tokenizing the whole text when no
   * vocabulary piece spans a line break.
   */
  async addLine(line: string): Promise<void> {
    const ids = this.model.tokenizer.encode(line, { addBos: !this.#started, addSpacePrefix: !this.#started });
    this.#started = true;
    this.lines++;
    for (const id of ids) this.#pending.push(id);
    const { chunkSize } = this.session.sizes;
    const ready = this.#pending.length - (this.#pending.length % chunkSize);
    if (ready > 0) await this.session.ingest(this.#pending.splice(0, ready));
  }

  /** Ingest the tokens still waiting for a full chunk. */
  async flush(): Promise<void> {
    if (this.#pending.length > 0) await this.session.ingest(this.#pending.splice(0));
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
  const ingestor = new LineIngestor(model, session);
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
  answers.push(await answer(model, session, ingestor, run, true));
  return answers;
}

async function answer(
  model: LoadedModel,
  session: StreamingSession,
  ingestor: LineIngestor,
  run: AnswerStreamRun,
  final: boolean,
): Promise<Answer> {
  const { tokenizer } = model;
  const promptText = renderPrompt(run.request, model.chatTemplate, {
    bos: tokenizer.bosId === undefined ? undefined : tokenizer.pieceText(tokenizer.bosId),
    eos: tokenizer.eosId === undefined ? undefined : tokenizer.pieceText(tokenizer.eosId),
  });
  // An empty stream still needs BOS in front of the prompt.
  const promptIds = tokenizer.encode(promptText, {
    addBos: !ingestor.started,
    addSpacePrefix: false,
    parseSpecial: model.chatTemplate !== undefined,
  });
  const header = {
    kind: run.request.kind,
    lines: ingestor.lines,
    tokens: session.stats.tokensIngested,
    cacheTokens: session.cacheLength,
    final,
  };
  run.onAnswerStart?.(header);

  const detokenizer = new Detokenizer(tokenizer);
  let text = "";
  await session.generate(promptIds, {
    maxTokens: run.maxTokens,
    sampler: run.sampler,
    stopIds: tokenizer.eosId === undefined ? [] : [tokenizer.eosId],
    onToken: (id) => {
      const piece = detokenizer.push(id);
      text += piece;
      if (piece) run.onAnswerText?.(piece);
    },
  });
  const rest = detokenizer.flush();
  text += rest;
  if (rest) run.onAnswerText?.(rest);

  const result = { ...header, text };
  run.onAnswer?.(result);
  return result;
}
