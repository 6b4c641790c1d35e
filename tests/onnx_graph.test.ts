/**
 * Checks the ONNX decoder graph, run through DecoderRuntime, against a plain float64
 * forward pass written here, on tiny random-weight models.
 */

import { describe, expect, test } from "bun:test";
import { buildLlamaOnnx, GRAPH_OPERATORS, type GraphOperators } from "../core/onnx/llama_graph.ts";
import { type DecoderRunOutput, DecoderRuntime } from "../core/runtime.ts";
import { type LlamaConfig, type LlamaLayerWeights, type LlamaWeights, ropeInvFreq, type Tensor } from "../core/types.ts";
import { mulberry32, relativeError } from "./support/numeric.ts";
import { emptyPast, nativeInstalled } from "./support/runtime.ts";
import { quantizeQ4_0 } from "../core/gguf_writer.ts";
import { dequantize } from "../core/quant.ts";

const TEST_TIMEOUT_MS = 30_000;
const GGML_Q4_0 = 2;
const MAX_RELATIVE_ERROR = 1e-4;

// ---------------------------------------------------------------------------------------
// Tiny random model

interface TinyOptions {
  layout?: "adjacent" | "halves";
  nHeads?: number;
  nKvHeads?: number;
  headDim?: number;
  ropeDim?: number;
  biases?: boolean;
  seed?: number;
  nEmbd?: number;
  nFf?: number;
}

function makeTinyWeights(options: TinyOptions = {}): LlamaWeights {
  const random = mulberry32(options.seed ?? 1234);
  const nHeads = options.nHeads ?? 4;
  const headDim = options.headDim ?? 4;
  const ropeDim = options.ropeDim ?? headDim;
  const config: LlamaConfig = {
    architecture: "llama",
    nLayers: 2,
    nEmbd: options.nEmbd ?? 16,
    nHeads,
    nKvHeads: options.nKvHeads ?? 2,
    headDim,
    nFf: options.nFf ?? 24,
    vocabSize: 40,
    contextLength: 64,
    rmsNormEps: 1e-5,
    rope: { dim: ropeDim, base: 10000, layout: options.layout ?? "adjacent", invFreq: ropeInvFreq(ropeDim, 10000) },
  };
  const tensor = (dims: number[], scale: number, offset = 0): Tensor => {
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = offset + (random() * 2 - 1) * scale;
    return { dims, data };
  };
  const { nEmbd, nKvHeads, nFf, vocabSize } = config;
  const layers: LlamaLayerWeights[] = [];
  for (let i = 0; i < config.nLayers; i++) {
    const layer: LlamaLayerWeights = {
      attnNorm: tensor([nEmbd], 0.2, 1),
      wq: tensor([nHeads * headDim, nEmbd], 0.5),
      wk: tensor([nKvHeads * headDim, nEmbd], 0.5),
      wv: tensor([nKvHeads * headDim, nEmbd], 0.5),
      wo: tensor([nEmbd, nHeads * headDim], 0.3),
      ffnNorm: tensor([nEmbd], 0.2, 1),
      wGate: tensor([nFf, nEmbd], 0.3),
      wUp: tensor([nFf, nEmbd], 0.3),
      wDown: tensor([nEmbd, nFf], 0.3),
    };
    if (options.biases) {
      layer.bq = tensor([nHeads * headDim], 0.5);
      layer.bk = tensor([nKvHeads * headDim], 0.5);
      layer.bv = tensor([nKvHeads * headDim], 0.5);
    }
    layers.push(layer);
  }
  const tokenEmbedding = tensor([vocabSize, nEmbd], 1);
  return { config, tokenEmbedding, layers, outputNorm: tensor([nEmbd], 0.2, 1), output: tokenEmbedding };
}

// ---------------------------------------------------------------------------------------
// Float64 reference forward pass

interface ReferenceResult {
  /** Logits per token, `[seq][vocab]`. */
  logits: Float64Array[];
  /** Rotated keys per layer, `[layer][kvHead][t][headDim]` flattened like `present`. */
  keys: Float64Array[];
}

function linear(w: Tensor, x: Float64Array, bias?: Tensor): Float64Array {
  const [rows, cols] = w.dims;
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let sum = bias ? bias.data[r] : 0;
    for (let c = 0; c < cols; c++) sum += w.data[r * cols + c] * x[c];
    y[r] = sum;
  }
  return y;
}

function rmsNorm(x: Float64Array, w: Tensor, eps: number): Float64Array {
  let sum = 0;
  for (const v of x) sum += v * v;
  const inv = 1 / Math.sqrt(sum / x.length + eps);
  return x.map((v, i) => v * inv * w.data[i]);
}

/** Rotate every head of `x` (`heads * headDim` values) in place at position `pos`. */
function rotate(x: Float64Array, heads: number, config: LlamaConfig, pos: number): void {
  const { dim, layout, invFreq } = config.rope;
  for (let h = 0; h < heads; h++) {
    const base = h * config.headDim;
    for (let i = 0; i < dim / 2; i++) {
      const a = base + (layout === "adjacent" ? 2 * i : i);
      const b = base + (layout === "adjacent" ? 2 * i + 1 : i + dim / 2);
      const angle = pos * invFreq[i];
      const [x0, x1] = [x[a], x[b]];
      x[a] = x0 * Math.cos(angle) - x1 * Math.sin(angle);
      x[b] = x1 * Math.cos(angle) + x0 * Math.sin(angle);
    }
  }
}

/** Run the whole sequence; token t attends to j <= t where `mask[j]` is not 0. */
function referenceForward(w: LlamaWeights, tokens: number[], positions: number[], mask?: number[]): ReferenceResult {
  const c = w.config;
  const seq = tokens.length;
  const group = c.nHeads / c.nKvHeads;
  let hidden = tokens.map((id) => Float64Array.from(w.tokenEmbedding.data.subarray(id * c.nEmbd, (id + 1) * c.nEmbd)));
  const keys: Float64Array[] = [];

  for (const layer of w.layers) {
    const q: Float64Array[] = [];
    const k: Float64Array[] = [];
    const v: Float64Array[] = [];
    for (let t = 0; t < seq; t++) {
      const x = rmsNorm(hidden[t], layer.attnNorm, c.rmsNormEps);
      q.push(linear(layer.wq, x, layer.bq));
      k.push(linear(layer.wk, x, layer.bk));
      v.push(linear(layer.wv, x, layer.bv));
      rotate(q[t], c.nHeads, c, positions[t]);
      rotate(k[t], c.nKvHeads, c, positions[t]);
    }
    const layerKeys = new Float64Array(c.nKvHeads * seq * c.headDim);
    for (let h = 0; h < c.nKvHeads; h++) {
      for (let t = 0; t < seq; t++) {
        for (let d = 0; d < c.headDim; d++) layerKeys[(h * seq + t) * c.headDim + d] = k[t][h * c.headDim + d];
      }
    }
    keys.push(layerKeys);

    const next: Float64Array[] = [];
    for (let t = 0; t < seq; t++) {
      const attn = new Float64Array(c.nHeads * c.headDim);
      for (let h = 0; h < c.nHeads; h++) {
        const kv = Math.floor(h / group);
        const scores: number[] = [];
        const visible: number[] = [];
        for (let j = 0; j <= t; j++) {
          if (mask && mask[j] === 0) continue;
          let dot = 0;
          for (let d = 0; d < c.headDim; d++) dot += q[t][h * c.headDim + d] * k[j][kv * c.headDim + d];
          scores.push(dot / Math.sqrt(c.headDim));
          visible.push(j);
        }
        const max = Math.max(...scores);
        const exps = scores.map((s) => Math.exp(s - max));
        const total = exps.reduce((a, b) => a + b, 0);
        visible.forEach((j, n) => {
          for (let d = 0; d < c.headDim; d++) attn[h * c.headDim + d] += (exps[n] / total) * v[j][kv * c.headDim + d];
        });
      }
      const afterAttn = hidden[t].map((value, i) => value + linear(layer.wo, attn)[i]);
      const y = rmsNorm(afterAttn, layer.ffnNorm, c.rmsNormEps);
      const gate = linear(layer.wGate, y);
      const up = linear(layer.wUp, y);
      const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
      const down = linear(layer.wDown, act);
      next.push(afterAttn.map((value, i) => value + down[i]));
    }
    hidden = next;
  }

  const logits = hidden.map((h) => linear(w.output, rmsNorm(h, w.outputNorm, c.rmsNormEps)));
  return { logits, keys };
}

// ---------------------------------------------------------------------------------------
// Helpers

function flatten(rows: Float64Array[]): Float64Array {
  const out = new Float64Array(rows.reduce((n, r) => n + r.length, 0));
  let offset = 0;
  for (const r of rows) {
    out.set(r, offset);
    offset += r.length;
  }
  return out;
}

async function withRuntime<T>(
  w: LlamaWeights,
  operators: GraphOperators,
  body: (runtime: DecoderRuntime) => Promise<T>,
): Promise<T> {
  const runtime = await DecoderRuntime.create(w, { operators });
  try {
    return await body(runtime);
  } finally {
    await runtime.dispose();
  }
}

const TOKENS = [1, 7, 33, 2, 19, 25, 0, 39, 12];
const POSITIONS = TOKENS.map((_, i) => i);

// ---------------------------------------------------------------------------------------
// Tests

for (const operators of GRAPH_OPERATORS) {
  describe(`llama ONNX graph, ${operators} operators`, () => {
    const variants: [string, TinyOptions][] = [
      ["adjacent rope, GQA", { layout: "adjacent" }],
      ["halves rope, GQA", { layout: "halves" }],
      ["adjacent partial rotary", { layout: "adjacent", headDim: 8, ropeDim: 4 }],
      ["halves partial rotary", { layout: "halves", headDim: 8, ropeDim: 4 }],
      ["multi-head without grouping", { nKvHeads: 4 }],
      ["single kv head", { nKvHeads: 1 }],
      ["q/k/v biases", { biases: true }],
    ];

    for (const [name, options] of variants) {
      test(`full sequence matches reference: ${name}`, async () => {
        const w = makeTinyWeights(options);
        const expected = referenceForward(w, TOKENS, POSITIONS);
        const out = await withRuntime(w, operators, (rt) =>
          rt.run({ inputIds: TOKENS, positionIds: POSITIONS, past: emptyPast(w.layers.length), pastLength: 0 })
        );
        expect(out.logits.length).toBe(TOKENS.length * w.config.vocabSize);
        expect(relativeError(out.logits, flatten(expected.logits))).toBeLessThan(MAX_RELATIVE_ERROR);
        for (let i = 0; i < w.config.nLayers; i++) {
          expect(out.present[i].key.length).toBe(w.config.nKvHeads * TOKENS.length * w.config.headDim);
          expect(relativeError(out.present[i].key, expected.keys[i])).toBeLessThan(MAX_RELATIVE_ERROR);
        }
      }, TEST_TIMEOUT_MS);
    }

    test("rope layouts give different logits", async () => {
      const adjacent = makeTinyWeights({ layout: "adjacent" });
      const halves = makeTinyWeights({ layout: "halves", headDim: 4 });
      const run = (w: LlamaWeights) =>
        withRuntime(w, operators, (rt) => rt.run({ inputIds: TOKENS, positionIds: POSITIONS, past: emptyPast(w.layers.length), pastLength: 0 }));
      const [a, b] = [await run(adjacent), await run(halves)];
      expect(relativeError(a.logits, b.logits)).toBeGreaterThan(1e-3);
    }, TEST_TIMEOUT_MS);

    test("prefix then rest equals full run", async () => {
      const w = makeTinyWeights({ layout: "halves", biases: true });
      await withRuntime(w, operators, async (rt) => {
        const full = await rt.run({ inputIds: TOKENS, positionIds: POSITIONS, past: emptyPast(w.layers.length), pastLength: 0 });
        const split = 4;
        const first = await rt.run({
          inputIds: TOKENS.slice(0, split),
          positionIds: POSITIONS.slice(0, split),
          past: emptyPast(w.layers.length),
          pastLength: 0,
        });
        const rest = await rt.run({
          inputIds: TOKENS.slice(split),
          positionIds: POSITIONS.slice(split),
          past: first.present,
          pastLength: split,
        });
        const vocab = w.config.vocabSize;
        expect(relativeError(first.logits, full.logits.subarray(0, split * vocab))).toBeLessThan(MAX_RELATIVE_ERROR);
        expect(relativeError(rest.logits, full.logits.subarray(split * vocab))).toBeLessThan(MAX_RELATIVE_ERROR);
        for (let i = 0; i < w.config.nLayers; i++) {
          expect(relativeError(rest.present[i].key, full.present[i].key)).toBeLessThan(MAX_RELATIVE_ERROR);
          expect(relativeError(rest.present[i].value, full.present[i].value)).toBeLessThan(MAX_RELATIVE_ERROR);
        }
      });
    }, TEST_TIMEOUT_MS);

    test("one-token decode steps equal full run", async () => {
      const w = makeTinyWeights({ layout: "adjacent", headDim: 8, ropeDim: 4 });
      const expected = referenceForward(w, TOKENS, POSITIONS);
      await withRuntime(w, operators, async (rt) => {
        let past = emptyPast(w.layers.length);
        for (let t = 0; t < TOKENS.length; t++) {
          const out: DecoderRunOutput = await rt.run({ inputIds: [TOKENS[t]], positionIds: [t], past, pastLength: t });
          expect(relativeError(out.logits, expected.logits[t])).toBeLessThan(MAX_RELATIVE_ERROR);
          past = out.present;
        }
      });
    }, TEST_TIMEOUT_MS);

    test("past given as offset views", async () => {
      const w = makeTinyWeights();
      await withRuntime(w, operators, async (rt) => {
        const first = await rt.run({ inputIds: TOKENS.slice(0, 3), positionIds: [0, 1, 2], past: emptyPast(w.layers.length), pastLength: 0 });
        // Copy each cache into the middle of a larger buffer, so the view has a byteOffset.
        const views = first.present.map(({ key, value }) => {
          const store = new Float32Array(key.length + value.length + 10).fill(Number.NaN);
          store.set(key, 5);
          store.set(value, 5 + key.length);
          return {
            key: store.subarray(5, 5 + key.length),
            value: store.subarray(5 + key.length, 5 + key.length + value.length),
          };
        });
        const fromViews = await rt.run({ inputIds: [TOKENS[3]], positionIds: [3], past: views, pastLength: 3 });
        const fromCopies = await rt.run({ inputIds: [TOKENS[3]], positionIds: [3], past: first.present, pastLength: 3 });
        expect(Array.from(fromViews.logits)).toEqual(Array.from(fromCopies.logits));
      });
    }, TEST_TIMEOUT_MS);

    test("non-contiguous position ids match reference", async () => {
      const w = makeTinyWeights({ layout: "halves" });
      const positions = [0, 1, 2, 40, 41, 42, 43, 60, 63];
      const expected = referenceForward(w, TOKENS, positions);
      const out = await withRuntime(w, operators, (rt) =>
        rt.run({ inputIds: TOKENS, positionIds: positions, past: emptyPast(w.layers.length), pastLength: 0 })
      );
      expect(relativeError(out.logits, flatten(expected.logits))).toBeLessThan(MAX_RELATIVE_ERROR);
    }, TEST_TIMEOUT_MS);

    test("attention mask zeros mask keys", async () => {
      const w = makeTinyWeights();
      const mask = TOKENS.map((_, j) => (j === 2 || j === 5 ? 0 : 1));
      const masked = referenceForward(w, TOKENS, POSITIONS, mask);
      const unmasked = referenceForward(w, TOKENS, POSITIONS);
      await withRuntime(w, operators, async (rt) => {
        const out = await rt.run({ inputIds: TOKENS, positionIds: POSITIONS, past: emptyPast(w.layers.length), pastLength: 0, attentionMask: mask });
        // Key 0 stays visible, so every query row has at least one key.
        expect(relativeError(out.logits, flatten(masked.logits))).toBeLessThan(MAX_RELATIVE_ERROR);
        expect(relativeError(out.logits, flatten(unmasked.logits))).toBeGreaterThan(1e-3);

        // A decode step over a masked prefix keeps masking those past keys.
        const prefix = await rt.run({
          inputIds: TOKENS.slice(0, 8),
          positionIds: POSITIONS.slice(0, 8),
          past: emptyPast(w.layers.length),
          pastLength: 0,
          attentionMask: mask.slice(0, 8),
        });
        const step = await rt.run({
          inputIds: [TOKENS[8]],
          positionIds: [8],
          past: prefix.present,
          pastLength: 8,
          attentionMask: mask,
        });
        expect(relativeError(step.logits, masked.logits[8])).toBeLessThan(MAX_RELATIVE_ERROR);
      });
    }, TEST_TIMEOUT_MS);
  });
}

describe("buildLlamaOnnx operators option", () => {
  const decoder = new TextDecoder();

  test("default uses contrib operators", () => {
    const text = decoder.decode(buildLlamaOnnx(makeTinyWeights()));
    for (const op of ["SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RotaryEmbedding", "QuickGelu", "com.microsoft"]) {
      expect(text).toContain(op);
    }
  });

  test("standard uses no contrib operators", () => {
    const text = decoder.decode(buildLlamaOnnx(makeTinyWeights(), { operators: "standard" }));
    for (const op of ["SimplifiedLayerNormalization", "RotaryEmbedding", "QuickGelu", "com.microsoft"]) {
      expect(text).not.toContain(op);
    }
  });

  test("unknown operators value throws", () => {
    expect(() => buildLlamaOnnx(makeTinyWeights(), { operators: "gqa" as GraphOperators })).toThrow(
      'Cannot build the decoder graph: current operators is "gqa"; use one of fused, standard',
    );
  });
});

/** Round every matrix of `w` to Q4_0, keeping the blocks in `q4_0` as a Q4_0 GGUF file loads. */
function toQ4_0(w: LlamaWeights): LlamaWeights {
  const quantize = (t: Tensor): Tensor => {
    const blocks = quantizeQ4_0(t.data);
    return { dims: t.dims, data: dequantize(GGML_Q4_0, blocks, t.data.length), q4_0: blocks };
  };
  const layers = w.layers.map((layer) => ({
    ...layer,
    wq: quantize(layer.wq),
    wk: quantize(layer.wk),
    wv: quantize(layer.wv),
    wo: quantize(layer.wo),
    wGate: quantize(layer.wGate),
    wUp: quantize(layer.wUp),
    wDown: quantize(layer.wDown),
  }));
  const embedding = quantize(w.tokenEmbedding);
  return { ...w, layers, tokenEmbedding: embedding, output: embedding };
}

describe("Q4_0 weights with MatMulNBits", () => {
  // Rows of 32 and 64 values, whole Q4_0 blocks; head size 8.
  const q4Options: TinyOptions = { nEmbd: 32, nFf: 64, headDim: 8, biases: true };

  test("graph uses MatMulNBits only when asked", () => {
    const w = toQ4_0(makeTinyWeights(q4Options));
    const decoder = new TextDecoder();
    expect(decoder.decode(buildLlamaOnnx(w, { matMulNBits: true }))).toContain("MatMulNBits");
    expect(decoder.decode(buildLlamaOnnx(w))).not.toContain("MatMulNBits");
  });

  test("matMulNBits with standard operators throws", () => {
    expect(() => buildLlamaOnnx(makeTinyWeights(), { operators: "standard", matMulNBits: true })).toThrow(
      'Cannot build the decoder graph with matMulNBits: current operators is "standard"; use operators "fused" or leave matMulNBits off',
    );
  });

  test.skipIf(!nativeInstalled())("native logits match reference", async () => {
    const w = toQ4_0(makeTinyWeights(q4Options));
    const expected = referenceForward(w, TOKENS, POSITIONS);
    const runtime = await DecoderRuntime.create(w, { backend: "native" });
    try {
      const full = await runtime.run({ inputIds: TOKENS, positionIds: POSITIONS, past: emptyPast(w.layers.length), pastLength: 0 });
      expect(relativeError(full.logits, flatten(expected.logits))).toBeLessThan(MAX_RELATIVE_ERROR);
      const step = await runtime.run({
        inputIds: [TOKENS[8]],
        positionIds: [8],
        past: (await runtime.run({ inputIds: TOKENS.slice(0, 8), positionIds: POSITIONS.slice(0, 8), past: emptyPast(w.layers.length), pastLength: 0 })).present,
        pastLength: 8,
      });
      expect(relativeError(step.logits, expected.logits[8])).toBeLessThan(MAX_RELATIVE_ERROR);
    } finally {
      await runtime.dispose();
    }
  }, TEST_TIMEOUT_MS);
});
