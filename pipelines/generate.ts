/** `generate`: continue a prompt and stream the continuation. */

import type { LoadedModel } from "../core/model.ts";
import type { Sampler } from "../core/sampler.ts";
import type { StreamingSession } from "../core/session.ts";
import { StopTextFilter } from "../core/stop_text.ts";
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
  return await generateText(model, session, promptIds, run);
}

/**
 * Generate after `promptIds` on the session's snapshot and return the ids and the text.
 *
 * Generation ends at the model's stop ids, at a stop string (never printed, not even in part)
 * or after `maxTokens`. `onText` receives whole characters as they are generated.
 */
export async function generateText(
  model: LoadedModel,
  session: StreamingSession,
  promptIds: number[],
  run: Omit<GenerateRun, "prompt">,
): Promise<{ ids: number[]; text: string }> {
  const detokenizer = new Detokenizer(model.tokenizer);
  const stopFilter = new StopTextFilter(model.stopStrings);
  let text = "";
  const emit = (piece: string) => {
    text += piece;
    if (piece) run.onText(piece);
  };
  const ids = await session.generate(promptIds, {
    maxTokens: run.maxTokens,
    sampler: run.sampler,
    stopIds: model.stopIds,
    onToken: (id) => {
      const { text: piece, stopped } = stopFilter.push(detokenizer.push(id));
      emit(piece);
      return !stopped;
    },
  });
  if (!stopFilter.stopped) emit(stopFilter.push(detokenizer.flush()).text + stopFilter.flush());
  return { ids, text };
}
