/**
 * SentencePiece-style (SPM) tokenizer that reproduces llama.cpp's `tokenizer.ggml.model =
 * "llama"` vocabulary: the same ids from the same GGUF metadata.
 *
 * Encoding follows llama.cpp's `llama_tokenize(text, add_special, parse_special)`. By default
 * (parse_special false) control and unknown token texts such as `<s>` in the input are plain
 * text, while user-defined tokens are still matched first, as llama.cpp does. Checked against
 * node-llama-cpp 3.21.1 (llama.cpp tag v0.4.0) by `tests/tokenizer.test.ts`.
 */

/** llama.cpp token types (`tokenizer.ggml.token_type`). */
export const TOKEN_TYPE = {
  UNDEFINED: 0,
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/** Tokenizer metadata of a GGUF file (`tokenizer.ggml.*` keys). */
export interface TokenizerData {
  /** `tokenizer.ggml.model`. `Tokenizer` supports only `llama` (SPM). */
  model: string;
  /** Piece text of each token id, with spaces written as U+2581. */
  tokens: string[];
  /** Merge priority of each piece. A higher score merges first. */
  scores: Float32Array;
  /** Token type of each id, see `TOKEN_TYPE`. */
  tokenTypes: Uint8Array;
  bosId: number;
  eosId: number;
  unknownId: number;
  paddingId?: number;
  /** Whether `encode` starts with BOS by default (`tokenizer.ggml.add_bos_token`, default true). */
  addBos: boolean;
  /** Whether `encode` may end with EOS (`tokenizer.ggml.add_eos_token`, default false). */
  addEos: boolean;
  /** Whether a space is put before the text (`tokenizer.ggml.add_space_prefix`, default true). */
  addSpacePrefix: boolean;
  /** `tokenizer.chat_template`, when the file has one. */
  chatTemplate?: string;
}

/** Options of `Tokenizer.encode`. */
export interface EncodeOptions {
  /** Put BOS first. @default TokenizerData.addBos */
  addBos?: boolean;
  /**
   * Put EOS last, which llama.cpp does only when the file sets `add_eos_token`.
   * @default false
   */
  addEos?: boolean;
  /**
   * Put a space before the text, as SentencePiece's dummy prefix does at the start of a text.
   * Pass false for a piece that continues earlier text. @default TokenizerData.addSpacePrefix
   */
  addSpacePrefix?: boolean;
  /**
   * Match control and unknown token texts such as `<s>` in the input and emit their ids, as
   * llama.cpp's parse_special does. Use it for chat-template text, never for log data.
   * @default false
   */
  parseSpecial?: boolean;
}

const SPACE_ESCAPE = "\u2581";
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const utf8Encoder = new TextEncoder();

/** Replace lone UTF-16 surrogates with U+FFFD, as a UTF-8 conversion does. */
function toWellFormed(text: string): string {
  return text.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

/**
 * Max-heap of candidate merges ordered by score, then by the leftmost symbol. Entries live
 * in parallel arrays so a megabyte line does not allocate millions of objects.
 */
class MergeQueue {
  private scores = new Float64Array(1024);
  private lefts = new Int32Array(1024);
  private rights = new Int32Array(1024);
  private sizes = new Int32Array(1024);
  length = 0;

  /** Return true when entry a must be popped before entry b. */
  private before(a: number, b: number): boolean {
    return this.scores[a] > this.scores[b] || (this.scores[a] === this.scores[b] && this.lefts[a] < this.lefts[b]);
  }

  private swap(a: number, b: number): void {
    const s = this.scores[a]; this.scores[a] = this.scores[b]; this.scores[b] = s;
    const l = this.lefts[a]; this.lefts[a] = this.lefts[b]; this.lefts[b] = l;
    const r = this.rights[a]; this.rights[a] = this.rights[b]; this.rights[b] = r;
    const z = this.sizes[a]; this.sizes[a] = this.sizes[b]; this.sizes[b] = z;
  }

  private grow(): void {
    const capacity = this.scores.length * 2;
    const scores = new Float64Array(capacity); scores.set(this.scores); this.scores = scores;
    const lefts = new Int32Array(capacity); lefts.set(this.lefts); this.lefts = lefts;
    const rights = new Int32Array(capacity); rights.set(this.rights); this.rights = rights;
    const sizes = new Int32Array(capacity); sizes.set(this.sizes); this.sizes = sizes;
  }

  push(score: number, left: number, right: number, size: number): void {
    if (this.length === this.scores.length) this.grow();
    let i = this.length++;
    this.scores[i] = score;
    this.lefts[i] = left;
    this.rights[i] = right;
    this.sizes[i] = size;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  /** Remove the top entry and return its [left, right, size]. Call only when not empty. */
  pop(): [number, number, number] {
    const top: [number, number, number] = [this.lefts[0], this.rights[0], this.sizes[0]];
    this.length--;
    if (this.length > 0) {
      this.swap(0, this.length);
      let i = 0;
      for (;;) {
        const a = 2 * i + 1;
        const b = a + 1;
        let best = i;
        if (a < this.length && this.before(a, best)) best = a;
        if (b < this.length && this.before(b, best)) best = b;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }
}

/**
 * SPM tokenizer over GGUF vocabulary data.
 *
 * @example
 * ```ts
 * const { tokenizer } = await loadLlamaGguf(path); // or new Tokenizer(tokenizerData)
 * const ids = tokenizer.encode("Once upon a time"); // [1, 403, 407, 261, 378] for stories260K
 * tokenizer.decode(ids) === " Once upon a time"; // llama.cpp keeps the space after BOS
 * ```
 */
export class Tokenizer {
  readonly data: TokenizerData;
  /** Piece text → id. A piece listed twice maps to its last id, as in llama.cpp. */
  private readonly pieceToId = new Map<string, number>();
  /** Id of the `<0xXX>` piece of each byte, or -1. */
  private readonly byteToId = new Int32Array(256).fill(-1);
  /** Detokenized bytes of each id, see `tokenBytes`. */
  private readonly pieceBytes: Uint8Array[];
  /** User-defined tokens, longest text first, matched in the input before SPM runs. */
  private readonly userDefined: number[] = [];
  /** User-defined, control and unknown tokens, longest text first, for parseSpecial. */
  private readonly allSpecial: number[] = [];

  constructor(data: TokenizerData) {
    if (data.model !== "llama") {
      throw new RangeError(
        `Failed to create the tokenizer: tokenizer.ggml.model is ${JSON.stringify(data.model)}, only "llama" (SentencePiece) is supported`,
      );
    }
    const count = data.tokens.length;
    if (data.scores.length !== count || data.tokenTypes.length !== count) {
      throw new RangeError(
        `Failed to create the tokenizer: ${count} tokens but ${data.scores.length} scores and ${data.tokenTypes.length} token types`,
      );
    }
    this.data = data;
    this.pieceBytes = new Array(count);
    for (let id = 0; id < count; id++) {
      const piece = data.tokens[id];
      this.pieceToId.set(piece, id);
      this.pieceBytes[id] = this.computeTokenBytes(id);
      const type = data.tokenTypes[id];
      if (piece.length > 0 && type === TOKEN_TYPE.USER_DEFINED) this.userDefined.push(id);
      if (piece.length > 0 && (type === TOKEN_TYPE.USER_DEFINED || type === TOKEN_TYPE.CONTROL || type === TOKEN_TYPE.UNKNOWN)) {
        this.allSpecial.push(id);
      }
    }
    for (let byte = 0; byte < 256; byte++) {
      const hex = byte.toString(16).toUpperCase().padStart(2, "0");
      this.byteToId[byte] = this.pieceToId.get(`<0x${hex}>`) ?? this.pieceToId.get(String.fromCharCode(byte)) ?? -1;
    }
    const longestFirst = (a: number, b: number) => data.tokens[b].length - data.tokens[a].length || a - b;
    this.userDefined.sort(longestFirst);
    this.allSpecial.sort(longestFirst);
  }

  /** Id of the beginning-of-sequence token. */
  get bosId(): number {
    return this.data.bosId;
  }

  /** Id of the end-of-sequence token. */
  get eosId(): number {
    return this.data.eosId;
  }

  /** Return a token's piece as stored in the vocabulary, such as `<s>` or `▁Once`. */
  pieceText(id: number): string {
    const piece = this.data.tokens[id];
    if (piece === undefined) {
      throw new RangeError(`Failed to look up a piece: current token id is ${id}, valid ids are 0 to ${this.vocabSize - 1}`);
    }
    return piece;
  }

  /** Number of tokens in the vocabulary. */
  get vocabSize(): number {
    return this.data.tokens.length;
  }

  /**
   * Convert text to token ids as llama.cpp's `llama_tokenize(text, add_special = addBos,
   * parse_special)` does. Empty text gives `[]`, or `[BOS]` with addBos.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const addBos = options.addBos ?? this.data.addBos;
    const addEos = options.addEos ?? false;
    const addSpacePrefix = options.addSpacePrefix ?? this.data.addSpacePrefix;
    const output: number[] = [];
    if (addBos) output.push(this.data.bosId);

    // A space prefix goes before the text and after each special token, as llama.cpp treats
    // the start of the text like a preceding special token.
    let previousWasSpecial = true;
    const specials = options.parseSpecial ? this.allSpecial : this.userDefined;
    for (const fragment of this.splitSpecial(toWellFormed(text), specials)) {
      if (typeof fragment === "number") {
        output.push(fragment);
        previousWasSpecial = true;
        continue;
      }
      const prefixed = addSpacePrefix && previousWasSpecial ? " " + fragment : fragment;
      this.encodeFragment(prefixed.replaceAll(" ", SPACE_ESCAPE), output);
      previousWasSpecial = false;
    }

    if (addEos) output.push(this.data.eosId);
    return output;
  }

  /** Split text at the given tokens' texts: strings are plain text, numbers are token ids. */
  private splitSpecial(text: string, specials: readonly number[]): (string | number)[] {
    let fragments: (string | number)[] = text.length > 0 ? [text] : [];
    for (const id of specials) {
      const piece = this.data.tokens[id];
      const next: (string | number)[] = [];
      for (const fragment of fragments) {
        if (typeof fragment === "number" || !fragment.includes(piece)) {
          next.push(fragment);
          continue;
        }
        let start = 0;
        for (let at = fragment.indexOf(piece); at >= 0; at = fragment.indexOf(piece, start)) {
          if (at > start) next.push(fragment.slice(start, at));
          next.push(id);
          start = at + piece.length;
        }
        if (start < fragment.length) next.push(fragment.slice(start));
      }
      fragments = next;
    }
    return fragments;
  }

  /**
   * Run the SPM merge loop on one fragment whose spaces are already escaped. Symbols are
   * ranges of UTF-16 code units, so a staleness check of a queued merge compares lengths
   * in code units where llama.cpp compares bytes. Both units give the same result.
   */
  private encodeFragment(text: string, output: number[]): void {
    if (text.length === 0) return;

    // One initial symbol per Unicode character.
    const starts: number[] = [];
    for (let i = 0; i < text.length; i++) {
      starts.push(i);
      const code = text.charCodeAt(i);
      if (code >= 0xd800 && code <= 0xdbff) i++;
    }
    const count = starts.length;
    const symbolStart = Int32Array.from(starts);
    const symbolLength = new Int32Array(count);
    const prev = new Int32Array(count);
    const next = new Int32Array(count);
    for (let i = 0; i < count; i++) {
      symbolLength[i] = (i + 1 < count ? symbolStart[i + 1] : text.length) - symbolStart[i];
      prev[i] = i - 1;
      next[i] = i + 1 < count ? i + 1 : -1;
    }

    const queue = new MergeQueue();
    const mergeHistory = new Map<string, [number, number]>();
    const tryAddMerge = (left: number, right: number): void => {
      if (left < 0 || right < 0) return;
      const size = symbolLength[left] + symbolLength[right];
      const merged = text.substr(symbolStart[left], size);
      const id = this.pieceToId.get(merged);
      if (id === undefined) return;
      queue.push(this.data.scores[id], left, right, size);
      mergeHistory.set(merged, [left, right]);
    };

    for (let i = 1; i < count; i++) tryAddMerge(i - 1, i);

    // Apply the best merge until none is left. A queued merge is stale when either symbol
    // has been merged since it was queued.
    while (queue.length > 0) {
      const [left, right, size] = queue.pop();
      if (symbolLength[left] === 0 || symbolLength[right] === 0 || symbolLength[left] + symbolLength[right] !== size) {
        continue;
      }
      symbolLength[left] += symbolLength[right];
      symbolLength[right] = 0;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      tryAddMerge(prev[left], left);
      tryAddMerge(left, next[left]);
    }

    // Emit each symbol as its piece. A symbol that is no piece is split back along its merge
    // history, and what is left falls back to one `<0xXX>` token per UTF-8 byte.
    const resegment = (symbol: number): void => {
      const piece = text.substr(symbolStart[symbol], symbolLength[symbol]);
      const id = this.pieceToId.get(piece);
      if (id !== undefined) {
        output.push(id);
        return;
      }
      const parts = mergeHistory.get(piece);
      if (parts !== undefined) {
        resegment(parts[0]);
        resegment(parts[1]);
        return;
      }
      for (const byte of utf8Encoder.encode(piece)) output.push(this.byteToken(byte));
    };
    for (let symbol = 0; symbol !== -1; symbol = next[symbol]) resegment(symbol);
  }

  /**
   * Return the id of a byte's `<0xXX>` piece. NOTE: llama.cpp raises an exception when the
   * vocabulary has no such piece, but this returns the unknown token instead.
   */
  private byteToken(byte: number): number {
    const id = this.byteToId[byte];
    return id >= 0 ? id : this.data.unknownId;
  }

  private computeTokenBytes(id: number): Uint8Array {
    const piece = this.data.tokens[id];
    switch (this.data.tokenTypes[id]) {
      case TOKEN_TYPE.NORMAL:
        return utf8Encoder.encode(piece.replaceAll(SPACE_ESCAPE, " "));
      case TOKEN_TYPE.USER_DEFINED:
        return utf8Encoder.encode(piece);
      case TOKEN_TYPE.BYTE: {
        const match = BYTE_PIECE.exec(piece);
        return match === null ? new Uint8Array(0) : Uint8Array.of(parseInt(match[1], 16));
      }
      default:
        // Control, unknown, unused and undefined tokens print nothing, like llama.cpp's
        // `llama_token_to_piece(..., special = false)`.
        return new Uint8Array(0);
    }
  }

  /**
   * Return the bytes a token prints: U+2581 becomes a space, `<0xXX>` becomes that byte, and
   * control, unknown and unused tokens give no bytes. The returned array must not be modified.
   */
  tokenBytes(id: number): Uint8Array {
    const bytes = this.pieceBytes[id];
    if (bytes === undefined) {
      throw new RangeError(`Failed to detokenize: current token id is ${id}, valid ids are 0 to ${this.vocabSize - 1}`);
    }
    return bytes;
  }

  /**
   * Convert a whole token sequence to text as llama.cpp's `llama_detokenize(remove_special =
   * false, unparse_special = false)` does. When the vocabulary adds a space prefix, one
   * leading space of the first token is dropped. A first token that prints nothing, such as
   * BOS, uses up that drop, so `[BOS, "▁Once"]` gives " Once". Invalid UTF-8 becomes U+FFFD.
   */
  decode(ids: readonly number[]): string {
    const detokenizer = new Detokenizer(this, { stripLeadingSpace: this.data.addSpacePrefix });
    let text = "";
    for (const id of ids) text += detokenizer.push(id);
    return text + detokenizer.flush();
  }
}

/** Options of `Detokenizer`. */
export interface DetokenizerOptions {
  /** Drop one leading space of the first token's bytes. @default false */
  stripLeadingSpace?: boolean;
}

/**
 * Incremental detokenizer: `push` returns the text completed by each token, holding back
 * the bytes of a UTF-8 character until the tokens that finish it arrive.
 *
 * @example
 * ```ts
 * const detokenizer = new Detokenizer(tokenizer);
 * let text = "";
 * for (const id of tokenizer.encode("😀", { addBos: false })) text += detokenizer.push(id);
 * text += detokenizer.flush(); // " 😀"
 * ```
 */
export class Detokenizer {
  private readonly decoder = new TextDecoder("utf-8", { fatal: false });
  private stripNextSpace: boolean;

  constructor(private readonly tokenizer: Pick<Tokenizer, "tokenBytes">, options: DetokenizerOptions = {}) {
    this.stripNextSpace = options.stripLeadingSpace ?? false;
  }

  /** Add one token and return the text it completes (possibly empty). */
  push(id: number): string {
    let bytes = this.tokenizer.tokenBytes(id);
    if (this.stripNextSpace) {
      this.stripNextSpace = false;
      if (bytes.length > 0 && bytes[0] === 0x20) bytes = bytes.subarray(1);
    }
    return this.decoder.decode(bytes, { stream: true });
  }

  /** Return what is still held back, as U+FFFD for an unfinished character, and reset. */
  flush(): string {
    return this.decoder.decode();
  }
}
