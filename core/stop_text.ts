/**
 * Stop strings for generated text, and the check that a request prompt and its answer fit in
 * the cache window.
 */

import { UsageError } from "./errors.ts";

/**
 * Cuts generated text at the first stop string without ever printing part of one: text that
 * could be the start of a stop string is held back until the next piece settles it.
 *
 * @example
 * ```ts
 * const filter = new StopTextFilter(["</answer>"]);
 * filter.push("It failed.</ans"); // { text: "It failed.", stopped: false }
 * filter.push("wer> more");       // { text: "", stopped: true }
 * ```
 */
export class StopTextFilter {
  readonly stopStrings: readonly string[];
  #pending = "";
  #stopped = false;

  constructor(stopStrings: readonly string[] = []) {
    this.stopStrings = stopStrings.filter((s) => s.length > 0);
  }

  /** Whether a stop string has been seen. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Add generated text; return the text that is safe to print and whether generation must stop. */
  push(piece: string): { text: string; stopped: boolean } {
    if (this.#stopped) return { text: "", stopped: true };
    this.#pending += piece;
    let cut = -1;
    for (const stop of this.stopStrings) {
      const at = this.#pending.indexOf(stop);
      if (at !== -1 && (cut === -1 || at < cut)) cut = at;
    }
    if (cut !== -1) {
      const text = this.#pending.slice(0, cut);
      this.#pending = "";
      this.#stopped = true;
      return { text, stopped: true };
    }
    const heldBack = this.#heldLength();
    const text = this.#pending.slice(0, this.#pending.length - heldBack);
    this.#pending = this.#pending.slice(this.#pending.length - heldBack);
    return { text, stopped: false };
  }

  /** Return the held-back text when generation ends without a stop string. */
  flush(): string {
    const text = this.#stopped ? "" : this.#pending;
    this.#pending = "";
    return text;
  }

  /** Length of the longest end of the pending text that begins some stop string. */
  #heldLength(): number {
    let held = 0;
    for (const stop of this.stopStrings) {
      const max = Math.min(stop.length - 1, this.#pending.length);
      for (let length = max; length > held; length--) {
        if (this.#pending.endsWith(stop.slice(0, length))) {
          held = length;
          break;
        }
      }
    }
    return held;
  }
}

/**
 * Throw when a request prompt and its answer cannot both stay in the window: the prompt goes
 * through the cache like stream tokens, so a longer prompt would evict its own first tokens
 * (the instruction) before the answer is complete.
 */
export function assertPromptFits(promptTokens: number, maxTokens: number, window: number): void {
  if (promptTokens + maxTokens <= window) return;
  const room = window - maxTokens;
  throw new UsageError(
    `The request does not fit in the window: current value is ${promptTokens} prompt tokens + ${maxTokens} answer tokens ` +
      `> window ${window}; ` +
      (room > 0 ? `shorten the question to fit ${room} prompt tokens, lower --max-tokens, or raise --window` : "lower --max-tokens or raise --window"),
  );
}
