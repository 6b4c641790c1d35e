/** `generate`: continue a prompt and stream the continuation. */

import type { LoadedModel } from "../core/model.ts";
import type { Sampler } from "../core/sampler.ts";
import type { StreamingSession } from "../core/session.ts";
import { Detokenizer } from "../core/tokenizer.ts";

/** Options of {@linkcode runGenerate}. */
export interface GenerateRun {
  prompt: string;
  maxTokens: number;
  sampler: Sampler;
  /** Receives the continuation text as it is generated, whole characters only. */
  onText: (text: string) => void;
}

/** Generate a continuation of `prompt` and return its token ids and text. */
export async function runGenerate(
  model: LoadedModel,
  session: StreamingSession,
  run: GenerateRun,
): Promise<{ ids: number[]; text: string }> {
  const promptIds = model.tokenizer.encode(run.prompt, { addBos: true, addSpacePrefix: true });
  const detokenizer = new Detokenizer(model.tokenizer);
  let text = "";
  const ids = await session.generate(promptIds, {
    maxTokens: run.maxTokens,
    sampler: run.sampler,
    stopIds: model.tokenizer.eosId === undefined ? [] : [model.tokenizer.eosId],
    onToken: (id) => {
      const piece = detokenizer.push(id);
      text += piece;
      if (piece) run.onText(piece);
    },
  });
  const rest = detokenizer.flush();
  text += rest;
  if (rest) run.onText(rest);
  return { ids, text };
}
