/**
 * The tokenizer interface the session, the prompts and the pipelines use, implemented by the
 * GGUF SentencePiece {@link import("./tokenizer.ts").Tokenizer} and by
 * {@link import("./hf/hf_tokenizer.ts").HfTokenizer} for `tokenizer.json` files.
 */

import type { EncodeOptions } from "./tokenizer.ts";

/** Text ↔ token id conversion of one model. */
export interface TextTokenizer {
  /** Id of the beginning-of-sequence token, or undefined when the model has none. */
  readonly bosId: number | undefined;
  /** Id of the end-of-sequence token, or undefined when the model has none. */
  readonly eosId: number | undefined;
  /** Number of token ids. */
  readonly vocabSize: number;
  /** Convert text to token ids. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Convert token ids to text. */
  decode(ids: readonly number[]): string;
  /** Return a token's piece as stored in the vocabulary, such as `<s>` or `<|im_end|>`. */
  pieceText(id: number): string;
  /** Return the bytes a token prints; special tokens print nothing. Must not be modified. */
  tokenBytes(id: number): Uint8Array;
}
