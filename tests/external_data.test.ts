/**
 * Checks the decoder graph whose initializers are ONNX external data against the same graph
 * with every initializer inline, on the stories260K model.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { buildLlamaOnnx, buildLlamaOnnxWithExternalData } from "../core/onnx/llama_graph.ts";
import { type Backend, DecoderRuntime } from "../core/runtime.ts";
import type { LlamaWeights } from "../core/types.ts";
import { STORIES_V1 } from "./support/stories.ts";
import { emptyPast, nativeInstalled } from "./support/runtime.ts";

const TEST_TIMEOUT_MS = 60_000;
const MAX_POSITIONS = 64;
const INPUT_IDS = [1, 403, 407, 261, 378, 429];
const POSITION_IDS = INPUT_IDS.map((_, i) => i);

/** Bytes of the weight tensors of at least `minBytes`, the ones that go to external data. */
function weightBytes(weights: LlamaWeights, minBytes: number): number {
  const tensors = [weights.tokenEmbedding, weights.outputNorm, weights.output];
  for (const layer of weights.layers) tensors.push(...Object.values(layer).filter((tensor) => tensor !== undefined));
  return tensors.map((tensor) => tensor.data.byteLength).filter((bytes) => bytes >= minBytes).reduce((a, b) => a + b, 0);
}

let weights: LlamaWeights;

beforeAll(async () => {
  weights = (await loadLlamaGguf(STORIES_V1)).weights;
}, TEST_TIMEOUT_MS);

describe("buildLlamaOnnxWithExternalData", () => {
  test("moves the weights out of the protobuf", () => {
    const inline = buildLlamaOnnx(weights, { maxPositions: MAX_POSITIONS });
    const { model, externalData } = buildLlamaOnnxWithExternalData(weights, { maxPositions: MAX_POSITIONS });
    const externalBytes = externalData.reduce((sum, file) => sum + file.data.length, 0);

    // Tensors of 1 KiB or more go to external data; the RoPE tables go there too.
    expect(externalBytes).toBeGreaterThanOrEqual(weightBytes(weights, 1024));
    expect(model.length).toBeLessThan(inline.length - externalBytes + 64 * 1024);
    expect(model.length).toBeLessThan(inline.length / 4);
    expect(new Set(externalData.map((file) => file.path)).size).toBe(externalData.length);
  });

  test("keeps the inline graph byte for byte", () => {
    const first = buildLlamaOnnx(weights, { maxPositions: MAX_POSITIONS });
    buildLlamaOnnxWithExternalData(weights, { maxPositions: MAX_POSITIONS });
    const second = buildLlamaOnnx(weights, { maxPositions: MAX_POSITIONS });
    expect(Buffer.from(second).equals(Buffer.from(first))).toBe(true);
  });
});

const backends: Backend[] = nativeInstalled() ? ["wasm", "native"] : ["wasm"];

for (const backend of backends) {
  describe(`external data on ${backend}`, () => {
    let inline: DecoderRuntime;
    let external: DecoderRuntime;

    beforeAll(async () => {
      const config = weights.config;
      inline = await DecoderRuntime.fromOnnx(buildLlamaOnnx(weights, { maxPositions: MAX_POSITIONS }), config, {
        maxPositions: MAX_POSITIONS,
        backend,
      });
      const { model, externalData } = buildLlamaOnnxWithExternalData(weights, { maxPositions: MAX_POSITIONS });
      external = await DecoderRuntime.fromOnnx(model, config, { maxPositions: MAX_POSITIONS, backend, externalData });
    }, TEST_TIMEOUT_MS);

    afterAll(async () => {
      await inline?.dispose();
      await external?.dispose();
    });

    test("logits and present equal inline graph", async () => {
      const layers = weights.config.nLayers;
      const input = { inputIds: INPUT_IDS, positionIds: POSITION_IDS, past: emptyPast(layers), pastLength: 0 };
      const expected = await inline.run(input);
      const actual = await external.run(input);

      expect(actual.logits.length).toBe(INPUT_IDS.length * weights.config.vocabSize);
      expect(Array.from(actual.logits)).toEqual(Array.from(expected.logits));
      for (let layer = 0; layer < layers; layer++) {
        expect(Array.from(actual.present[layer].key)).toEqual(Array.from(expected.present[layer].key));
        expect(Array.from(actual.present[layer].value)).toEqual(Array.from(expected.present[layer].value));
      }
    }, TEST_TIMEOUT_MS);

    test("model without its files fails to load", async () => {
      const { model } = buildLlamaOnnxWithExternalData(weights, { maxPositions: MAX_POSITIONS });
      const load = DecoderRuntime.fromOnnx(model, weights.config, { maxPositions: MAX_POSITIONS, backend });
      await expect(load).rejects.toThrow("ONNX Runtime failed to load the decoder model");
    }, TEST_TIMEOUT_MS);
  });
}
