import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import {
  GGML_TYPE_F16,
  GGML_TYPE_F32,
  GGUF_VALUE_TYPE,
  type GgufFile,
  type GgufMetadataEntry,
  halfToFloat,
  parseGguf,
  readTensor,
} from "../core/gguf.ts";
import { loadLlamaGguf, loadLlamaGgufBytes } from "../core/llama_gguf.ts";
import { ropeInvFreq } from "../core/types.ts";

const MODEL_V1 = new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname;
const MODEL_V3 = new URL("../../shared/models/stories260K-v3.gguf", import.meta.url).pathname;
const bytesV1 = new Uint8Array(readFileSync(MODEL_V1));
const bytesV3 = new Uint8Array(readFileSync(MODEL_V3));

/** A tensor to write: ggml `ne` (innermost first), type id and raw data bytes. */
interface TensorToWrite {
  name: string;
  ne: number[];
  type: number;
  data: Uint8Array;
}

/** Serialize metadata and tensors as a GGUF file, for building malformed or varied inputs. */
function writeGguf(
  version: number,
  metadata: Map<string, GgufMetadataEntry>,
  tensors: TensorToWrite[],
  alignment = 32,
): Uint8Array {
  const parts: number[] = [];
  const u8 = (v: number) => parts.push(v & 0xff);
  const u32 = (v: number) => { for (let i = 0; i < 4; i++) u8(v >>> (8 * i)); };
  const u64 = (v: bigint | number) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
    b.forEach(u8);
  };
  const size = (v: number) => (version === 1 ? u32(v) : u64(v));
  const string = (s: string) => {
    const b = new TextEncoder().encode(s);
    size(b.length);
    b.forEach(u8);
  };
  const raw = (n: number, set: (view: DataView) => void) => {
    const b = new Uint8Array(n);
    set(new DataView(b.buffer));
    b.forEach(u8);
  };
  const scalar = (type: number, value: unknown) => {
    const T = GGUF_VALUE_TYPE;
    switch (type) {
      case T.UINT8: case T.INT8: case T.BOOL: return u8(Number(value));
      case T.UINT16: return raw(2, (v) => v.setUint16(0, Number(value), true));
      case T.INT16: return raw(2, (v) => v.setInt16(0, Number(value), true));
      case T.UINT32: return raw(4, (v) => v.setUint32(0, Number(value), true));
      case T.INT32: return raw(4, (v) => v.setInt32(0, Number(value), true));
      case T.FLOAT32: return raw(4, (v) => v.setFloat32(0, Number(value), true));
      case T.UINT64: return raw(8, (v) => v.setBigUint64(0, BigInt(value as bigint), true));
      case T.INT64: return raw(8, (v) => v.setBigInt64(0, BigInt(value as bigint), true));
      case T.FLOAT64: return raw(8, (v) => v.setFloat64(0, Number(value), true));
      case T.STRING: return string(String(value));
      default: throw new Error(`writer has no scalar type ${type}`);
    }
  };

  parts.push(0x47, 0x47, 0x55, 0x46);
  u32(version);
  size(tensors.length);
  size(metadata.size);
  for (const [key, entry] of metadata) {
    string(key);
    u32(entry.type);
    if (entry.type === GGUF_VALUE_TYPE.ARRAY) {
      const values = entry.value as unknown[];
      u32(entry.arrayType!);
      size(values.length);
      for (const v of values) scalar(entry.arrayType!, v);
    } else {
      scalar(entry.type, entry.value);
    }
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    offsets.push(offset);
    offset += Math.ceil(t.data.length / alignment) * alignment;
  }
  tensors.forEach((t, i) => {
    string(t.name);
    u32(t.ne.length);
    t.ne.forEach(size);
    u32(t.type);
    u64(offsets[i]);
  });
  while (parts.length % alignment !== 0) u8(0);
  const dataStart = parts.length;
  tensors.forEach((t, i) => {
    while (parts.length < dataStart + offsets[i]) u8(0);
    t.data.forEach(u8);
  });
  return Uint8Array.from(parts);
}

/** Re-serialize a parsed file with edits: the basis of the error tests. */
function rewrite(
  file: GgufFile,
  edit: { version?: number; metadata?: (m: Map<string, GgufMetadataEntry>) => void; tensors?: (t: TensorToWrite[]) => void },
): Uint8Array {
  const metadata = new Map(file.metadata);
  edit.metadata?.(metadata);
  const tensors: TensorToWrite[] = [...file.tensors.values()].map((info) => {
    const count = info.ne.reduce((a, b) => a * b, 1);
    const start = file.dataOffset + info.offset;
    return { name: info.name, ne: info.ne, type: info.type, data: file.bytes.slice(start, start + count * 4) };
  });
  edit.tensors?.(tensors);
  return writeGguf(edit.version ?? file.version, metadata, tensors, file.alignment);
}

describe("parseGguf", () => {
  test("reads version 1 and version 3 headers", () => {
    const v1 = parseGguf(bytesV1);
    const v3 = parseGguf(bytesV3);
    expect(v1.version).toBe(1);
    expect(v3.version).toBe(3);
    expect(v1.alignment).toBe(32);
    expect(v1.dataOffset % 32).toBe(0);
    expect(v3.dataOffset % 32).toBe(0);
    expect(v1.tensors.size).toBe(3 + 5 * 9);
    expect([...v1.metadata.keys()]).toEqual([...v3.metadata.keys()]);
    for (const [key, entry] of v1.metadata) expect(v3.metadata.get(key)).toEqual(entry);
    expect([...v1.tensors.values()]).toEqual([...v3.tensors.values()]);
  });

  test("reads metadata values and tensor infos", () => {
    const file = parseGguf(bytesV1);
    expect(file.metadata.get("general.architecture")?.value).toBe("llama");
    expect(file.metadata.get("llama.block_count")).toEqual({ type: GGUF_VALUE_TYPE.UINT32, value: 5 });
    const tokens = file.metadata.get("tokenizer.ggml.tokens")!;
    expect(tokens.arrayType).toBe(GGUF_VALUE_TYPE.STRING);
    expect((tokens.value as string[]).slice(0, 4)).toEqual(["<unk>", "<s>", "</s>", "<0x00>"]);
    expect(file.tensors.get("blk.0.attn_k.weight")).toEqual({
      name: "blk.0.attn_k.weight",
      ne: [64, 32],
      type: GGML_TYPE_F32,
      offset: 147456,
    });
  });

  test("round-trips every metadata value type", () => {
    const T = GGUF_VALUE_TYPE;
    const metadata = new Map<string, GgufMetadataEntry>([
      ["u8", { type: T.UINT8, value: 250 }],
      ["i8", { type: T.INT8, value: -5 }],
      ["u16", { type: T.UINT16, value: 65000 }],
      ["i16", { type: T.INT16, value: -30000 }],
      ["u32", { type: T.UINT32, value: 4000000000 }],
      ["i32", { type: T.INT32, value: -2000000000 }],
      ["f32", { type: T.FLOAT32, value: 0.5 }],
      ["bool", { type: T.BOOL, value: true }],
      ["string", { type: T.STRING, value: "héllo ▁ 😀" }],
      ["u64", { type: T.UINT64, value: 2n ** 63n + 5n }],
      ["i64", { type: T.INT64, value: -(2n ** 40n) }],
      ["f64", { type: T.FLOAT64, value: Math.PI }],
      ["array", { type: T.ARRAY, arrayType: T.INT32, value: [1, -2, 3] }],
      ["strings", { type: T.ARRAY, arrayType: T.STRING, value: ["a", "", "bc"] }],
      ["empty", { type: T.ARRAY, arrayType: T.FLOAT32, value: [] }],
    ]);
    for (const version of [1, 2, 3]) {
      const file = parseGguf(writeGguf(version, metadata, []));
      expect(file.version).toBe(version);
      for (const [key, entry] of metadata) expect(file.metadata.get(key)).toEqual(entry);
    }
  });

  test("uses general.alignment for the data offset", () => {
    const metadata = new Map<string, GgufMetadataEntry>([
      ["general.alignment", { type: GGUF_VALUE_TYPE.UINT32, value: 64 }],
    ]);
    const data = new Uint8Array(new Float32Array([1, 2, 3]).buffer);
    const file = parseGguf(writeGguf(3, metadata, [{ name: "t", ne: [3], type: GGML_TYPE_F32, data }], 64));
    expect(file.alignment).toBe(64);
    expect(file.dataOffset % 64).toBe(0);
    expect(Array.from(readTensor(file, "t").data)).toEqual([1, 2, 3]);
  });

  test("rejects bad magic naming the first bytes", () => {
    const bytes = new TextEncoder().encode("PK\u0003\u0004 not a model");
    expect(() => parseGguf(bytes)).toThrow(
      'Failed to parse GGUF: not a GGUF file, the first bytes are 50 4b 03 04 ("PK\\u0003\\u0004"), expected 47 47 55 46 ("GGUF")',
    );
  });

  test("rejects an unsupported version", () => {
    const bytes = bytesV3.slice();
    bytes[4] = 4;
    expect(() => parseGguf(bytes)).toThrow("Failed to parse GGUF: current version is 4, supported versions are 1, 2 and 3");
  });

  test("rejects a file truncated in the header", () => {
    expect(() => parseGguf(bytesV1.slice(0, 5))).toThrow(
      "Failed to parse GGUF: the file is truncated (current size is 5 bytes, a header needs 8)",
    );
    expect(() => parseGguf(bytesV1.slice(0, 1000))).toThrow(/the file is truncated \(current size is 1000 bytes/);
  });

  test("rejects a file truncated in the tensor data", () => {
    const size = bytesV3.length - 100;
    expect(() => parseGguf(bytesV3.slice(0, size))).toThrow(
      `Failed to parse GGUF: data of tensor output.weight ends at byte ${bytesV3.length}, the file is truncated (current size is ${size} bytes)`,
    );
  });
});

describe("readTensor", () => {
  test("converts F16 to F32", () => {
    const halves = Uint16Array.from([0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x8000]);
    const data = new Uint8Array(halves.buffer);
    const file = parseGguf(writeGguf(3, new Map(), [{ name: "h", ne: [3, 2], type: GGML_TYPE_F16, data }]));
    const tensor = readTensor(file, "h");
    expect(tensor.dims).toEqual([2, 3]);
    expect(Array.from(tensor.data)).toEqual([1, -2, 65504, 2 ** -24, Math.fround(0.333251953125), -0]);
  });

  test("halfToFloat handles special values", () => {
    expect(halfToFloat(0x7c00)).toBe(Infinity);
    expect(halfToFloat(0xfc00)).toBe(-Infinity);
    expect(halfToFloat(0x7e00)).toBeNaN();
    expect(halfToFloat(0x0400)).toBe(2 ** -14);
  });

  test("rejects unsupported quantized types by name", () => {
    const file = parseGguf(bytesV3);
    file.tensors.get("blk.0.attn_q.weight")!.type = 13;
    expect(() => readTensor(file, "blk.0.attn_q.weight")).toThrow(
      "Unsupported tensor type Q5_K in blk.0.attn_q.weight: sinkstream loads F32, F16, Q8_0, Q4_0, Q4_K and Q6_K tensors",
    );
    file.tensors.get("blk.0.attn_k.weight")!.type = 99;
    expect(() => readTensor(file, "blk.0.attn_k.weight")).toThrow("Unsupported tensor type unknown ggml type 99");
  });

  test("reverses ggml ne into outermost-first dims", () => {
    const file = parseGguf(bytesV1);
    const wk = readTensor(file, "blk.0.attn_k.weight");
    expect(wk.dims).toEqual([32, 64]);
    const info = file.tensors.get("blk.0.attn_k.weight")!;
    const view = new DataView(bytesV1.buffer, bytesV1.byteOffset + file.dataOffset + info.offset);
    // Element [row 1, col 2] sits at flat index 1 * 64 + 2 in ggml's row-major storage.
    expect(wk.data[66]).toBe(view.getFloat32(66 * 4, true));
  });
});

describe("loadLlamaGguf", () => {
  test("reads the stories260K config", async () => {
    const { weights, version } = await loadLlamaGguf(MODEL_V1);
    const config = weights.config;
    expect(version).toBe(1);
    expect(config.architecture).toBe("llama");
    expect(config.nLayers).toBe(5);
    expect(config.nEmbd).toBe(64);
    expect(config.nHeads).toBe(8);
    expect(config.nKvHeads).toBe(4);
    expect(config.headDim).toBe(8);
    expect(config.nFf).toBe(172);
    expect(config.vocabSize).toBe(512);
    expect(config.contextLength).toBe(512);
    expect(config.rmsNormEps).toBe(Math.fround(1e-5));
    expect(config.rope.dim).toBe(8);
    expect(config.rope.base).toBe(10000);
    expect(config.rope.layout).toBe("adjacent");
    expect(Array.from(config.rope.invFreq)).toEqual(Array.from(ropeInvFreq(8, 10000)));
  });

  test("reads weights with outermost-first dims", async () => {
    const { weights } = await loadLlamaGguf(MODEL_V3);
    expect(weights.tokenEmbedding.dims).toEqual([512, 64]);
    expect(weights.output.dims).toEqual([512, 64]);
    expect(weights.outputNorm.dims).toEqual([64]);
    expect(weights.layers.length).toBe(5);
    const layer = weights.layers[4];
    expect(layer.wq.dims).toEqual([64, 64]);
    expect(layer.wk.dims).toEqual([32, 64]);
    expect(layer.wv.dims).toEqual([32, 64]);
    expect(layer.wo.dims).toEqual([64, 64]);
    expect(layer.wGate.dims).toEqual([172, 64]);
    expect(layer.wUp.dims).toEqual([172, 64]);
    expect(layer.wDown.dims).toEqual([64, 172]);
    expect(layer.bq).toBeUndefined();
    // stories260K writes its tied embedding twice.
    expect(weights.output).not.toBe(weights.tokenEmbedding);
    expect(weights.output.data).toEqual(weights.tokenEmbedding.data);
  });

  test("version 1 and version 3 give identical weights and tokenizer", async () => {
    const a = await loadLlamaGguf(MODEL_V1);
    const b = await loadLlamaGguf(MODEL_V3);
    expect(b.weights).toEqual(a.weights);
    expect(b.tokenizer.data).toEqual(a.tokenizer.data);
  });

  test("reads tokenizer metadata with llama.cpp defaults", () => {
    const loaded = loadLlamaGgufBytes(bytesV3);
    const tokenizer = loaded.tokenizer.data;
    expect(loaded.chatTemplate).toBeUndefined();
    expect(tokenizer.model).toBe("llama");
    expect(tokenizer.tokens.length).toBe(512);
    expect(tokenizer.bosId).toBe(1);
    expect(tokenizer.eosId).toBe(2);
    expect(tokenizer.unknownId).toBe(0);
    expect(tokenizer.paddingId).toBe(0);
    expect(tokenizer.addBos).toBe(true);
    expect(tokenizer.addEos).toBe(false);
    expect(tokenizer.addSpacePrefix).toBe(true);
    expect(tokenizer.chatTemplate).toBeUndefined();
    expect(Array.from(tokenizer.tokenTypes.slice(0, 4))).toEqual([2, 3, 3, 6]);
  });

  test("exposes a chat template and add_bos_token", () => {
    const file = parseGguf(bytesV1);
    const bytes = rewrite(file, {
      metadata: (m) => {
        m.set("tokenizer.chat_template", { type: GGUF_VALUE_TYPE.STRING, value: "{{ messages }}" });
        m.set("tokenizer.ggml.add_bos_token", { type: GGUF_VALUE_TYPE.BOOL, value: false });
      },
    });
    const { tokenizer, chatTemplate } = loadLlamaGgufBytes(bytes);
    expect(chatTemplate).toBe("{{ messages }}");
    expect(tokenizer.data.chatTemplate).toBe("{{ messages }}");
    expect(tokenizer.data.addBos).toBe(false);
    expect(tokenizer.encode("a")).toEqual([261]);
  });

  test("ties the output to the embedding without output.weight", () => {
    const file = parseGguf(bytesV1);
    const bytes = rewrite(file, { version: 2, tensors: (t) => t.splice(t.findIndex((x) => x.name === "output.weight"), 1) });
    const { weights } = loadLlamaGgufBytes(bytes);
    expect(weights.output).toBe(weights.tokenEmbedding);
  });

  test("rejects another architecture by name", () => {
    const bytes = rewrite(parseGguf(bytesV1), {
      metadata: (m) => m.set("general.architecture", { type: GGUF_VALUE_TYPE.STRING, value: "gpt2" }),
    });
    expect(() => loadLlamaGgufBytes(bytes)).toThrow(
      'Failed to load GGUF: general.architecture is "gpt2", sinkstream supports "llama" only',
    );
  });

  test("rejects a non-SentencePiece vocabulary", () => {
    const bytes = rewrite(parseGguf(bytesV1), {
      metadata: (m) => m.set("tokenizer.ggml.model", { type: GGUF_VALUE_TYPE.STRING, value: "gpt2" }),
    });
    expect(() => loadLlamaGgufBytes(bytes)).toThrow(
      'Failed to create the tokenizer: tokenizer.ggml.model is "gpt2", only "llama" (SentencePiece) is supported',
    );
  });

  test("rejects a missing key by name", () => {
    const bytes = rewrite(parseGguf(bytesV1), { metadata: (m) => m.delete("llama.block_count") });
    expect(() => loadLlamaGgufBytes(bytes)).toThrow("Failed to load GGUF: missing required metadata key llama.block_count");
  });

  test("rejects a missing tensor by name", () => {
    const bytes = rewrite(parseGguf(bytesV1), {
      tensors: (t) => t.splice(t.findIndex((x) => x.name === "blk.3.ffn_up.weight"), 1),
    });
    expect(() => loadLlamaGgufBytes(bytes)).toThrow("Failed to load GGUF: missing required tensor blk.3.ffn_up.weight");
  });

  test("rejects an unsupported quantized type by name", () => {
    const bytes = rewrite(parseGguf(bytesV1), {
      tensors: (t) => { t.find((x) => x.name === "blk.0.attn_q.weight")!.type = 13; },
    });
    expect(() => loadLlamaGgufBytes(bytes)).toThrow(
      "Unsupported tensor type Q5_K in blk.0.attn_q.weight: sinkstream loads F32, F16, Q8_0, Q4_0, Q4_K and Q6_K tensors",
    );
  });

  test("applies linear RoPE scaling and rejects other kinds", () => {
    const file = parseGguf(bytesV1);
    const scaled = (type: string) =>
      rewrite(file, {
        metadata: (m) => {
          m.set("llama.rope.freq_base", { type: GGUF_VALUE_TYPE.FLOAT32, value: 500000 });
          m.set("llama.rope.scaling.type", { type: GGUF_VALUE_TYPE.STRING, value: type });
          m.set("llama.rope.scaling.factor", { type: GGUF_VALUE_TYPE.FLOAT32, value: 4 });
        },
      });
    const { rope } = loadLlamaGgufBytes(scaled("linear")).weights.config;
    expect(rope.base).toBe(500000);
    const expected = ropeInvFreq(8, 500000).map((f) => f / 4);
    expect(Array.from(rope.invFreq)).toEqual(Array.from(expected));
    expect(() => loadLlamaGgufBytes(scaled("yarn"))).toThrow(
      'Unsupported RoPE scaling "yarn" in llama.rope.scaling.type: sinkstream supports "none" and "linear"',
    );
  });
});
