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

/** Incremental line splitter over decoded text; see the module documentation. */
export class LineSplitter {
  #pending = "";
  #pendingCr = false;
  readonly #maxLineChars: number;

  constructor(maxLineChars: number) {
    if (!Number.isInteger(maxLineChars) || maxLineChars < 2) {
      throw new RangeError(
        `Invalid maximum line length: current value is ${maxLineChars}; it must be a whole number of at least 2`,
      );
    }
    this.#maxLineChars = maxLineChars;
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
        start = i + 1;
      } else if (c === 0x0d) {
        this.#append(text.slice(start, i), lines);
        lines.push(this.#pending + "\n");
        this.#pending = "";
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
    return rest === "" ? [] : [rest];
  }

  #append(text: string, lines: string[]): void {
    if (text === "") return;
    this.#pending += text;
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
