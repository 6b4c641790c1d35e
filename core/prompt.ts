/**
 * Prompts appended after the stream to ask for a summary or an answer.
 *
 * With a chat template (from the model file) the request is rendered as one user turn
 * followed by the assistant's generation prompt, as llama.cpp and Hugging Face render it. The
 * stream itself is plain text already in the cache, so a BOS that the template puts first is
 * dropped: the stream began with one. Without a template the request is framed as plain text.
 *
 * Lines recalled from the archive of evicted text go in front of the instruction, one per
 * line with their line number and arrival time, so the model reads them right before the
 * request and an answer can be checked against them.
 */

import { Template } from "@huggingface/jinja";

/** Request appended after the stream: a summary or the answer to a question. */
export type Request = { kind: "summary" } | { kind: "answer"; question: string };

/** Special token texts a chat template may refer to. */
export interface TemplateTokens {
  bos?: string;
  eos?: string;
}

/** An archived line placed in the prompt as recalled context. */
export interface RecalledLine {
  /** Line number in the input stream. */
  lineNumber: number;
  /** Time the line arrived, in milliseconds since the Unix epoch. */
  arrivalTime: number;
  /** Line text; a trailing line end is ignored. */
  text: string;
}

/** Heading of the recalled context, shared by both framings. */
export const RECALL_HEADING = "Recalled earlier lines:";

/**
 * Formats one recalled line as `[line N, 2026-01-31T12:00:00Z] text`, without a line end.
 * The time is UTC to the second, because milliseconds cost tokens and rarely matter.
 */
export function formatRecalledLine(line: RecalledLine): string {
  const text = line.text.endsWith("\n") ? line.text.slice(0, -1) : line.text;
  const time = new Date(line.arrivalTime).toISOString().replace(/\.\d{3}Z$/, "Z");
  return `[line ${line.lineNumber}, ${time}] ${text}`;
}

/** Returns the recalled-context block: the heading and one line each, or "" for no lines. */
export function recalledContext(lines: readonly RecalledLine[]): string {
  if (lines.length === 0) return "";
  return [RECALL_HEADING, ...lines.map(formatRecalledLine)].join("\n") + "\n";
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
 * `recalled` lines, best match first, go in front of the instruction.
 */
export function renderPrompt(
  request: Request,
  chatTemplate: string | undefined,
  tokens: TemplateTokens = {},
  recalled: readonly RecalledLine[] = [],
): string {
  const context = recalledContext(recalled);
  if (chatTemplate) {
    const rendered = new Template(chatTemplate).render({
      messages: [{ role: "user", content: (context ? context + "\n" : "") + instructionFor(request) }],
      add_generation_prompt: true,
      bos_token: tokens.bos ?? "",
      eos_token: tokens.eos ?? "",
    });
    // The stream already began with BOS; the turn must not start a second sequence.
    const withoutBos = tokens.bos && rendered.startsWith(tokens.bos) ? rendered.slice(tokens.bos.length) : rendered;
    return "\n" + withoutBos;
  }
  const lead = context ? `\n\n${context}\n` : "\n\n";
  if (request.kind === "summary") return `${lead}Summary of the text above:\n`;
  return `${lead}Question about the text above: ${request.question}\nAnswer:`;
}
