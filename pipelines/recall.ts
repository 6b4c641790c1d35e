/**
 * Recall at question time: search the archive of evicted lines for the request and pick the
 * best matches that fit the prompt's token budget.
 */

import type { ArchiveHit, LineArchive } from "../core/archive.ts";
import { formatRecalledLine, type Request } from "../core/prompt.ts";

/**
 * Search words used for a summary, which has no question: the words that mark unusual log
 * lines. BM25 ranks lines with the rarer of these words first.
 */
export const SUMMARY_RECALL_QUERY =
  "error errors failed failure fatal critical exception timeout refused denied warning panic killed";

/** Recall settings of an answer stream. */
export interface RecallSettings {
  /** Archive searched at question time. */
  archive: LineArchive;
  /** Maximum number of recalled lines, at least 1. */
  limit: number;
}

/** A recalled line with its place in the ranking. */
export interface RecallHit extends ArchiveHit {
  /** Rank in the search results, 1 for the best match. */
  rank: number;
}

/** Result of {@linkcode recallForPrompt}. */
export interface RecallResult {
  /** Lines placed in the prompt, best match first. */
  lines: RecallHit[];
  /** Prompt token ids with the lines in place. */
  promptIds: number[];
  /** Matches left out because the token budget was used up. */
  droppedForBudget: number;
  /** Time spent searching the archive, in milliseconds. */
  searchMs: number;
}

/** Returns the search text for a request: the question, or {@linkcode SUMMARY_RECALL_QUERY}. */
export function recallQueryFor(request: Request): string {
  return request.kind === "answer" ? request.question : SUMMARY_RECALL_QUERY;
}

/**
 * Searches the archive for the request and returns the best matches whose prompt fits in
 * `maxPromptTokens`, with the prompt built by `encodePrompt`. Lines still in a writer's
 * buffer are not searched, so flush the writer first.
 *
 * Matches are taken best first. A match that would overflow the budget is skipped and the
 * next one is tried, so a long line does not block shorter ones behind it. The sum of each
 * line's own token count picks the lines, and the final prompt is then tokenized whole and
 * trimmed from the worst match if tokens merge differently across line boundaries.
 *
 * With no room for even one line, returns the prompt without recalled lines.
 */
export function recallForPrompt(
  settings: RecallSettings,
  request: Request,
  maxPromptTokens: number,
  encodePrompt: (lines: readonly RecallHit[]) => number[],
  countTokens: (text: string) => number,
): RecallResult {
  const started = performance.now();
  const hits = settings.archive.search(recallQueryFor(request), settings.limit);
  const searchMs = performance.now() - started;

  const basePrompt = encodePrompt([]);
  if (hits.length === 0 || basePrompt.length >= maxPromptTokens) {
    return { lines: [], promptIds: basePrompt, droppedForBudget: hits.length, searchMs };
  }

  // The heading and the blank line around the block cost a few tokens besides the lines.
  const firstLineCost = countTokens(formatRecalledLine(hits[0]) + "\n");
  const overhead = encodePrompt([{ ...hits[0], rank: 1 }]).length - basePrompt.length - firstLineCost;
  let used = basePrompt.length + Math.max(0, overhead);
  const chosen: RecallHit[] = [];
  hits.forEach((hit, index) => {
    const cost = countTokens(formatRecalledLine(hit) + "\n");
    if (used + cost > maxPromptTokens) return;
    used += cost;
    chosen.push({ ...hit, rank: index + 1 });
  });

  let promptIds = chosen.length > 0 ? encodePrompt(chosen) : basePrompt;
  while (chosen.length > 0 && promptIds.length > maxPromptTokens) {
    chosen.pop();
    promptIds = chosen.length > 0 ? encodePrompt(chosen) : basePrompt;
  }
  return { lines: chosen, promptIds, droppedForBudget: hits.length - chosen.length, searchMs };
}

/**
 * Returns the most prompt tokens that keep the whole prompt in the cache while `maxTokens`
 * tokens are generated after it.
 *
 * The prompt and all generated tokens but the last pass through the window, and each evicts
 * the oldest window token once the window is full. The prompt's first token survives as long
 * as `promptTokens + maxTokens - 1 <= window`.
 */
export function promptTokenBudget(window: number, maxTokens: number): number {
  return window - Math.max(0, maxTokens - 1);
}
