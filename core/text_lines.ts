/**
 * Splitting of a byte stream into text lines, for line-oriented input such as logs.
 *
 * Bytes are decoded as UTF-8 in stream mode, so a character split across two reads is kept
 * whole; invalid sequences become U+FFFD instead of failing. CRLF and lone CR line ends are
 * normalized to LF, because a log's line ending carries no meaning for the model and a CR
 * costs a token of its own. A line longer than `maxLineChars` is emitted in pieces of at most
 * that many UTF-16 code units (never splitting a surrogate pair), so memory stays bounded
 * however long a line is. Every emitted line ends with "\n" except a final unterminated one
 * and the leading pieces of a split line.
 */

/** Options of {@linkcode readLines}. */
export interface ReadLinesOptions {
  /** Maximum length of one emitted piece, in UTF-16 code units. @default 65536 */
  maxLineChars?: number;
}

/** Yield the text lines of a byte stream, each with its "\n". */
export async function* readLines(
  source: AsyncIterable<Uint8Array>,
  options: ReadLinesOptions = {},
): AsyncGenerator<string> {
  const maxLineChars = options.maxLineChars ?? 65536;
  const decoder = new TextDecoder("utf-8", { fatal: false });
  const splitter = new LineSplitter(maxLineChars);
  for await (const bytes of source) {
    yield* splitter.push(decoder.decode(bytes, { stream: true }));
  }
  yield* splitter.push(decoder.decode());
  yield* splitter.finish();
}

/** State that a {@linkcode LineSplitter} starts from, to continue a stream split earlier. */
export interface SplitterStart {
  /** Text of the line in progress that was not emitted yet. @default "" */
  pending?: string;
  /** Whether the text before ended with CR, so a leading LF belongs to that line. @default false */
  afterCr?: boolean;
  /** UTF-16 code units at the start of the next line that were emitted already, as pieces. @default 0 */
  skipChars?: number;
}

/** Incremental line splitter over decoded text; see the module documentation. */
export class LineSplitter {
  #pending = "";
  #pendingCr = false;
  #skipChars = 0;
  readonly #maxLineChars: number;

  constructor(maxLineChars: number, start: SplitterStart = {}) {
    if (!Number.isInteger(maxLineChars) || maxLineChars < 2) {
      throw new RangeError(
        `Invalid maximum line length: current value is ${maxLineChars}; it must be a whole number of at least 2`,
      );
    }
    this.#maxLineChars = maxLineChars;
    this.#pending = start.pending ?? "";
    this.#pendingCr = start.afterCr ?? false;
    this.#skipChars = start.skipChars ?? 0;
  }

  /** Text of the line in progress that no emitted line or piece contains yet. */
  get pending(): string {
    return this.#pending;
  }

  /** Whether the last character pushed was a CR, so a following LF is skipped. */
  get afterCr(): boolean {
    return this.#pendingCr;
  }

  /** Add decoded text and return the lines it completed. */
  push(text: string): string[] {
    const lines: string[] = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 0x0a) {
        // LF: completes a line, unless it is the second half of a CRLF already emitted.
        if (this.#pendingCr && i === start && this.#pending === "") {
          this.#pendingCr = false;
          start = i + 1;
          continue;
        }
        this.#pendingCr = false;
        this.#append(text.slice(start, i), lines);
        lines.push(this.#pending + "\n");
        this.#pending = "";
        this.#skipChars = 0;
        start = i + 1;
      } else if (c === 0x0d) {
        this.#append(text.slice(start, i), lines);
        lines.push(this.#pending + "\n");
        this.#pending = "";
        this.#skipChars = 0;
        this.#pendingCr = true;
        start = i + 1;
      } else if (this.#pendingCr) {
        this.#pendingCr = false;
      }
    }
    this.#append(text.slice(start), lines);
    return lines;
  }

  /** Return the final unterminated line, if any. */
  finish(): string[] {
    const rest = this.#pending;
    this.#pending = "";
    this.#pendingCr = false;
    this.#skipChars = 0;
    return rest === "" ? [] : [rest];
  }

  #append(text: string, lines: string[]): void {
    if (text === "") return;
    this.#pending += text;
    if (this.#skipChars > 0) {
      // Drop what an earlier reader already emitted of this line; the cuts below then fall
      // where that reader's did.
      const skipped = Math.min(this.#skipChars, this.#pending.length);
      this.#pending = this.#pending.slice(skipped);
      this.#skipChars -= skipped;
    }
    while (this.#pending.length > this.#maxLineChars) {
      let cut = this.#maxLineChars;
      // Keep a surrogate pair together.
      const last = this.#pending.charCodeAt(cut - 1);
      if (last >= 0xd800 && last <= 0xdbff) cut -= 1;
      lines.push(this.#pending.slice(0, cut));
      this.#pending = this.#pending.slice(cut);
    }
  }
}

/** Position in a byte stream just after an emitted line or piece. */
export interface LineEnd {
  /**
   * Bytes before the next line: past the terminator of a complete line, or at the start of
   * the line that a piece belongs to.
   */
  offset: number;
  /** UTF-16 code units of the line at `offset` that were emitted already, as pieces. */
  pieceChars: number;
  /** Whether the line before `offset` ended with CR, so an LF at `offset` belongs to it. */
  afterCr: boolean;
}

/** A line (or piece of a long line) of {@linkcode LineDecoder}, with where it ends. */
export interface DecodedLine {
  text: string;
  end: LineEnd;
  /** Whether this is the unterminated rest that `finish` emitted at the end of input. */
  final: boolean;
}

/** Input that a {@linkcode LineDecoder} has read but not emitted: the start of a line. */
export interface PartialLine {
  /** Decoded text of the line so far. */
  text: string;
  /** Bytes after `text` that are the start of a UTF-8 sequence not complete yet (at most 3). */
  bytes: number[];
  /** Whether the input before ended with CR, so a leading LF belongs to the line before. */
  afterCr: boolean;
}

/** Options of {@linkcode LineDecoder}. */
export interface LineDecoderOptions {
  /** Maximum length of one emitted piece, in UTF-16 code units. @default 65536 */
  maxLineChars?: number;
  /** Position of the first byte within a file, from the `end` of a line emitted earlier. */
  start?: LineEnd;
  /** Input read earlier that the bytes continue, from {@linkcode LineDecoder.partial}. */
  partial?: PartialLine;
}

const LF = 0x0a;
const CR = 0x0d;

/**
 * Line splitting like {@linkcode readLines} that also tracks where in the byte stream each
 * line ends, so a reader can stop and later continue at a byte offset, or hand over what it
 * read but did not emit.
 *
 * The bytes are decoded one line at a time. LF and CR never occur inside a UTF-8 sequence, so
 * no bytes wait in the decoder across a line end, and the text equals that of `readLines`.
 */
export class LineDecoder {
  readonly #splitter: LineSplitter;
  readonly #decoder = new TextDecoder("utf-8", { fatal: false });
  /** Start of a UTF-8 sequence at the end of the bytes so far, waiting for the rest. */
  #held: Uint8Array;
  /** Bytes pushed so far, counted from the start offset. */
  #consumed: number;
  /** Offset of the first byte of the line in progress. */
  #lineStart: number;
  /** Code units of the line in progress emitted as pieces, including those skipped at the start. */
  #lineChars: number;

  constructor(options: LineDecoderOptions = {}) {
    const start = options.start ?? { offset: 0, pieceChars: 0, afterCr: false };
    const partial = options.partial;
    this.#splitter = new LineSplitter(options.maxLineChars ?? 65536, {
      pending: partial?.text,
      afterCr: partial?.afterCr ?? start.afterCr,
      skipChars: start.pieceChars,
    });
    this.#held = Uint8Array.from(partial?.bytes ?? []);
    this.#consumed = start.offset;
    this.#lineStart = start.offset;
    this.#lineChars = start.pieceChars;
  }

  /** Add bytes and return the lines and pieces they completed. */
  push(bytes: Uint8Array): DecodedLine[] {
    const lines: DecodedLine[] = [];
    let from = 0;
    for (let i = 0; i < bytes.length; i++) {
      if (bytes[i] === LF || bytes[i] === CR) {
        this.#feed(bytes.subarray(from, i + 1), true, lines);
        from = i + 1;
      }
    }
    if (from < bytes.length) this.#feed(bytes.subarray(from), false, lines);
    return lines;
  }

  /** End the input: return the pieces and the unterminated rest of the line in progress. */
  finish(): DecodedLine[] {
    const lines: DecodedLine[] = [];
    const held = this.#held;
    this.#held = new Uint8Array(0);
    this.#collect(this.#splitter.push(this.#decoder.decode(held)), lines);
    for (const rest of this.#splitter.finish()) {
      lines.push({ text: rest, end: { offset: this.#consumed, pieceChars: 0, afterCr: false }, final: true });
    }
    this.#lineStart = this.#consumed;
    this.#lineChars = 0;
    return lines;
  }

  /** Return what was read but not emitted, for a later decoder to continue from. */
  partial(): PartialLine {
    return { text: this.#splitter.pending, bytes: Array.from(this.#held), afterCr: this.#splitter.afterCr };
  }

  /** Decode one segment: bytes that end with one line terminator, or the rest of a read. */
  #feed(segment: Uint8Array, terminated: boolean, lines: DecodedLine[]): void {
    let data = segment;
    if (this.#held.length > 0) {
      data = new Uint8Array(this.#held.length + segment.length);
      data.set(this.#held);
      data.set(segment, this.#held.length);
    }
    this.#held = new Uint8Array(0);
    if (!terminated) {
      const cut = incompleteSequenceStart(data);
      this.#held = data.slice(cut);
      data = data.subarray(0, cut);
    }
    this.#consumed += segment.length;
    this.#collect(this.#splitter.push(this.#decoder.decode(data)), lines);
    if (terminated) {
      // The terminator ends the line in progress, also when it is the LF of a CRLF.
      this.#lineStart = this.#consumed;
      this.#lineChars = 0;
    }
  }

  #collect(texts: string[], lines: DecodedLine[]): void {
    for (const text of texts) {
      if (text.endsWith("\n")) {
        const end = { offset: this.#consumed, pieceChars: 0, afterCr: this.#splitter.afterCr };
        lines.push({ text, end, final: false });
      } else {
        this.#lineChars += text.length;
        lines.push({ text, end: { offset: this.#lineStart, pieceChars: this.#lineChars, afterCr: false }, final: false });
      }
    }
  }
}

/**
 * Return the index where an unfinished UTF-8 sequence starts at the end of `bytes`, or its
 * length when there is none. Cutting there is safe for any bytes, because decoding the rest
 * together with the next read gives the same text as decoding all bytes at once.
 */
function incompleteSequenceStart(bytes: Uint8Array): number {
  for (let back = 1; back <= Math.min(3, bytes.length); back++) {
    const byte = bytes[bytes.length - back];
    if (byte < 0x80) return bytes.length;
    if (byte >= 0xc0) {
      let length = 2;
      if (byte >= 0xe0) length = 3;
      if (byte >= 0xf0) length = 4;
      return length > back ? bytes.length - back : bytes.length;
    }
    // A continuation byte: look further back for the lead byte.
  }
  return bytes.length;
}
