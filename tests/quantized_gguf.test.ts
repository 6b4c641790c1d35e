import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GGML_TYPE_NAMES, parseGguf } from "../core/gguf.ts";
import { type GgufTensorType, quantizeQ4_0, quantizeQ8_0, writeGguf, writeLlamaGgufFile } from "../core/gguf_writer.ts";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { createSession, type LoadedModel, loadModel } from "../core/model.ts";
import { dequantize } from "../core/quant.ts";
import { STORIES_V1 } from "./support/stories.ts";
import fixture from "./fixtures/llamacpp_stories260K_quant.json";
import { relativeError } from "./support/numeric.ts";

const SETUP_TIMEOUT_MS = 20_000;
const MODEL_TEST_TIMEOUT_MS = 10_000;
const TENSOR_TYPES: ("Q8_0" | "Q4_0")[] = ["Q8_0", "Q4_0"];
const GGML_Q8_0 = 8;
const GGML_Q4_0 = 2;

/**
 * Max relative error of Q8_0 logits against the F32 model at each position: max |difference|
 * over max |F32 logit|. Measured with this test: 0.014 at worst over the 36 positions of prompt
 * and continuation, so the bound leaves about twice that.
 */
const Q8_0_LOGIT_TOLERANCE = 0.03;

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function llamacppCase(type: string) {
  const entry = fixture.files.find((file) => file.tensorType === type);
  if (entry === undefined) throw new Error(`Missing ${type} entry in llamacpp_stories260K_quant.json`);
  return entry;
}

/** Return the logits at every position of `ids`, ingested into a cache large enough for all of them. */
async function logitsOf(model: LoadedModel, ids: number[]): Promise<Float32Array[]> {
  const { session } = await createSession(model, { sinks: 4, window: 508, chunkSize: 64 });
  const rows: Float32Array[] = [];
  await session.ingest(ids, (_, logits) => rows.push(logits.slice()));
  return rows;
}

/** Deterministic pseudo-random values from a linear congruential generator. */
function randomValues(count: number, seed: number): Float32Array {
  const values = new Float32Array(count);
  let state = seed;
  for (let i = 0; i < count; i++) {
    state = (state * 1103515245 + 12345) >>> 0;
    values[i] = (state / 2 ** 32 - 0.5) * 10 ** ((i % 7) - 3);
  }
  return values;
}

describe("Q8_0 and Q4_0 quantizers", () => {
  test("Q8_0 round trip is within half a step", () => {
    const values = randomValues(32 * 64, 7);
    const restored = dequantize(GGML_Q8_0, quantizeQ8_0(values), values.length);
    for (let block = 0; block < 64; block++) {
      const slice = values.subarray(block * 32, block * 32 + 32);
      const step = Math.max(...slice.map(Math.abs)) / 127;
      for (let j = 0; j < 32; j++) {
        // Half a step, plus the f16 rounding of the scale (2^-11 relative, times at most 127 steps).
        expect(Math.abs(restored[block * 32 + j] - slice[j])).toBeLessThanOrEqual(step * (0.5 + 127 * 2 ** -11) + 1e-30);
      }
    }
  });

  test("Q4_0 maps the largest magnitude exactly", () => {
    const values = randomValues(32 * 64, 11);
    const restored = dequantize(GGML_Q4_0, quantizeQ4_0(values), values.length);
    for (let block = 0; block < 64; block++) {
      const slice = values.subarray(block * 32, block * 32 + 32);
      let largest = 0;
      for (let j = 1; j < 32; j++) if (Math.abs(slice[j]) > Math.abs(slice[largest])) largest = j;
      // The scale is max / -8, so the largest value is -8 steps, exact up to the f16 scale.
      expect(Math.abs(restored[block * 32 + largest] - slice[largest])).toBeLessThanOrEqual(Math.abs(slice[largest]) * 2 ** -11);
      const step = Math.abs(slice[largest]) / 8;
      for (let j = 0; j < 32; j++) {
        // Values beyond +7 steps clip to 7, so the error is at most one step plus the scale rounding.
        expect(Math.abs(restored[block * 32 + j] - slice[j])).toBeLessThanOrEqual(step * (1 + 2 ** -8));
      }
    }
  });

  test("zero block has zero scale", () => {
    const zeros = new Float32Array(32);
    expect(Array.from(quantizeQ8_0(zeros))).toEqual(new Array(34).fill(0));
    // The Q4_0 scale is 0 / -8, which is -0 (f16 bits 0x8000, as ggml writes it), and every
    // value is stored as 0 + 8, so each nibble is 8.
    expect(Array.from(quantizeQ4_0(zeros))).toEqual([0x00, 0x80, ...new Array(16).fill(0x88)]);
  });

  test("value count not a multiple of 32 is rejected", () => {
    expect(() => quantizeQ8_0(new Float32Array(40))).toThrow(
      "Failed to quantize to Q8_0: current value count is 40, expected a multiple of 32",
    );
    expect(() => quantizeQ4_0(new Float32Array(31))).toThrow(
      "Failed to quantize to Q4_0: current value count is 31, expected a multiple of 32",
    );
  });

  test("output too small is rejected", () => {
    expect(() => quantizeQ8_0(new Float32Array(64), new Uint8Array(67))).toThrow(
      "Failed to quantize to Q8_0: the output has 67 bytes, current input needs 68",
    );
  });
});

describe("writeGguf with quantized tensors", () => {
  const dims = [6, 64];
  const values = randomValues(6 * 64, 3);

  for (const type of TENSOR_TYPES) {
    test(`${type} chunks of any size give the same bytes`, () => {
      const whole = writeGguf({ metadata: [], tensors: [{ name: "w", dims, type, data: values }] });
      // Chunk lengths 5, 45, 85, ... split blocks at every possible offset.
      const chunked = writeGguf({
        metadata: [],
        tensors: [{
          name: "w",
          dims,
          type,
          data: function* () {
            for (let at = 0, size = 5; at < values.length; at += size, size += 40) {
              yield values.slice(at, Math.min(values.length, at + size));
            }
          },
        }],
      });
      expect(sha256(chunked)).toBe(sha256(whole));

      const file = parseGguf(whole);
      const info = file.tensors.get("w")!;
      expect(GGML_TYPE_NAMES[info.type]).toBe(type);
      const quantize = type === "Q8_0" ? quantizeQ8_0 : quantizeQ4_0;
      const start = file.dataOffset + Number(info.offset);
      const expected = quantize(values);
      expect(sha256(whole.subarray(start, start + expected.length))).toBe(sha256(expected));
    });
  }

  test("row length not a multiple of 32 is rejected", () => {
    const spec = { metadata: [], tensors: [{ name: "w", dims: [2, 40], type: "Q8_0" as GgufTensorType, data: new Float32Array(80) }] };
    expect(() => writeGguf(spec)).toThrow(
      "Failed to write tensor w as Q8_0: current row length (last dim) is 40, expected a multiple of 32; store it as F32 or F16",
    );
  });
});

describe("stories260K written as Q8_0 and Q4_0", () => {
  let dir: string;
  const paths = new Map<string, string>();
  const models = new Map<string, LoadedModel>();

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sinkstream-quant-"));
    const { weights, tokenizer } = await loadLlamaGguf(STORIES_V1);
    // The same call and options as scripts/gen_llamacpp_quant_fixture.mjs, so the bytes match.
    for (const type of TENSOR_TYPES) {
      const path = join(dir, `stories260K-${type}.gguf`);
      await writeLlamaGgufFile(path, weights, tokenizer.data, { tensorType: type });
      paths.set(type, path);
      models.set(type, await loadModel(path, { offline: true }));
    }
    models.set("F32", await loadModel(STORIES_V1, { offline: true }));
  }, SETUP_TIMEOUT_MS);

  afterAll(async () => {
    for (const model of models.values()) await model.runtime.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  for (const type of TENSOR_TYPES) {
    test(`${type} file is the one llama.cpp read`, async () => {
      const bytes = new Uint8Array(await readFile(paths.get(type)!));
      expect(bytes.length).toBe(llamacppCase(type).bytes);
      expect(sha256(bytes)).toBe(llamacppCase(type).sha256);
    });

    test(`${type} file quantizes matrices only`, async () => {
      const file = parseGguf(new Uint8Array(await readFile(paths.get(type)!)));
      const typeOf = (name: string) => GGML_TYPE_NAMES[file.tensors.get(name)!.type];
      expect(typeOf("token_embd.weight")).toBe(type);
      expect(typeOf("output.weight")).toBe(type);
      expect(typeOf("blk.0.attn_q.weight")).toBe(type);
      expect(typeOf("blk.4.ffn_up.weight")).toBe(type);
      // ffn_down rows are 172 long, not a multiple of 32, so they fall back to F16.
      expect(typeOf("blk.0.ffn_down.weight")).toBe("F16");
      expect(typeOf("blk.0.attn_norm.weight")).toBe("F32");
      expect(typeOf("output_norm.weight")).toBe("F32");
      expect(file.metadata.get("general.file_type")?.value).toBe(type === "Q8_0" ? 7 : 2);
    });

    test(`${type} greedy continuation equals llama.cpp's`, async () => {
      const expected = llamacppCase(type);
      const model = models.get(type)!;
      const promptIds = model.tokenizer.encode(fixture.prompt, { addBos: true, addSpacePrefix: true });
      expect(promptIds).toEqual(expected.promptIds);
      const { session } = await createSession(model, { sinks: 4, window: 508 });
      const ids = await session.generate(promptIds, { maxTokens: expected.continuation.length });
      expect(ids).toEqual(expected.continuation);
      expect(model.tokenizer.decode(ids)).toBe(expected.continuationText);
    }, MODEL_TEST_TIMEOUT_MS);
  }

  test("Q8_0 logits are close to F32", async () => {
    const expected = llamacppCase("Q8_0");
    const ids = [...expected.promptIds, ...expected.continuation.slice(0, -1)];
    const quantized = await logitsOf(models.get("Q8_0")!, ids);
    const reference = await logitsOf(models.get("F32")!, ids);
    let worst = 0;
    for (let t = 0; t < ids.length; t++) {
      const error = relativeError(quantized[t], reference[t]);
      worst = Math.max(worst, error);
      expect(error).toBeLessThan(Q8_0_LOGIT_TOLERANCE);
    }
    // Quantization must change the logits at all, or the file was not read as Q8_0.
    expect(worst).toBeGreaterThan(0);
  }, MODEL_TEST_TIMEOUT_MS);
});
