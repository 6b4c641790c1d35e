import { describe, expect, test } from "bun:test";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { benchModelConfig, BENCH_MODELS, syntheticVocabulary, Xoshiro128 } from "../bench/make_models.ts";
import { GGUF_VALUE_TYPE, halfToFloat, parseGguf, readTensor } from "../core/gguf.ts";
import {
  floatsToHalves,
  floatToHalf,
  GgufMetadataBuilder,
  type GgufSpec,
  llamaGgufFromWeights,
  planGguf,
  writeGguf,
  writeGgufFile,
} from "../core/gguf_writer.ts";
import { loadLlamaGgufBytes } from "../core/llama_gguf.ts";
import { TOKEN_TYPE, Tokenizer, type TokenizerData } from "../core/tokenizer.ts";
import type { LlamaConfig, LlamaWeights, Tensor } from "../core/types.ts";
import { ropeInvFreq } from "../core/types.ts";

const STORIES_V1 = "../shared/models/stories260K.gguf";
const STORIES_V3 = "../shared/models/stories260K-v3.gguf";
const LOG_FILE = "../shared/data/logs/OpenSSH_2k.log";
const VOCABULARY_TIMEOUT_MS = 30_000;
const T = GGUF_VALUE_TYPE;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

function randomTensor(rng: Xoshiro128, dims: number[]): Tensor {
  const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
  rng.fillNormal(data, 0.5);
  return { dims, data };
}

/** Build a tiny llama with grouped-query attention, biases and a separate output matrix. */
function tinyWeights(options: { tied?: boolean; layout?: "adjacent" | "halves"; invFreq?: Float64Array } = {}): LlamaWeights {
  const rng = new Xoshiro128(42);
  const nEmbd = 16, nHeads = 4, nKvHeads = 2, headDim = 4, nFf = 24, vocabSize = 300;
  const config: LlamaConfig = {
    architecture: "llama",
    nLayers: 2,
    nEmbd,
    nHeads,
    nKvHeads,
    headDim,
    nFf,
    vocabSize,
    contextLength: 128,
    rmsNormEps: Math.fround(1e-5),
    rope: { dim: headDim, base: 10000, layout: options.layout ?? "adjacent", invFreq: options.invFreq ?? ropeInvFreq(headDim, 10000) },
  };
  const layers = Array.from({ length: config.nLayers }, () => ({
    attnNorm: randomTensor(rng, [nEmbd]),
    wq: randomTensor(rng, [nHeads * headDim, nEmbd]),
    wk: randomTensor(rng, [nKvHeads * headDim, nEmbd]),
    wv: randomTensor(rng, [nKvHeads * headDim, nEmbd]),
    wo: randomTensor(rng, [nEmbd, nHeads * headDim]),
    bq: randomTensor(rng, [nHeads * headDim]),
    bk: randomTensor(rng, [nKvHeads * headDim]),
    bv: randomTensor(rng, [nKvHeads * headDim]),
    ffnNorm: randomTensor(rng, [nEmbd]),
    wGate: randomTensor(rng, [nFf, nEmbd]),
    wUp: randomTensor(rng, [nFf, nEmbd]),
    wDown: randomTensor(rng, [nEmbd, nFf]),
  }));
  const tokenEmbedding = randomTensor(rng, [vocabSize, nEmbd]);
  const output = options.tied ? tokenEmbedding : randomTensor(rng, [vocabSize, nEmbd]);
  return { config, tokenEmbedding, layers, outputNorm: randomTensor(rng, [nEmbd]), output };
}

function tinyTokenizer(): TokenizerData {
  const data = syntheticVocabulary(300);
  return { ...data, paddingId: 0, addEos: true, chatTemplate: "{{ messages }}" };
}

/** Map every tensor of a model by block and field name, for comparisons. */
function tensorsByName(weights: LlamaWeights): Map<string, Tensor> {
  const tensors = new Map<string, Tensor>([
    ["token_embd.weight", weights.tokenEmbedding],
    ["output_norm.weight", weights.outputNorm],
    ["output.weight", weights.output],
  ]);
  weights.layers.forEach((layer, i) => {
    for (const [field, tensor] of Object.entries(layer)) tensors.set(`blk.${i}.${field}`, tensor as Tensor);
  });
  return tensors;
}

function expectSameWeights(actual: LlamaWeights, expected: LlamaWeights, convert: (t: Tensor, name: string) => Float32Array = (t) => t.data) {
  const actualTensors = tensorsByName(actual);
  const expectedTensors = tensorsByName(expected);
  expect([...actualTensors.keys()].sort()).toEqual([...expectedTensors.keys()].sort());
  for (const [name, tensor] of expectedTensors) {
    const loaded = actualTensors.get(name)!;
    expect({ name, dims: loaded.dims }).toEqual({ name, dims: tensor.dims });
    expect({ name, equal: Buffer.compare(Buffer.from(loaded.data.buffer, loaded.data.byteOffset, loaded.data.byteLength), Buffer.from(convert(tensor, name).buffer)) })
      .toEqual({ name, equal: 0 });
  }
}

function expectSameConfig(actual: LlamaConfig, expected: LlamaConfig) {
  const { rope: actualRope, ...actualRest } = actual;
  const { rope: expectedRope, ...expectedRest } = expected;
  expect(actualRest).toEqual(expectedRest);
  expect(actualRope.dim).toBe(expectedRope.dim);
  expect(actualRope.base).toBe(expectedRope.base);
  expect(actualRope.layout).toBe("adjacent");
  expect(Array.from(actualRope.invFreq)).toEqual(Array.from(expectedRope.invFreq));
}

function expectSameTokenizer(actual: TokenizerData, expected: TokenizerData) {
  expect({ ...actual, scores: Array.from(actual.scores), tokenTypes: Array.from(actual.tokenTypes) })
    .toEqual({ ...expected, scores: Array.from(expected.scores), tokenTypes: Array.from(expected.tokenTypes) });
}

function f16Round(data: Float32Array): Float32Array {
  return data.map((value) => Math.f16round(value));
}

// ---------------------------------------------------------------------------------------
// Llama round trip
// ---------------------------------------------------------------------------------------

describe("llamaGgufFromWeights", () => {
  for (const version of [1, 3] as const) {
    test(`round trip of tiny model, version ${version}`, () => {
      const weights = tinyWeights();
      const tokenizer = tinyTokenizer();
      const bytes = llamaGgufFromWeights(weights, tokenizer, { version, name: "tiny" });
      const loaded = loadLlamaGgufBytes(bytes);

      expect(loaded.version).toBe(version);
      expectSameConfig(loaded.weights.config, weights.config);
      expectSameWeights(loaded.weights, weights);
      expectSameTokenizer(loaded.tokenizer.data, tokenizer);
      expect(loaded.metadata.get("general.name")).toBe("tiny");
      expect(loaded.metadata.get("general.file_type")).toBe(0);
    });
  }

  test("tied embeddings omit output.weight", () => {
    const weights = tinyWeights({ tied: true });
    const bytes = llamaGgufFromWeights(weights, tinyTokenizer());
    expect(parseGguf(bytes).tensors.has("output.weight")).toBe(false);
    const loaded = loadLlamaGgufBytes(bytes);
    expect(loaded.weights.output).toBe(loaded.weights.tokenEmbedding);
    expectSameWeights(loaded.weights, weights);
  });

  test("F16 matrices round, vectors stay F32", () => {
    const weights = tinyWeights();
    const bytes = llamaGgufFromWeights(weights, tinyTokenizer(), { tensorType: "F16" });
    const file = parseGguf(bytes);
    expect(file.tensors.get("blk.0.attn_q.weight")!.type).toBe(1);
    expect(file.tensors.get("token_embd.weight")!.type).toBe(1);
    expect(file.tensors.get("blk.0.attn_norm.weight")!.type).toBe(0);
    expect(file.tensors.get("blk.0.attn_q.bias")!.type).toBe(0);
    expect(file.metadata.get("general.file_type")!.value).toBe(1);

    const loaded = loadLlamaGgufBytes(bytes);
    const isVector = (name: string) => /norm|^blk\.\d+\.b[qkv]$/i.test(name);
    expectSameWeights(loaded.weights, weights, (tensor, name) => (isVector(name) ? tensor.data : f16Round(tensor.data)));
  });

  test("halves layout is permuted to adjacent", () => {
    const weights = tinyWeights({ layout: "halves" });
    const loaded = loadLlamaGgufBytes(llamaGgufFromWeights(weights, tinyTokenizer()));
    const { headDim, nEmbd } = weights.config;
    const original = weights.layers[0].wq.data;
    const permuted = loaded.weights.layers[0].wq.data;
    // Head h, pair i: Hugging Face rows (i, i + headDim/2) become rows (2i, 2i + 1).
    for (let h = 0; h < weights.config.nHeads; h++) {
      for (let i = 0; i < headDim / 2; i++) {
        for (let j = 0; j < 2; j++) {
          const from = (h * headDim + j * (headDim / 2) + i) * nEmbd;
          const to = (h * headDim + 2 * i + j) * nEmbd;
          expect(Array.from(permuted.subarray(to, to + nEmbd))).toEqual(Array.from(original.subarray(from, from + nEmbd)));
        }
      }
    }
    const bk = weights.layers[0].bk!.data;
    expect(Array.from(loaded.weights.layers[0].bk!.data.subarray(0, 4))).toEqual([bk[0], bk[2], bk[1], bk[3]]);
    expect(Array.from(loaded.weights.layers[0].wv.data)).toEqual(Array.from(weights.layers[0].wv.data));
  });

  test("linear rope scaling round trip", () => {
    const invFreq = ropeInvFreq(4, 10000).map((value) => value / 4);
    const loaded = loadLlamaGgufBytes(llamaGgufFromWeights(tinyWeights({ invFreq }), tinyTokenizer()));
    expect(loaded.metadata.get("llama.rope.scaling.type")).toBe("linear");
    expect(loaded.metadata.get("llama.rope.scaling.factor")).toBe(4);
    expect(Array.from(loaded.weights.config.rope.invFreq)).toEqual(Array.from(invFreq));
  });

  test("per-pair rope factors go to rope_freqs.weight", () => {
    const invFreq = ropeInvFreq(4, 10000).map((value, i) => value / (i + 1));
    const bytes = llamaGgufFromWeights(tinyWeights({ invFreq }), tinyTokenizer());
    expect(Array.from(readTensor(parseGguf(bytes), "rope_freqs.weight").data)).toEqual([1, 2]);
    const loaded = loadLlamaGgufBytes(bytes);
    expect(Array.from(loaded.weights.config.rope.invFreq)).toEqual(Array.from(invFreq));
  });

  test("vocabulary size mismatch is rejected", () => {
    const tokenizer = syntheticVocabulary(301);
    expect(() => llamaGgufFromWeights(tinyWeights(), tokenizer)).toThrow(
      "Failed to write llama GGUF: the tokenizer has 301 tokens, current config.vocabSize is 300",
    );
  });

  for (const path of [STORIES_V1, STORIES_V3]) {
    test(`stories260K rewrite loads equal, ${path.endsWith("v3.gguf") ? "v3" : "v1"}`, async () => {
      const original = loadLlamaGgufBytes(new Uint8Array(await readFile(path)));
      const rewritten = loadLlamaGgufBytes(llamaGgufFromWeights(original.weights, original.tokenizer.data, { version: original.version as 1 | 3 }));
      expect(rewritten.version).toBe(original.version);
      expectSameConfig(rewritten.weights.config, original.weights.config);
      expectSameWeights(rewritten.weights, original.weights);
      expectSameTokenizer(rewritten.tokenizer.data, original.tokenizer.data);
    });
  }
});

// ---------------------------------------------------------------------------------------
// Generic writer
// ---------------------------------------------------------------------------------------

describe("writeGguf", () => {
  for (const path of [STORIES_V1, STORIES_V3]) {
    test(`rewrite of ${path.split("/").pop()} is byte-identical`, async () => {
      const bytes = new Uint8Array(await readFile(path));
      const file = parseGguf(bytes);
      const spec: GgufSpec = {
        version: file.version as 1 | 3,
        metadata: file.metadata,
        tensors: [...file.tensors.keys()].map((name) => ({ name, ...readTensor(file, name), type: "F32" as const })),
      };
      const rewritten = writeGguf(spec);
      expect(rewritten.length).toBe(bytes.length);
      expect(Buffer.compare(Buffer.from(rewritten), Buffer.from(bytes))).toBe(0);
    });
  }

  test("metadata of every value type round trips", () => {
    for (const version of [2, 3] as const) {
      const metadata = new GgufMetadataBuilder()
        .add("u8", T.UINT8, 255)
        .add("i8", T.INT8, -128)
        .add("u16", T.UINT16, 65535)
        .add("i16", T.INT16, -32768)
        .uint32("u32", 4294967295)
        .int32("i32", -2147483648)
        .float32("f32", 0.5)
        .bool("bool", true)
        .string("string", "héllo ▁ 😀")
        .add("u64", T.UINT64, 18446744073709551615n)
        .add("i64", T.INT64, -9223372036854775808n)
        .add("f64", T.FLOAT64, 0.1)
        .array("strings", T.STRING, ["", "a", "▁b", "<0x0A>"])
        .array("floats", T.FLOAT32, new Float32Array([1.5, -2, 0]))
        .array("ints", T.INT32, [1, -2, 3])
        .array("bools", T.BOOL, [false, true])
        .array("empty", T.UINT8, [])
        .array("nested", T.ARRAY, [{ arrayType: T.UINT16, value: [1, 2] }, { arrayType: T.STRING, value: ["x"] }])
        .entries();
      const file = parseGguf(writeGguf({ version, metadata, tensors: [] }));
      const values = Object.fromEntries([...file.metadata].map(([key, entry]) => [key, entry.value]));
      expect(values).toEqual({
        u8: 255, i8: -128, u16: 65535, i16: -32768, u32: 4294967295, i32: -2147483648, f32: 0.5, bool: true,
        string: "héllo ▁ 😀", u64: 18446744073709551615n, i64: -9223372036854775808n, f64: 0.1,
        strings: ["", "a", "▁b", "<0x0A>"], floats: [1.5, -2, 0], ints: [1, -2, 3], bools: [false, true],
        empty: [], nested: [[1, 2], ["x"]],
      });
      expect(file.metadata.get("strings")!.arrayType).toBe(T.STRING);
      expect(file.metadata.get("ints")!.type).toBe(T.ARRAY);
      expect(file.metadata.get("u64")!.type).toBe(T.UINT64);
    }
  });

  test("header larger than 64 KiB", () => {
    // The header buffer starts at 64 KiB and grows, so values written across each growth must survive.
    const words = Array.from({ length: 30_000 }, (_, i) => `▁piece${i}`);
    const scores = Array.from({ length: 30_000 }, (_, i) => -i - 0.5);
    const metadata = new GgufMetadataBuilder()
      .array("tokens", T.STRING, words)
      .array("scores", T.FLOAT32, scores)
      .uint32("after", 123456789)
      .entries();
    const bytes = writeGguf({ metadata, tensors: [{ name: "w", dims: [2], type: "F32", data: new Float32Array([7, 8]) }] });
    const file = parseGguf(bytes);
    expect(file.dataOffset).toBeGreaterThan(4 * 65536);
    expect(file.metadata.get("tokens")!.value).toEqual(words);
    expect(file.metadata.get("scores")!.value).toEqual(scores);
    expect(file.metadata.get("after")!.value).toBe(123456789);
    expect(Array.from(readTensor(file, "w").data)).toEqual([7, 8]);
  });

  test("version 1 arrays of strings", () => {
    const metadata = new GgufMetadataBuilder().array("tokens", T.STRING, ["<unk>", "▁the"]).entries();
    const bytes = writeGguf({ version: 1, metadata, tensors: [] });
    const file = parseGguf(bytes);
    expect(file.version).toBe(1);
    expect(file.metadata.get("tokens")!.value).toEqual(["<unk>", "▁the"]);
    // 57 bytes padded to 64. Version 3 writes the two counts, the key length, the array length
    // and both string lengths as u64, 24 bytes more: 81 padded to 96.
    expect(bytes.length).toBe(64);
    expect(bytes.subarray(57).every((b) => b === 0)).toBe(true);
    expect(planGguf({ version: 3, metadata, tensors: [] }).header.length).toBe(96);
  });

  test("version 1 rejects 64-bit types", () => {
    const metadata = new GgufMetadataBuilder().add("big", T.UINT64, 1n).entries();
    expect(() => writeGguf({ version: 1, metadata, tensors: [] })).toThrow(
      "Failed to write GGUF metadata big: UINT64 does not exist in GGUF version 1, write version 2 or 3",
    );
  });

  test("out-of-range values are rejected", () => {
    const write = (type: number, value: unknown) =>
      writeGguf({ metadata: [["key", { type, value: value as number }]], tensors: [] });
    expect(() => write(T.UINT8, 256)).toThrow("Failed to write GGUF metadata key: current value is 256, UINT8 needs an integer from 0 to 255");
    expect(() => write(T.INT32, 1.5)).toThrow("current value is 1.5, INT32 needs an integer");
    expect(() => write(T.STRING, 3)).toThrow("current value is 3, STRING needs a string");
    expect(() => write(T.UINT64, -1n)).toThrow("current value is -1n, UINT64 needs a value from 0 to 18446744073709551615");
    expect(() => write(T.ARRAY, [1])).toThrow("an ARRAY entry needs arrayType");
    expect(() => write(13, 0)).toThrow("current type is 13, not a GGUF value type");
  });

  test("tensor input errors", () => {
    const tensor = { name: "w", dims: [2, 3], type: "F32" as const, data: new Float32Array(6) };
    expect(() => writeGguf({ metadata: [], tensors: [tensor, tensor] })).toThrow("Failed to write tensor w: the name is used twice");
    expect(() => writeGguf({ metadata: [], tensors: [{ ...tensor, data: new Float32Array(5) }] })).toThrow(
      "Failed to write tensor w: dims [2,3] need 6 values, current data has 5",
    );
    expect(() => writeGguf({ metadata: [], tensors: [{ ...tensor, name: "x".repeat(64) }] })).toThrow("its name is 64 bytes, ggml allows 1 to 63");
    expect(() => writeGguf({ metadata: [], tensors: [{ ...tensor, dims: [1, 1, 1, 1, 6] }] })).toThrow("expected 1 to 4 positive integers");
    const short = { ...tensor, data: () => [new Float32Array(4)] };
    expect(() => writeGguf({ metadata: [], tensors: [short] })).toThrow("dims [2,3] need 6 values, current data source yields 4");
    const long = { ...tensor, data: () => [new Float32Array(4), new Float32Array(4)] };
    expect(() => writeGguf({ metadata: [], tensors: [long] })).toThrow("current data source yields more");
  });

  test("tensor data offsets are aligned", () => {
    for (const alignment of [32, 64, 256]) {
      const metadata = alignment === 32 ? [] : new GgufMetadataBuilder().uint32("general.alignment", alignment).entries();
      const sizes = [[3], [5, 7], [1], [2, 3, 5], [33]];
      const tensors = sizes.map((dims, i) => ({
        name: `t${i}`,
        dims,
        type: i % 2 === 0 ? "F16" as const : "F32" as const,
        data: new Float32Array(dims.reduce((a, b) => a * b, 1)).map((_, k) => k + i),
      }));
      const bytes = writeGguf({ metadata, tensors });
      const file = parseGguf(bytes);
      expect(file.alignment).toBe(alignment);
      expect(file.dataOffset % alignment).toBe(0);
      let previousEnd = 0;
      for (const tensor of tensors) {
        const info = file.tensors.get(tensor.name)!;
        expect(info.offset % alignment).toBe(0);
        expect(info.offset).toBeGreaterThanOrEqual(previousEnd);
        // Padding between tensors is zeros.
        expect(bytes.subarray(file.dataOffset + previousEnd, file.dataOffset + info.offset).every((b) => b === 0)).toBe(true);
        previousEnd = info.offset + tensor.data.length * (tensor.type === "F32" ? 4 : 2);
        expect(info.ne).toEqual([...tensor.dims].reverse());
        expect(Array.from(readTensor(file, tensor.name).data)).toEqual(Array.from(tensor.data));
      }
      expect(bytes.length % alignment).toBe(0);
    }
  });

  test("alignment must be a power of two", () => {
    const metadata = new GgufMetadataBuilder().uint32("general.alignment", 48).entries();
    expect(() => writeGguf({ metadata, tensors: [] })).toThrow("general.alignment must be a power of two, current value is 48");
  });
});

// ---------------------------------------------------------------------------------------
// Float16 conversion
// ---------------------------------------------------------------------------------------

describe("floatToHalf", () => {
  test("exactly representable values survive", () => {
    const exact = [0, 1, -1, 0.5, 2048, 65504, -65504, 2 ** -14, 2 ** -24, 3 * 2 ** -24, 1023 * 2 ** -24, 1 + 2 ** -10, Infinity, -Infinity];
    for (const value of exact) expect({ value, back: halfToFloat(floatToHalf(value)) }).toEqual({ value, back: value });
    expect(floatToHalf(-0)).toBe(0x8000);
    expect(floatToHalf(0)).toBe(0);
    expect(floatToHalf(1)).toBe(0x3c00);
    expect(floatToHalf(65504)).toBe(0x7bff);
    expect(floatToHalf(2 ** -24)).toBe(0x0001);
  });

  test("ties round to nearest even", () => {
    // Between 1 and 1 + 2^-10 the tie goes down to the even mantissa 0.
    expect(floatToHalf(1 + 2 ** -11)).toBe(0x3c00);
    // Between 1 + 2^-10 (odd) and 1 + 2^-9 (even) the tie goes up.
    expect(floatToHalf(1 + 3 * 2 ** -11)).toBe(0x3c02);
    // Just above the tie rounds up.
    expect(floatToHalf(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01);
    // Subnormal ties: 0.5 and 1.5 units of 2^-24.
    expect(floatToHalf(2 ** -25)).toBe(0);
    expect(floatToHalf(3 * 2 ** -25)).toBe(0x0002);
    expect(floatToHalf(2 ** -25 + 2 ** -40)).toBe(0x0001);
    // The largest subnormal rounds up into the smallest normal.
    expect(floatToHalf(2 ** -14 - 2 ** -26)).toBe(0x0400);
    // 65520 is the tie between 65504 and 2^16, which overflows to infinity.
    expect(floatToHalf(65520)).toBe(0x7c00);
    expect(floatToHalf(65519.99)).toBe(0x7bff);
    expect(floatToHalf(1e-10)).toBe(0);
    expect(floatToHalf(-1e-10)).toBe(0x8000);
  });

  test("NaN stays NaN", () => {
    expect(Number.isNaN(halfToFloat(floatToHalf(NaN)))).toBe(true);
    const smallPayload = new Float32Array(new Uint32Array([0x7f800001]).buffer)[0];
    expect(Number.isNaN(halfToFloat(floatToHalf(smallPayload)))).toBe(true);
  });

  test("matches Math.f16round on random floats", () => {
    const rng = new Xoshiro128(7);
    const bits = new Uint32Array(200_000);
    for (let i = 0; i < bits.length; i++) {
      // Half of the samples near the float16 range, so rounding, not flushing, is tested.
      const random = rng.nextUint32();
      bits[i] = i % 2 === 0 ? random : (random & 0x80ffffff) | ((100 + (random % 45)) << 23);
    }
    const values = new Float32Array(bits.buffer);
    const halves = floatsToHalves(values);
    let mismatches = 0;
    for (let i = 0; i < values.length; i++) {
      const expected = Math.f16round(values[i]);
      const actual = halfToFloat(halves[i]);
      if (!Object.is(actual, expected) && !(Number.isNaN(actual) && Number.isNaN(expected))) mismatches++;
    }
    expect(mismatches).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------
// Streaming writer
// ---------------------------------------------------------------------------------------

describe("writeGgufFile", () => {
  test("file equals in-memory bytes", async () => {
    const dir = await mkdtemp(join(tmpdir(), "gguf-writer-"));
    try {
      const count = 3 * (1 << 20) + 5;
      const lazy = (seed: number) => () => {
        const chunks: Float32Array[] = [];
        const rng = new Xoshiro128(seed);
        for (let left = count; left > 0; left -= 1_000_000) {
          const chunk = new Float32Array(Math.min(left, 1_000_000));
          rng.fillNormal(chunk, 1);
          chunks.push(chunk);
        }
        return chunks;
      };
      const spec: GgufSpec = {
        metadata: new GgufMetadataBuilder().string("general.architecture", "test").entries(),
        tensors: [
          { name: "a", dims: [count], type: "F16", data: lazy(1) },
          { name: "b", dims: [3], type: "F32", data: new Float32Array([1, 2, 3]) },
          { name: "c", dims: [count], type: "F32", data: lazy(2) },
        ],
      };
      const path = join(dir, "model.gguf");
      const layout = await writeGgufFile(path, spec);
      const written = new Uint8Array(await readFile(path));
      expect(written.length).toBe(layout.fileSize);
      expect(Buffer.compare(Buffer.from(written), Buffer.from(writeGguf(spec)))).toBe(0);
      expect(await readdir(dir)).toEqual(["model.gguf"]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("failed write leaves no file", async () => {
    const dir = await mkdtemp(join(tmpdir(), "gguf-writer-"));
    try {
      const spec: GgufSpec = { metadata: [], tensors: [{ name: "a", dims: [10], type: "F32", data: () => [new Float32Array(9)] }] };
      await expect(writeGgufFile(join(dir, "model.gguf"), spec)).rejects.toThrow("current data source yields 9");
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------
// Benchmark model inputs
// ---------------------------------------------------------------------------------------

describe("syntheticVocabulary", () => {
  test("benchmark sizes, unique pieces", () => {
    for (const shape of BENCH_MODELS) {
      const vocabulary = syntheticVocabulary(shape.vocabSize);
      expect(vocabulary.tokens.length).toBe(shape.vocabSize);
      expect(new Set(vocabulary.tokens).size).toBe(shape.vocabSize);
      expect(vocabulary.tokens.slice(0, 4)).toEqual(["<unk>", "<s>", "</s>", "<0x00>"]);
      expect(vocabulary.tokens[258]).toBe("<0xFF>");
      expect(vocabulary.tokenTypes[258]).toBe(TOKEN_TYPE.BYTE);
      expect(vocabulary.scores[300]).toBeGreaterThan(vocabulary.scores[301]);
      expect(benchModelConfig(shape).headDim).toBe(64);
    }
  }, VOCABULARY_TIMEOUT_MS);

  test("tokenizes real log text", async () => {
    const tokenizer = new Tokenizer(syntheticVocabulary(49152));
    const lines = (await readFile(LOG_FILE, "utf8")).split("\r\n").slice(0, 50).join("\n");
    const ids = tokenizer.encode(lines, { addBos: false });
    expect(tokenizer.decode(ids)).toBe(lines);
    // Merged pieces, not single characters, carry the text: about 1.8 characters per token.
    expect(ids.length).toBeLessThan(lines.length * 0.6);
    const byteIds = ids.filter((id) => id >= 3 && id < 259);
    expect(byteIds.length).toBe(lines.split("\n").length - 1);
  }, VOCABULARY_TIMEOUT_MS);
});
