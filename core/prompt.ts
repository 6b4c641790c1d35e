/**
 * Prompts appended after the stream to ask for a summary or an answer.
 *
 * With a chat template (from the model file) the request is rendered as one user turn
 * followed by the assistant's generation prompt, as llama.cpp and Hugging Face render it. The
 * stream itself is plain text already in the cache, so a BOS that the template puts first is
 * dropped: the stream began with one. Without a template the request is framed as plain text.
 */

import { Template } from "@huggingface/jinja";

/** What the model is asked after the stream. */
export type Request = { kind: "summary" } | { kind: "answer"; question: string };

/** Special token texts a chat template may refer to. */
export interface TemplateTokens {
  bos?: string;
  eos?: string;
}

/** Return the instruction text of a request, shared by both framings. */
export function instructionFor(request: Request): string {
  if (request.kind === "summary") {
    return "Summarize the text above in a few sentences: what happened, and anything unusual.";
  }
  return `Answer this question about the text above: ${request.question}`;
}

/**
 * Render the prompt text for a request, to be tokenized without BOS or dummy-prefix space.
 */
export function renderPrompt(
  request: Request,
  chatTemplate: string | undefined,
  tokens: TemplateTokens = {},
): string {
  if (chatTemplate) {
    const rendered = new Template(chatTemplate).render({
      messages: [{ role: "user", content: instructionFor(request) }],
      add_generation_prompt: true,
      bos_token: tokens.bos ?? "",
      eos_token: tokens.eos ?? "",
    });
    // The stream already began with BOS; the turn must not start a second sequence.
    const withoutBos = tokens.bos && rendered.startsWith(tokens.bos) ? rendered.slice(tokens.bos.length) : rendered;
    return "\n" + withoutBos;
  }
  if (request.kind === "summary") return "\n\nSummary of the text above:\n";
  return `\n\nQuestion about the text above: ${request.question}\nAnswer:`;
}
