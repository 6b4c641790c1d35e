/** Checks DecoderRuntime's input validation, error reports and lifecycle. */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { buildLlamaOnnx } from "../core/onnx/llama_graph.ts";
import { DecoderRuntime } from "../core/runtime.ts";
import { type LlamaConfig, type LlamaWeights, ropeInvFreq, type Tensor } from "../core/types.ts";
import { emptyPast } from "./support/runtime.ts";

const TEST_TIMEOUT_MS = 30_000;

/** Tiny model with deterministic weights (values only need to be finite here). */
function makeWeights(): LlamaWeights {
  const config: LlamaConfig = {
    architecture: "llama",
    nLayers: 2,
    nEmbd: 16,
    nHeads: 4,
    nKvHeads: 2,
    headDim: 4,
    nFf: 24,
    vocabSize: 40,
    contextLength: 32,
    rmsNormEps: 1e-5,
    rope: { dim: 4, base: 10000, layout: "adjacent", invFreq: ropeInvFreq(4, 10000) },
  };
  let counter = 0;
  const tensor = (dims: number[]): Tensor => {
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(++counter) * 0.5;
    return { dims, data };
  };
  const { nEmbd, nHeads, nKvHeads, headDim, nFf, vocabSize } = config;
  const layers = Array.from({ length: config.nLayers }, () => ({
    attnNorm: tensor([nEmbd]),
    wq: tensor([nHeads * headDim, nEmbd]),
    wk: tensor([nKvHeads * headDim, nEmbd]),
    wv: tensor([nKvHeads * headDim, nEmbd]),
    wo: tensor([nEmbd, nHeads * headDim]),
    ffnNorm: tensor([nEmbd]),
    wGate: tensor([nFf, nEmbd]),
    wUp: tensor([nFf, nEmbd]),
    wDown: tensor([nEmbd, nFf]),
  }));
  const tokenEmbedding = tensor([vocabSize, nEmbd]);
  return { config, tokenEmbedding, layers, outputNorm: tensor([nEmbd]), output: tokenEmbedding };
}

const weights = makeWeights();
let runtime: DecoderRuntime;

beforeAll(async () => {
  runtime = await DecoderRuntime.create(weights, { maxPositions: 16 });
});

afterAll(async () => {
  await runtime.dispose();
});

describe("DecoderRuntime", () => {
  test("run returns logits and present shapes", async () => {
    const out = await runtime.run({ inputIds: [3, 4, 5], positionIds: [0, 1, 2], past: emptyPast(2), pastLength: 0 });
    expect(out.logits.length).toBe(3 * 40);
    expect(out.present.length).toBe(2);
    expect(out.present[1].key.length).toBe(2 * 3 * 4);
    expect(out.present[1].value.length).toBe(2 * 3 * 4);
    expect(out.logits.every(Number.isFinite)).toBe(true);
  }, TEST_TIMEOUT_MS);

  test("position id beyond table is rejected", async () => {
    const run = runtime.run({ inputIds: [3], positionIds: [16], past: emptyPast(2), pastLength: 0 });
    await expect(run).rejects.toThrow(
      "Cannot run the decoder: 1 invalid input(s):\n" +
        "- Invalid position id 16: the RoPE table holds positions 0..15; rebuild the runtime with a larger maxPositions",
    );
  });

  test("all problems listed in one error", async () => {
    const past = emptyPast(2);
    past[0] = { key: new Float32Array(7), value: new Float32Array(8) };
    // @ts-expect-error: a layer without a value array, as an untyped caller could pass.
    past[1] = { key: new Float32Array(8) };
    const run = runtime.run({ inputIds: [3, 40, -1], positionIds: [0, 1], past, pastLength: 1, attentionMask: [1, 1, 2] });
    await expect(run).rejects.toThrow(
      "Cannot run the decoder: 7 invalid input(s):\n" +
        "- Invalid token id 40 at index 1: the vocabulary holds ids 0..39\n" +
        "- Invalid token id -1 at index 2: the vocabulary holds ids 0..39\n" +
        "- Invalid positionIds: current length is 2; expected one per input id (3)\n" +
        "- Invalid past key for layer 0: current length is 7; expected 8 = [2, 1, 4]\n" +
        "- Missing past value for layer 1: expected a Float32Array of 8 values [2, 1, 4] (empty when pastLength is 0)\n" +
        "- Invalid attentionMask: current length is 3; expected pastLength + input length (4)\n" +
        "- Invalid attention mask value 2 at index 2: expected 0 or 1",
    );
  });

  test("missing layers and empty input are rejected", async () => {
    const run = runtime.run({ inputIds: [], positionIds: [], past: emptyPast(1), pastLength: 0 });
    await expect(run).rejects.toThrow(
      "Cannot run the decoder: 4 invalid input(s):\n" +
        "- Invalid inputIds: current length is 0; pass at least one token\n" +
        "- Invalid past: current length is 1; expected one entry per layer (2)\n" +
        "- Missing past key for layer 1: expected a Float32Array of 0 values [2, 0, 4] (empty when pastLength is 0)\n" +
        "- Missing past value for layer 1: expected a Float32Array of 0 values [2, 0, 4] (empty when pastLength is 0)",
    );
  });

  test("long problem lists are truncated", async () => {
    const ids = Array.from({ length: 15 }, () => 99);
    const run = runtime.run({ inputIds: ids, positionIds: ids.map((_, i) => i), past: emptyPast(2), pastLength: 0 });
    await expect(run).rejects.toThrow(/15 invalid input\(s\):[\s\S]*- and 5 more problems$/);
  });

  test("ONNX Runtime errors name the inputs", async () => {
    // A graph built for headDim 4, described as headDim 8, so the past passes validation but
    // cannot be concatenated with the new keys inside the graph.
    const bytes = buildLlamaOnnx(weights, { maxPositions: 16 });
    const wrong = await DecoderRuntime.fromOnnx(bytes, { ...weights.config, headDim: 8 }, { maxPositions: 16 });
    try {
      const past = Array.from({ length: 2 }, () => ({ key: new Float32Array(16), value: new Float32Array(16) }));
      const error = await wrong
        .run({ inputIds: [3], positionIds: [1], past, pastLength: 1 })
        .then(() => undefined, (e: unknown) => e as Error);
      expect(error).toBeInstanceOf(Error);
      expect(error!.message).toStartWith("ONNX Runtime failed to run the decoder: ");
      expect(error!.message).toContain(
        "inputs: input_ids int64 [1, 1], attention_mask int64 [1, 2], position_ids int64 [1, 1], " +
          "past_key_values.0.key float32 [1, 2, 1, 8]",
      );
      expect(error!.cause).toBeDefined();
    } finally {
      await wrong.dispose();
    }
  }, TEST_TIMEOUT_MS);

  test("fromOnnx rejects a graph with other inputs", async () => {
    const bytes = buildLlamaOnnx(weights, { maxPositions: 16 });
    const run = DecoderRuntime.fromOnnx(bytes, { ...weights.config, nLayers: 3 });
    await expect(run).rejects.toThrow(
      "Cannot use the ONNX model as a decoder: missing inputs past_key_values.2.key, past_key_values.2.value; " +
        "expected the Hugging Face decoder signature for 3 layers",
    );
  }, TEST_TIMEOUT_MS);

  test("fromOnnx rejects invalid bytes", async () => {
    const run = DecoderRuntime.fromOnnx(new Uint8Array([1, 2, 3]), weights.config);
    await expect(run).rejects.toThrow("ONNX Runtime failed to load the decoder model (3 bytes): ");
  }, TEST_TIMEOUT_MS);

  test("numThreads must match the started backend", async () => {
    const run = DecoderRuntime.create(weights, { numThreads: 2 });
    await expect(run).rejects.toThrow(
      "Invalid numThreads: current value is 2, but ONNX Runtime already started with 1 in this process; " +
        "use the same numThreads for every runtime",
    );
    await expect(DecoderRuntime.create(weights, { numThreads: 0 })).rejects.toThrow(
      "Invalid numThreads: current value is 0; expected a positive integer",
    );
  });

  test("graph build rejects odd rope dim", () => {
    const odd = { ...weights, config: { ...weights.config, rope: { ...weights.config.rope, dim: 3 } } };
    expect(() => buildLlamaOnnx(odd)).toThrow(
      "Cannot build the RoPE table: current rope.dim is 3; expected an even number from 2 to headDim 4",
    );
  });

  test("disposed runtime rejects run", async () => {
    const own = await DecoderRuntime.create(weights, { maxPositions: 16 });
    await own.dispose();
    await own.dispose();
    await expect(own.run({ inputIds: [1], positionIds: [0], past: emptyPast(2), pastLength: 0 })).rejects.toThrow(
      "Cannot run the decoder: the runtime was disposed; create a new one",
    );
  }, TEST_TIMEOUT_MS);
});
