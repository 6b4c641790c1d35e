/**
 * Tokenizers of Hugging Face checkpoints (`tokenizer.json` with `tokenizer_config.json`),
 * run by `@huggingface/tokenizers` behind the {@link TextTokenizer} interface.
 *
 * Two encode options of the interface have no switch in that library, so this class builds
 * variants of the tokenizer from edited copies of `tokenizer.json`, once each on first use:
 * - `addSpacePrefix: false` removes the `Prepend` normalizer and sets Metaspace and ByteLevel
 *   pre-tokenizers to add no prefix, so a line that continues a stream gets no leading "▁".
 * - `parseSpecial: false` (the default) drops special tokens from `added_tokens`, so text such
 *   as `<|im_end|>` inside a log line is tokenized as plain text, never as an end-of-turn id.
 */

import { Tokenizer as LibraryTokenizer } from "@huggingface/tokenizers";
import type { TextTokenizer } from "../text_tokenizer.ts";
import type { EncodeOptions } from "../tokenizer.ts";

type Json = Record<string, unknown>;

const utf8Encoder = new TextEncoder();
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

/** Return the text of a special-token entry of `tokenizer_config.json` (a string or `{content}`). */
export function specialTokenText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as Json).content === "string") return (value as Json).content as string;
  return undefined;
}

/**
 * Build the map from GPT-2's printable stand-in characters back to bytes: bytes that are
 * printable Latin-1 stand for themselves, the rest map to U+0100 upwards in byte order.
 */
function byteLevelDecodeMap(): Map<string, number> {
  const map = new Map<string, number>();
  let next = 0;
  for (let byte = 0; byte < 256; byte++) {
    const printable = (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
    map.set(String.fromCharCode(printable ? byte : 256 + next++), byte);
  }
  return map;
}

function usesByteLevel(node: unknown): boolean {
  if (!node || typeof node !== "object") return false;
  const json = node as Json;
  if (json.type === "ByteLevel") return true;
  for (const key of ["decoders", "pretokenizers"]) {
    if (Array.isArray(json[key]) && (json[key] as unknown[]).some(usesByteLevel)) return true;
  }
  return false;
}

/** Disable every leading-space rule in a normalizer or pre-tokenizer tree; returns the edited node. */
function withoutPrefix(node: unknown): unknown {
  if (!node || typeof node !== "object") return node;
  const json = { ...(node as Json) };
  if (json.type === "Prepend") return null;
  if (json.type === "Metaspace") {
    json.prepend_scheme = "never";
    json.add_prefix_space = false;
  }
  if (json.type === "ByteLevel") json.add_prefix_space = false;
  for (const key of ["normalizers", "pretokenizers"]) {
    if (Array.isArray(json[key])) json[key] = (json[key] as unknown[]).map(withoutPrefix).filter((n) => n !== null);
  }
  return json;
}

/** A `tokenizer.json` tokenizer with the interface of the GGUF tokenizer. */
export class HfTokenizer implements TextTokenizer {
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly vocabSize: number;
  /** Ids of special added tokens, which print nothing. */
  readonly specialIds: ReadonlySet<number>;
  readonly #json: Json;
  readonly #config: Json;
  readonly #variants = new Map<string, LibraryTokenizer>();
  readonly #pieces: string[] = [];
  readonly #bytes: Uint8Array[] = [];
  /** Whether encoding with special tokens puts BOS first. */
  readonly #addsBos: boolean;

  constructor(tokenizerJson: Json, tokenizerConfig: Json = {}) {
    this.#json = tokenizerJson;
    this.#config = tokenizerConfig;
    const base = this.#variant(true, true);

    for (const [piece, id] of base.get_vocab(true)) this.#pieces[id] = piece;
    this.vocabSize = this.#pieces.length;
    const special = new Set<number>();
    for (const [id, token] of base.get_added_tokens_decoder()) if (token.special) special.add(id);
    this.specialIds = special;

    const byteLevel = usesByteLevel(tokenizerJson.decoder) || usesByteLevel(tokenizerJson.pre_tokenizer);
    const byteMap = byteLevelDecodeMap();
    for (let id = 0; id < this.vocabSize; id++) {
      const piece = this.#pieces[id] ?? "";
      this.#bytes[id] = special.has(id) ? new Uint8Array(0) : pieceBytes(piece, byteLevel, byteMap);
    }

    const lookup = (key: string) => {
      const text = specialTokenText(tokenizerConfig[key]);
      return text === undefined ? undefined : base.token_to_id(text);
    };
    this.bosId = lookup("bos_token");
    this.eosId = lookup("eos_token");
    const probe = base.encode("a", { add_special_tokens: true }).ids;
    this.#addsBos = this.bosId !== undefined && probe[0] === this.bosId;
  }

  /**
   * Convert text to ids. `addBos` puts BOS first only when the tokenizer's own post-processor
   * adds it (Llama 3 does, Qwen2 and SmolLM2 do not), as `add_special_tokens` does in
   * `transformers`; EOS is never added.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const addBos = options.addBos ?? this.#addsBos;
    const tokenizer = this.#variant(options.addSpacePrefix ?? true, options.parseSpecial ?? false);
    const ids = tokenizer.encode(text, { add_special_tokens: false }).ids;
    if (addBos && this.#addsBos && this.bosId !== undefined) ids.unshift(this.bosId);
    return ids;
  }

  decode(ids: readonly number[]): string {
    return this.#variant(true, true).decode([...ids], { skip_special_tokens: false });
  }

  pieceText(id: number): string {
    const piece = this.#pieces[id];
    if (piece === undefined) {
      throw new RangeError(`Failed to look up a piece: current token id is ${id}, valid ids are 0 to ${this.vocabSize - 1}`);
    }
    return piece;
  }

  tokenBytes(id: number): Uint8Array {
    const bytes = this.#bytes[id];
    if (bytes === undefined) {
      throw new RangeError(`Failed to detokenize: current token id is ${id}, valid ids are 0 to ${this.vocabSize - 1}`);
    }
    return bytes;
  }

  /** Return the id of a piece, or undefined when the vocabulary has no such piece. */
  idOf(piece: string): number | undefined {
    return this.#variant(true, true).token_to_id(piece);
  }

  #variant(spacePrefix: boolean, parseSpecial: boolean): LibraryTokenizer {
    const key = `${spacePrefix}/${parseSpecial}`;
    let tokenizer = this.#variants.get(key);
    if (tokenizer) return tokenizer;
    let json = this.#json;
    if (!spacePrefix) {
      json = { ...json, normalizer: withoutPrefix(json.normalizer), pre_tokenizer: withoutPrefix(json.pre_tokenizer) };
    }
    if (!parseSpecial && Array.isArray(json.added_tokens)) {
      json = { ...json, added_tokens: (json.added_tokens as Json[]).filter((token) => !token.special) };
    }
    tokenizer = new LibraryTokenizer(json, this.#config);
    this.#variants.set(key, tokenizer);
    return tokenizer;
  }
}

/** Return the bytes a piece prints, for byte-level BPE or for SentencePiece-style pieces. */
function pieceBytes(piece: string, byteLevel: boolean, byteMap: Map<string, number>): Uint8Array {
  if (byteLevel) {
    const bytes: number[] = [];
    for (const char of piece) {
      const byte = byteMap.get(char);
      if (byte === undefined) bytes.push(...utf8Encoder.encode(char));
      else bytes.push(byte);
    }
    return Uint8Array.from(bytes);
  }
  const byte = BYTE_PIECE.exec(piece);
  if (byte) return Uint8Array.of(parseInt(byte[1], 16));
  return utf8Encoder.encode(piece.replaceAll("\u2581", " "));
}
