import { beforeAll, describe, expect, test } from "bun:test";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { applyRope, argmax, ReferenceModel } from "../core/reference.ts";
import { type LlamaWeights, type RopeConfig, ropeInvFreq } from "../core/types.ts";
// Written by scripts/gen_llamacpp_fixture.mjs from node-llama-cpp 3.21.1 (llama.cpp v0.4.0 tag).
import fixture from "./fixtures/llamacpp_stories260K.json";
import { maxAbsDifference } from "./support/numeric.ts";

const MODEL_V1 = new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname;
const MODEL_V3 = new URL("../../shared/models/stories260K-v3.gguf", import.meta.url).pathname;
const MODEL_TIMEOUT_MS = 30_000;
/** Max absolute logit difference accepted between two f64 computations of the same math. */
const F64_TOLERANCE = 1e-9;

let weightsV1: LlamaWeights;
let weightsV3: LlamaWeights;
let model: ReferenceModel;
/** The first block of stories260K alone: its keys and values depend only on each token. */
let oneBlockModel: ReferenceModel;

beforeAll(async () => {
  weightsV1 = (await loadLlamaGguf(MODEL_V1)).weights;
  weightsV3 = (await loadLlamaGguf(MODEL_V3)).weights;
  model = new ReferenceModel(weightsV3);
  oneBlockModel = new ReferenceModel({
    ...weightsV3,
    config: { ...weightsV3.config, nLayers: 1 },
    layers: weightsV3.layers.slice(0, 1),
  });
});

const PROMPT_IDS: number[] = fixture.greedy.promptIds;

describe("applyRope", () => {
  const rope = (layout: RopeConfig["layout"], dim = 4): RopeConfig => ({
    dim,
    base: 10000,
    layout,
    invFreq: ropeInvFreq(dim, 10000),
  });

  test("position 0 is the identity", () => {
    const x = Float64Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(applyRope(x, 4, rope("adjacent"), 0)).toEqual(x);
  });

  test("adjacent rotates pairs (2i, 2i+1)", () => {
    const x = Float64Array.from([1, 0, 1, 0]);
    const y = applyRope(x, 4, rope("adjacent"), 2);
    // Pair 0 turns by 2 rad, pair 1 by 2 * 10000^(-1/2) rad.
    expect(y[0]).toBeCloseTo(Math.cos(2), 12);
    expect(y[1]).toBeCloseTo(Math.sin(2), 12);
    expect(y[2]).toBeCloseTo(Math.cos(0.02), 12);
    expect(y[3]).toBeCloseTo(Math.sin(0.02), 12);
  });

  test("halves rotates pairs (i, i + dim/2)", () => {
    const x = Float64Array.from([1, 1, 0, 0]);
    const y = applyRope(x, 4, rope("halves"), 2);
    expect(y[0]).toBeCloseTo(Math.cos(2), 12);
    expect(y[2]).toBeCloseTo(Math.sin(2), 12);
    expect(y[1]).toBeCloseTo(Math.cos(0.02), 12);
    expect(y[3]).toBeCloseTo(Math.sin(0.02), 12);
  });

  test("leaves dims past rope.dim unchanged in every head", () => {
    const x = Float64Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
    const y = applyRope(x, 4, rope("adjacent", 2), 7);
    expect([y[2], y[3], y[6], y[7]]).toEqual([3, 4, 7, 8]);
    expect(Math.hypot(y[0], y[1])).toBeCloseTo(Math.hypot(1, 2), 12);
    expect(Math.hypot(y[4], y[5])).toBeCloseTo(Math.hypot(5, 6), 12);
  });
});

describe("ReferenceModel", () => {
  test("version 1 and version 3 files give identical logits", () => {
    expect(weightsV3).toEqual(weightsV1);
    const a = new ReferenceModel(weightsV1).forward(PROMPT_IDS);
    const b = model.forward(PROMPT_IDS);
    for (let i = 0; i < a.length; i++) expect(b[i]).toEqual(a[i]);
  });

  test("logits depend on earlier tokens", () => {
    const a = model.forward([1, 403, 407]);
    const b = model.forward([1, 291, 407]);
    expect(maxAbsDifference(a[0], b[0])).toBe(0);
    expect(maxAbsDifference(a[2], b[2])).toBeGreaterThan(1e-3);
  });

  test(
    "greedy continuation matches llama.cpp",
    () => {
      const stream = model.createStream({ sinks: 4, window: 1024 });
      let logits = new Float64Array();
      for (const id of PROMPT_IDS) logits = stream.step(id);
      const continuation: number[] = [];
      while (continuation.length < fixture.greedy.continuation.length) {
        const next = argmax(logits);
        continuation.push(next);
        logits = stream.step(next);
      }
      expect(continuation).toEqual(fixture.greedy.continuation);
    },
    MODEL_TIMEOUT_MS,
  );
});

describe("ReferenceSinkStream", () => {
  test(
    "equals forward while the window holds the sequence",
    () => {
      const tokens = [...PROMPT_IDS, ...fixture.greedy.continuation.slice(0, 15)];
      const full = model.forward(tokens);
      const stream = model.createStream({ sinks: 4, window: tokens.length - 4 });
      tokens.forEach((token, i) => {
        expect(maxAbsDifference(stream.step(token), full[i])).toBeLessThan(F64_TOLERANCE);
      });
      expect(stream.cachedTokens).toEqual(tokens);
    },
    MODEL_TIMEOUT_MS,
  );

  test("evicts the oldest non-sink token when full", () => {
    const stream = model.createStream({ sinks: 2, window: 3 });
    const tokens = [1, 10, 20, 30, 40, 50, 60, 70];
    for (const token of tokens.slice(0, 5)) stream.step(token);
    expect(stream.cachedTokens).toEqual([1, 10, 20, 30, 40]);
    stream.step(50);
    expect(stream.cachedTokens).toEqual([1, 10, 30, 40, 50]);
    stream.step(60);
    stream.step(70);
    expect(stream.cachedTokens).toEqual([1, 10, 50, 60, 70]);
  });

  test("gives cached tokens positions by slot", () => {
    // With one block, each cached key and value depends only on its token, so after
    // evictions the stream must equal a fresh forward over the cached tokens at 0..n-1.
    const stream = oneBlockModel.createStream({ sinks: 2, window: 3 });
    const tokens = [1, 403, 407, 261, 378, 432, 383, 286, 261];
    let logits = new Float64Array();
    for (const token of tokens) logits = stream.step(token);
    expect(stream.cachedTokens).toEqual([1, 403, 383, 286, 261]);
    const expected = oneBlockModel.forward([...stream.cachedTokens]);
    expect(maxAbsDifference(logits, expected[expected.length - 1])).toBeLessThan(F64_TOLERANCE);
  });

  test("window 1 without sinks sees only the new token", () => {
    const stream = model.createStream({ sinks: 0, window: 1 });
    for (const token of [1, 403, 407]) {
      const logits = stream.step(token);
      expect(maxAbsDifference(logits, model.forward([token])[0])).toBeLessThan(F64_TOLERANCE);
    }
    expect(stream.cachedTokens).toEqual([407]);
  });

  test("sinks keep influencing later steps", () => {
    const a = model.createStream({ sinks: 1, window: 2 });
    const b = model.createStream({ sinks: 1, window: 2 });
    const c = model.createStream({ sinks: 0, window: 3 });
    let la = new Float64Array();
    let lb = new Float64Array();
    let lc = new Float64Array();
    for (const token of [1, 403, 407, 261, 378]) la = a.step(token);
    for (const token of [2, 403, 407, 261, 378]) lb = b.step(token);
    for (const token of [1, 403, 407, 261, 378]) lc = c.step(token);
    expect(a.cachedTokens).toEqual([1, 261, 378]);
    expect(c.cachedTokens).toEqual([407, 261, 378]);
    expect(maxAbsDifference(la, lb)).toBeGreaterThan(1e-3);
    expect(maxAbsDifference(la, lc)).toBeGreaterThan(1e-3);
  });

  test("reset empties the cache", () => {
    const stream = model.createStream({ sinks: 1, window: 4 });
    const first = stream.step(1);
    stream.step(403);
    stream.reset();
    expect(stream.cachedTokens).toEqual([]);
    expect(stream.step(1)).toEqual(first);
  });

  test("rejects invalid sizes", () => {
    expect(() => model.createStream({ sinks: -1, window: 4 })).toThrow(
      "Failed to create the stream: sinks must be an integer of at least 0, current value is -1",
    );
    expect(() => model.createStream({ sinks: 4, window: 0 })).toThrow(
      "Failed to create the stream: window must be an integer of at least 1, current value is 0",
    );
    expect(() => model.createStream({ sinks: 1.5, window: 4 })).toThrow(/current value is 1.5/);
  });

  test("rejects token ids outside the vocabulary", () => {
    const stream = model.createStream({ sinks: 1, window: 4 });
    expect(() => stream.step(512)).toThrow("Failed to embed token: current id is 512, valid ids are 0 to 511");
  });
});
