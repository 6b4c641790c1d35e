import { beforeAll, describe, expect, test } from "bun:test";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { Tokenizer, Detokenizer, TOKEN_TYPE, type TokenizerData } from "../core/tokenizer.ts";
// Written by scripts/gen_llamacpp_fixture.mjs from node-llama-cpp 3.21.1 (llama.cpp v0.4.0 tag).
import fixture from "./fixtures/llamacpp_stories260K.json";

const MODEL_V3 = new URL("../../shared/models/stories260K-v3.gguf", import.meta.url).pathname;
const ONE_MEGABYTE = 1_000_000;
const LONG_LINE_TIMEOUT_MS = 20_000;

let tokenizer: Tokenizer;
beforeAll(async () => {
  tokenizer = (await loadLlamaGguf(MODEL_V3)).tokenizer;
});

/** Build tokenizer data from pieces with scores. `<0xXX>` pieces become byte tokens. */
function tinyVocab(pieces: [string, number][], extra: Partial<TokenizerData> = {}): TokenizerData {
  const all: [string, number, number][] = [
    ["<unk>", 0, TOKEN_TYPE.UNKNOWN],
    ["<s>", 0, TOKEN_TYPE.CONTROL],
    ["</s>", 0, TOKEN_TYPE.CONTROL],
    ...pieces.map(([p, s]): [string, number, number] => [p, s, /^<0x..>$/.test(p) ? TOKEN_TYPE.BYTE : TOKEN_TYPE.NORMAL]),
  ];
  return {
    model: "llama",
    tokens: all.map((x) => x[0]),
    scores: Float32Array.from(all.map((x) => x[1])),
    tokenTypes: Uint8Array.from(all.map((x) => x[2])),
    bosId: 1,
    eosId: 2,
    unknownId: 0,
    addBos: true,
    addEos: false,
    addSpacePrefix: true,
    ...extra,
  };
}

describe("Tokenizer matches llama.cpp", () => {
  test("fixture covers the planned inputs", () => {
    expect(fixture.cases.length).toBeGreaterThan(70);
    expect(fixture.cases[0].text).toBe("");
  });

  test.each(fixture.cases.map((c, i) => [i, JSON.stringify(c.text).slice(0, 50), c] as const))(
    "encode case %d %s",
    (_i, _label, c) => {
      expect(tokenizer.encode(c.text, { addBos: false })).toEqual(c.ids);
      expect(tokenizer.encode(c.text)).toEqual([fixture.bos, ...c.ids]);
    },
  );

  test("decode matches llama_detokenize", () => {
    for (const c of fixture.cases) {
      expect(tokenizer.decode(c.ids)).toBe(c.detokenized);
      expect(tokenizer.decode([fixture.bos, ...c.ids])).toBe(c.detokenizedWithBos);
    }
    for (const c of fixture.detokenizeCases) expect(tokenizer.decode(c.ids)).toBe(c.text);
  });

  test("parseSpecial matches parse_special", () => {
    expect(fixture.parseSpecialCases.length).toBeGreaterThan(0);
    for (const c of fixture.parseSpecialCases) {
      expect(tokenizer.encode(c.text, { addBos: false, parseSpecial: true })).toEqual(c.ids);
    }
    expect(tokenizer.encode("<s>", { addBos: false })).not.toEqual([1]);
  });

  test("greedy prompt ids match", () => {
    expect(tokenizer.encode(fixture.greedy.prompt)).toEqual(fixture.greedy.promptIds);
    expect(tokenizer.decode(fixture.greedy.continuation)).toBe(fixture.greedy.continuationText);
  });
});

describe("Tokenizer.encode", () => {
  test("empty text gives only BOS", () => {
    expect(tokenizer.encode("")).toEqual([1]);
    expect(tokenizer.encode("", { addBos: false })).toEqual([]);
    expect(tokenizer.encode("", { addSpacePrefix: false })).toEqual([1]);
  });

  test("addSpacePrefix false drops the dummy space", () => {
    const withPrefix = tokenizer.encode("Once upon", { addBos: false });
    const withoutPrefix = tokenizer.encode("Once upon", { addBos: false, addSpacePrefix: false });
    expect(withoutPrefix).not.toEqual(withPrefix);
    expect(tokenizer.encode(" Once upon", { addBos: false, addSpacePrefix: false })).toEqual(withPrefix);
    expect(tokenizer.decode([5, ...withoutPrefix])).toBe("\u0002Once upon");
  });

  test("addEos appends EOS", () => {
    expect(tokenizer.encode("a", { addEos: true })).toEqual([1, 261, 2]);
  });

  test("round-trips text through the streaming detokenizer", () => {
    const texts = ["x", " lead", "trail ", "a  b", "tab\there\r\n", "日本 😀 ok", "<s></s>", "\u2581x", "\uD800 lone"];
    for (const text of texts) {
      const detokenizer = new Detokenizer(tokenizer);
      let out = "";
      for (const id of tokenizer.encode(text, { addBos: false, addSpacePrefix: false })) out += detokenizer.push(id);
      out += detokenizer.flush();
      const expected = text.replaceAll("\u2581", " ").replace("\uD800", "\uFFFD");
      expect(out).toBe(expected);
    }
  });

  test("ties between equal scores merge leftmost first", () => {
    const t = new Tokenizer(tinyVocab([["a", -1], ["b", -1], ["ab", -2], ["bb", -2], ["\u2581", -1]]));
    // "abb": "ab" (left 0) and "bb" (left 1) score the same, so "ab" merges and "b" stays.
    expect(t.encode("abb", { addBos: false, addSpacePrefix: false })).toEqual([5, 4]);
    expect(t.encode("bbb", { addBos: false, addSpacePrefix: false })).toEqual([6, 4]);
  });

  test("higher scores merge first", () => {
    const t = new Tokenizer(tinyVocab([["a", -1], ["b", -1], ["ab", -3], ["bb", -2]]));
    expect(t.encode("abb", { addBos: false, addSpacePrefix: false })).toEqual([3, 6]);
  });

  test("characters outside the vocabulary fall back to bytes", () => {
    const bytes: [string, number][] = Array.from({ length: 256 }, (_, b) => [
      `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`,
      0,
    ]);
    const t = new Tokenizer(tinyVocab([...bytes, ["a", -1]]));
    const byteId = (b: number) => 3 + b;
    expect(t.encode("aé", { addBos: false, addSpacePrefix: false })).toEqual([259, byteId(0xc3), byteId(0xa9)]);
    expect(t.encode("a", { addBos: false })).toEqual([byteId(0xe2), byteId(0x96), byteId(0x81), 259]);
  });

  test("missing byte pieces fall back to the unknown token", () => {
    const t = new Tokenizer(tinyVocab([["a", -1]]));
    expect(t.encode("aé", { addBos: false, addSpacePrefix: false })).toEqual([3, 0, 0]);
  });

  test("user-defined tokens split the text first", () => {
    // NOTE: stories260K has no user-defined tokens, so this follows llama.cpp's source
    // (tokenizer_st_partition) and is not compared with a llama.cpp run.
    const data = tinyVocab([["a", -1], ["\u2581", -1], ["\u2581a", -0.5], ["<tool>", 0]]);
    data.tokenTypes[6] = TOKEN_TYPE.USER_DEFINED;
    const t = new Tokenizer(data);
    expect(t.encode("a<tool>a", { addBos: false })).toEqual([5, 6, 5]);
    expect(t.decode([5, 6, 5])).toBe("a<tool> a");
  });

  test("rejects a non-SPM vocabulary", () => {
    expect(() => new Tokenizer(tinyVocab([], { model: "gpt2" }))).toThrow(
      'Failed to create the tokenizer: tokenizer.ggml.model is "gpt2", only "llama" (SentencePiece) is supported',
    );
  });

  test(
    "encodes a 1 MB line in near-linear time",
    () => {
      const words = ["error", "block", "blk_-1608999687919862906", "10.0.0.1:50010", "日本", "😀", "\t", "  "];
      let line = "";
      for (let i = 0; line.length < ONE_MEGABYTE; i++) line += words[(i * 7 + (i >> 3)) % words.length] + " ";
      line = line.slice(0, ONE_MEGABYTE);

      const quarterStart = performance.now();
      const quarter = tokenizer.encode(line.slice(0, ONE_MEGABYTE / 4));
      const quarterMs = performance.now() - quarterStart;
      const fullStart = performance.now();
      const full = tokenizer.encode(line);
      const fullMs = performance.now() - fullStart;
      console.error(`tokenizer: 1 MB line in ${fullMs.toFixed(0)} ms (${full.length} tokens), 250 kB in ${quarterMs.toFixed(0)} ms`);

      expect(full.length).toBeGreaterThan(3 * quarter.length);
      // The leading BOS keeps the dummy-prefix space in the detokenized text.
      expect(tokenizer.decode(full)).toBe(" " + line);
      // A quadratic merge loop would take about 16 times as long for 4 times the input.
      expect(fullMs).toBeLessThan(Math.max(8 * quarterMs, 1000));
    },
    LONG_LINE_TIMEOUT_MS,
  );
});

describe("detokenization", () => {
  test("pieceText and special ids", () => {
    expect(tokenizer.bosId).toBe(1);
    expect(tokenizer.eosId).toBe(2);
    expect(tokenizer.pieceText(1)).toBe("<s>");
    expect(tokenizer.pieceText(403)).toBe("\u2581Once");
    expect(() => tokenizer.pieceText(-1)).toThrow("Failed to look up a piece: current token id is -1, valid ids are 0 to 511");
  });

  test("tokenBytes maps pieces to bytes", () => {
    expect(Array.from(tokenizer.tokenBytes(1))).toEqual([]); // <s>
    expect(Array.from(tokenizer.tokenBytes(0))).toEqual([]); // <unk>
    expect(Array.from(tokenizer.tokenBytes(3 + 0x41))).toEqual([0x41]); // <0x41>
    expect(Array.from(tokenizer.tokenBytes(410))).toEqual([0x20]); // ▁
    expect(new TextDecoder().decode(tokenizer.tokenBytes(403))).toBe(" Once");
    expect(() => tokenizer.tokenBytes(512)).toThrow("Failed to detokenize: current token id is 512, valid ids are 0 to 511");
  });

  test("streaming detokenizer holds a split character until complete", () => {
    const ids = tokenizer.encode("😀!", { addBos: false, addSpacePrefix: false });
    expect(ids.length).toBe(5); // four UTF-8 bytes of the emoji, then "!"
    const detokenizer = new Detokenizer(tokenizer);
    const chunks = ids.map((id) => detokenizer.push(id));
    expect(chunks).toEqual(["", "", "", "😀", "!"]);
    expect(detokenizer.flush()).toBe("");
  });

  test("streaming detokenizer flushes an unfinished character as U+FFFD", () => {
    const ids = tokenizer.encode("😀", { addBos: false, addSpacePrefix: false });
    const detokenizer = new Detokenizer(tokenizer);
    expect(detokenizer.push(ids[0]) + detokenizer.push(ids[1])).toBe("");
    expect(detokenizer.flush()).toBe("\uFFFD");
  });

  test("stripLeadingSpace drops one space of the first token", () => {
    const detokenizer = new Detokenizer(tokenizer, { stripLeadingSpace: true });
    expect(detokenizer.push(410)).toBe("");
    expect(detokenizer.push(410)).toBe(" ");
    expect(detokenizer.push(403)).toBe(" Once");
  });
});
