import { describe, expect, test } from "bun:test";
import { LineSplitter, readLines } from "../core/text_lines.ts";

async function* bytesOf(parts: (string | number[])[]): AsyncGenerator<Uint8Array> {
  const encoder = new TextEncoder();
  for (const part of parts) yield typeof part === "string" ? encoder.encode(part) : new Uint8Array(part);
}

async function collect(parts: (string | number[])[], maxLineChars?: number): Promise<string[]> {
  const lines: string[] = [];
  for await (const line of readLines(bytesOf(parts), { maxLineChars })) lines.push(line);
  return lines;
}

describe("readLines", () => {
  test("empty input yields nothing", async () => {
    expect(await collect([])).toEqual([]);
    expect(await collect([""])).toEqual([]);
  });

  test("CRLF and lone CR become LF", async () => {
    expect(await collect(["a\r\nb\rc\n"])).toEqual(["a\n", "b\n", "c\n"]);
  });

  test("CRLF split across reads", async () => {
    expect(await collect(["a\r", "\nb\r", "\n"])).toEqual(["a\n", "b\n"]);
  });

  test("blank CRLF lines are kept", async () => {
    expect(await collect(["\r\n\r\nx"])).toEqual(["\n", "\n", "x"]);
  });

  test("character split across reads stays whole", async () => {
    // "é" is C3 A9 and "😀" is F0 9F 98 80.
    expect(await collect([[0x63, 0x61, 0x66, 0xc3], [0xa9, 0x20, 0xf0, 0x9f], [0x98, 0x80, 0x0a]])).toEqual(["café 😀\n"]);
  });

  test("invalid UTF-8 becomes replacement characters", async () => {
    expect(await collect([[0x61, 0xff, 0x62, 0x0a]])).toEqual(["a\uFFFDb\n"]);
  });

  test("final line without newline is emitted", async () => {
    expect(await collect(["one\ntwo"])).toEqual(["one\n", "two"]);
  });

  test("long line is split into bounded pieces", async () => {
    const lines = await collect(["x".repeat(25) + "\n"], 10);
    expect(lines).toEqual(["x".repeat(10), "x".repeat(10), "xxxxx\n"]);
  });

  test("split never cuts a surrogate pair", async () => {
    const lines = await collect(["abcdefghi😀z\n"], 10);
    expect(lines[0]).toBe("abcdefghi");
    expect(lines.join("")).toBe("abcdefghi😀z\n");
  });
});

describe("LineSplitter", () => {
  test("rejects a maximum below 2", () => {
    expect(() => new LineSplitter(1)).toThrow(
      "Invalid maximum line length: current value is 1; it must be a whole number of at least 2",
    );
  });
});
