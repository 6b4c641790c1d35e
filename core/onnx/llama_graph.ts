/**
 * Builds an ONNX decoder graph for a llama-architecture model, with the input and output
 * names of Hugging Face ONNX decoder exports (`input_ids`, `attention_mask`, `position_ids`,
 * `num_logits_to_keep`, `past_key_values.{i}.key|value` in, `logits`, `present.{i}.key|value`
 * out).
 *
 * By default the blocks use ONNX Runtime's contrib operators `SimplifiedLayerNormalization`
 * (default domain) and `SkipSimplifiedLayerNormalization`, `RotaryEmbedding`, `QuickGelu`
 * (`com.microsoft` domain), which onnxruntime-node and onnxruntime-web 1.30.0 both run on CPU.
 * The `standard` variant uses only default-domain ops of opset 17, so any ONNX runtime can
 * load it. Keys in `present` are stored already rotated at their position ids, as in those
 * exports.
 */

import type { LlamaLayerWeights, LlamaWeights, Tensor } from "../types.ts";
import { matMulNBitsWeights, Q4_0_BLOCK_VALUES, type Q4_0Rows } from "./matmul_nbits.ts";
import {
  type AttributeInit,
  DataType,
  encodeModel,
  float32Bytes,
  int64Bytes,
  type ModelInit,
  type NodeInit,
  type TensorProtoInit,
  type ValueInfoInit,
} from "./proto.ts";

/** Options of {@link buildLlamaOnnx}. */
export interface LlamaGraphOptions {
  /**
   * Rows of the RoPE cos/sin table, so position ids must be below this value.
   * @default the model's context length
   */
  maxPositions?: number;
  /**
   * Output only the new entries as `present.{i}.key|value`, `[batch, kvHeads, seq, headDim]`,
   * instead of past and new entries concatenated. A caller that keeps its own cache then
   * receives `seq` entries per step instead of `past + seq`.
   * @default false, the Hugging Face signature
   */
  presentNewOnly?: boolean;
  /**
   * Operators of the decoder blocks: `fused` uses ONNX Runtime's contrib operators (one
   * node each for RMSNorm with the residual add, RoPE and SiLU) and one MatMul for q, k and v,
   * `standard` uses only default-domain ops of opset 17. Both compute the same function, with
   * the same attention ops, masks included.
   * @default "fused"
   */
  operators?: GraphOperators;
  /**
   * Multiply weights that were stored as Q4_0 (`Tensor.q4_0`) with the contrib operator
   * `MatMulNBits` over their 4-bit blocks, instead of float32 MatMul over the dequantized
   * values. Needs `operators: "fused"`. A decode step then reads about 1/7 of the weight bytes.
   * @default false
   */
  matMulNBits?: boolean;
}

/** Operator sets {@link buildLlamaOnnx} can build the decoder blocks from. */
export const GRAPH_OPERATORS = ["fused", "standard"] as const;
export type GraphOperators = (typeof GRAPH_OPERATORS)[number];

/**
 * ONNX model bytes whose large initializers are kept outside the protobuf, which cannot
 * exceed 2 GiB, so that models with more than about 500M float32 weights can be loaded.
 */
export interface LlamaOnnxWithExternalData {
  /** The `ModelProto` bytes; each large initializer names its file in `external_data`. */
  model: Uint8Array;
  /**
   * One file per external initializer, in the form of ONNX Runtime's session option
   * `externalData`: `path` is the `location` the model names, `data` the raw little-endian
   * payload. Float32 weights are not copied, so `data` may share memory with `weights`.
   */
  externalData: { path: string; data: Uint8Array }[];
}

const OPSET_VERSION = 17;
/** Initializers of at least this many bytes go to external data; smaller ones stay inline. */
const EXTERNAL_DATA_MIN_BYTES = 1024;
/** Whether typed arrays are little-endian here, so float32 payloads can be used in place. */
const LITTLE_ENDIAN_HOST = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;
/** IR version 8 is the one that goes with opset 17. */
const IR_VERSION = 8;
/** Domain of ONNX Runtime's contrib operators. */
const MICROSOFT_DOMAIN = "com.microsoft";
/** Score given to masked keys: the lowest float32, as Hugging Face models use. */
const MASKED_SCORE = -3.4028234663852886e38;

/**
 * Name of the int64 scalar input that sets how many of the last positions get logits, from 1
 * to the sequence length. The output projection costs `vocab × nEmbd` per row, so a prefill
 * whose scores are not read asks for 1 row. Hugging Face decoder exports use the same name.
 */
export const LOGITS_TO_KEEP_NAME = "num_logits_to_keep";

/** Input name of layer `i`'s cached keys or values. */
export function pastName(layer: number, kind: "key" | "value"): string {
  return `past_key_values.${layer}.${kind}`;
}

/** Output name of layer `i`'s keys or values after this step. */
export function presentName(layer: number, kind: "key" | "value"): string {
  return `present.${layer}.${kind}`;
}

/** Accumulates nodes and initializers, naming intermediate values uniquely. */
class GraphBuilder {
  readonly nodes: NodeInit[] = [];
  readonly initializers: TensorProtoInit[] = [];
  /** Whether weights with Q4_0 blocks are multiplied with `MatMulNBits` instead of dequantized. */
  matMulNBits = false;
  private counter = 0;

  /** Add a node with one output and return that output's name. */
  op(opType: string, inputs: string[], attributes: AttributeInit[] = [], output?: string): string {
    const name = output ?? `${opType.toLowerCase()}_${this.counter++}`;
    this.nodes.push({ opType, inputs, outputs: [name], name: `${opType}_${this.counter++}`, attributes });
    return name;
  }

  /** Add a node with `outputCount` outputs and return their generated names. */
  opMulti(opType: string, inputs: string[], outputCount: number, attributes: AttributeInit[] = []): string[] {
    const outputs = Array.from({ length: outputCount }, (_, i) => `${opType.toLowerCase()}_${this.counter}_${i}`);
    this.nodes.push({ opType, inputs, outputs, name: `${opType}_${this.counter++}`, attributes });
    return outputs;
  }

  /** Add a float32 initializer; a `Float32Array` is used in place on little-endian hosts. */
  float(name: string, dims: number[], values: ArrayLike<number>): string {
    const rawData = values instanceof Float32Array && LITTLE_ENDIAN_HOST
      ? new Uint8Array(values.buffer, values.byteOffset, values.byteLength)
      : float32Bytes(values);
    this.initializers.push({ name, dataType: DataType.FLOAT, dims, rawData });
    return name;
  }

  int64(name: string, dims: number[], values: number[]): string {
    this.initializers.push({ name, dataType: DataType.INT64, dims, rawData: int64Bytes(values) });
    return name;
  }

  /** Add a node of ONNX Runtime's `com.microsoft` domain with the given outputs ("" skips one). */
  contribOp(opType: string, inputs: string[], outputs: string[], attributes: AttributeInit[]): void {
    this.nodes.push({ opType, inputs, outputs, name: `${opType}_${this.counter++}`, domain: MICROSOFT_DOMAIN, attributes });
  }

  /** Return a fresh intermediate value name. */
  fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  /** Add an int64 constant read by several nodes, once under `name`. */
  sharedInt64(name: string, dims: number[], values: number[]): string {
    if (!this.initializers.some((t) => t.name === name)) this.int64(name, dims, values);
    return name;
  }

  /** Store a `[out, in]` weight transposed to `[in, out]`, so `MatMul(x, w)` computes `W x`. */
  transposedWeight(name: string, t: Tensor): string {
    const [rows, cols] = t.dims;
    const out = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) out[c * rows + r] = t.data[r * cols + c];
    }
    return this.float(name, [cols, rows], out);
  }
}

/**
 * Build the ONNX model bytes of the decoder described by `weights`.
 *
 * Shapes (batch is dynamic): `input_ids`, `position_ids` int64 `[batch, seq]`;
 * `attention_mask` int64 `[batch, past + seq]` with 0 for masked keys; past and present
 * float32 `[batch, kvHeads, len, headDim]`; `num_logits_to_keep` int64 scalar; `logits` float32
 * `[batch, num_logits_to_keep, vocab]`, the rows of the last positions.
 */
export function buildLlamaOnnx(weights: LlamaWeights, options: LlamaGraphOptions = {}): Uint8Array {
  return encodeModel(buildLlamaModel(weights, options));
}

/**
 * Build the same decoder as {@link buildLlamaOnnx}, with every initializer of 1 KiB or more
 * stored as ONNX external data instead of `raw_data`. The weights are then never joined into
 * one buffer, and models whose weights exceed protobuf's 2 GiB limit can be built.
 *
 * @example
 * ```ts
 * const { model, externalData } = buildLlamaOnnxWithExternalData(weights);
 * const session = await ort.InferenceSession.create(model, { externalData });
 * ```
 */
export function buildLlamaOnnxWithExternalData(
  weights: LlamaWeights,
  options: LlamaGraphOptions = {},
): LlamaOnnxWithExternalData {
  const model = buildLlamaModel(weights, options);
  const externalData: LlamaOnnxWithExternalData["externalData"] = [];
  for (const tensor of model.graph.initializers) {
    if (tensor.rawData.length < EXTERNAL_DATA_MIN_BYTES) continue;
    const path = `${tensor.name}.bin`;
    tensor.external = { location: path, offset: 0, length: tensor.rawData.length };
    externalData.push({ path, data: tensor.rawData });
  }
  return { model: encodeModel(model), externalData };
}

function buildLlamaModel(weights: LlamaWeights, options: LlamaGraphOptions): ModelInit {
  const config = weights.config;
  const maxPositions = options.maxPositions ?? config.contextLength;
  if (!Number.isInteger(maxPositions) || maxPositions < 1) {
    throw new RangeError(`Cannot build the RoPE table: current maxPositions is ${maxPositions}; expected a positive integer`);
  }
  const rotaryDim = config.rope.dim;
  if (rotaryDim % 2 !== 0 || rotaryDim > config.headDim || rotaryDim < 2) {
    throw new RangeError(
      `Cannot build the RoPE table: current rope.dim is ${rotaryDim}; expected an even number from 2 to headDim ${config.headDim}`,
    );
  }
  if (config.nHeads % config.nKvHeads !== 0) {
    throw new RangeError(
      `Cannot group query heads: current nHeads ${config.nHeads} is not a multiple of nKvHeads ${config.nKvHeads}`,
    );
  }

  const operators = options.operators ?? "fused";
  if (!GRAPH_OPERATORS.includes(operators)) {
    throw new RangeError(
      `Cannot build the decoder graph: current operators is ${JSON.stringify(operators)}; use one of ${GRAPH_OPERATORS.join(", ")}`,
    );
  }
  const presentNewOnly = options.presentNewOnly ?? false;

  const g = new GraphBuilder();
  if (options.matMulNBits && operators !== "fused") {
    throw new RangeError(
      `Cannot build the decoder graph with matMulNBits: current operators is "${operators}"; use operators "fused" or leave matMulNBits off`,
    );
  }
  g.matMulNBits = options.matMulNBits ?? false;
  const embedded = g.op("Gather", [g.float("token_embedding", weights.tokenEmbedding.dims, weights.tokenEmbedding.data), "input_ids"]);
  const outputNorm = g.float("output_norm", weights.outputNorm.dims, weights.outputNorm.data);
  let normed: string;
  if (operators === "fused") {
    const hidden = addKeepLastRows(g, addFusedBlocks(g, weights, embedded, maxPositions, presentNewOnly));
    normed = addSimplifiedLayerNorm(g, hidden, outputNorm, config.rmsNormEps);
  } else {
    const shared = addSharedValues(g, weights, maxPositions, presentNewOnly);
    let hidden = embedded;
    weights.layers.forEach((layer, i) => {
      hidden = addBlock(g, weights, layer, i, hidden, shared);
    });
    normed = addRmsNorm(g, addKeepLastRows(g, hidden), outputNorm, shared);
  }
  addLinear(g, normed, "output", weights.output, undefined, "logits");

  const opsetImports = [{ domain: "", version: OPSET_VERSION }];
  if (operators === "fused") opsetImports.push({ domain: MICROSOFT_DOMAIN, version: 1 });
  return {
    irVersion: IR_VERSION,
    producerName: "sinkstream",
    opsetImports,
    graph: {
      name: `${config.architecture}_decoder`,
      nodes: g.nodes,
      initializers: g.initializers,
      inputs: graphInputs(weights),
      outputs: graphOutputs(weights, presentNewOnly),
    },
  };
}

function graphInputs(weights: LlamaWeights): ValueInfoInit[] {
  const { nKvHeads, headDim } = weights.config;
  const inputs: ValueInfoInit[] = [
    { name: "input_ids", elemType: DataType.INT64, shape: ["batch_size", "sequence_length"] },
    { name: "attention_mask", elemType: DataType.INT64, shape: ["batch_size", "total_sequence_length"] },
    { name: "position_ids", elemType: DataType.INT64, shape: ["batch_size", "sequence_length"] },
    { name: LOGITS_TO_KEEP_NAME, elemType: DataType.INT64, shape: [] },
  ];
  for (let i = 0; i < weights.layers.length; i++) {
    for (const kind of ["key", "value"] as const) {
      inputs.push({
        name: pastName(i, kind),
        elemType: DataType.FLOAT,
        shape: ["batch_size", nKvHeads, "past_sequence_length", headDim],
      });
    }
  }
  return inputs;
}

function graphOutputs(weights: LlamaWeights, presentNewOnly: boolean): ValueInfoInit[] {
  const { nKvHeads, headDim, vocabSize } = weights.config;
  const outputs: ValueInfoInit[] = [
    { name: "logits", elemType: DataType.FLOAT, shape: ["batch_size", "logits_length", vocabSize] },
  ];
  for (let i = 0; i < weights.layers.length; i++) {
    for (const kind of ["key", "value"] as const) {
      outputs.push({
        name: presentName(i, kind),
        elemType: DataType.FLOAT,
        shape: ["batch_size", nKvHeads, presentNewOnly ? "sequence_length" : "total_sequence_length", headDim],
      });
    }
  }
  return outputs;
}

/** Keep the last `num_logits_to_keep` rows of `[b, s, nEmbd]`. */
function addKeepLastRows(g: GraphBuilder, hidden: string): string {
  const axis = g.sharedInt64("axis_zero", [1], [0]);
  const seqLength = g.op("Gather", [g.op("Shape", [hidden]), g.sharedInt64("seq_axis", [1], [1])]); // [1]
  const keep = g.op("Unsqueeze", [LOGITS_TO_KEEP_NAME, axis]); // [1]
  const start = g.op("Sub", [seqLength, keep]);
  return g.op("Slice", [hidden, start, seqLength, g.sharedInt64("seq_axis", [1], [1])]);
}

/**
 * Return the RoPE cos/sin tables `[maxPositions, rope.dim / 2]`: angle = position × invFreq[i]
 * in float64, rounded to float32 only when stored.
 */
function ropeTables(weights: LlamaWeights, maxPositions: number): { cosTable: Float64Array; sinTable: Float64Array } {
  const { rope } = weights.config;
  const half = rope.dim / 2;
  const cosTable = new Float64Array(maxPositions * half);
  const sinTable = new Float64Array(maxPositions * half);
  for (let pos = 0; pos < maxPositions; pos++) {
    for (let i = 0; i < half; i++) {
      const angle = pos * rope.invFreq[i];
      cosTable[pos * half + i] = Math.cos(angle);
      sinTable[pos * half + i] = Math.sin(angle);
    }
  }
  return { cosTable, sinTable };
}

/**
 * Add the attention mask from the input shapes and `attention_mask`: bool
 * `[batch, 1, group * seq, past + seq]`, true where query t (of seq) may attend to key j,
 * that is j <= past + t and `attention_mask[j]` is 1.
 */
function addAttentionMask(g: GraphBuilder, weights: LlamaWeights): string {
  const { nHeads, nKvHeads } = weights.config;
  // Causal mask from the shapes: query t (of seq) attends to key j (of past + seq) iff j <= past + t.
  const zero = g.int64("zero", [], [0]);
  const one = g.int64("one", [], [1]);
  const seqLength = g.op("Gather", [g.op("Shape", ["input_ids"]), one]);
  const totalLength = g.op("Gather", [g.op("Shape", ["attention_mask"]), one]);
  const pastLength = g.op("Sub", [totalLength, seqLength]);
  const queryPositions = g.op("Range", [zero, seqLength, one]); // [s]
  // Query rows are ordered (group, t) after the grouped-query reshape, so repeat t per group.
  const groupedPositions = g.op("Tile", [queryPositions, g.int64("group_repeats", [1], [nHeads / nKvHeads])]);
  const lastVisibleKey = g.op("Add", [groupedPositions, pastLength]); // [group * s]
  const limit = g.op("Unsqueeze", [g.op("Add", [lastVisibleKey, one]), g.int64("axis_last", [1], [1])]); // [group * s, 1]
  const keyPositions = g.op("Range", [zero, totalLength, one]); // [past + s]
  const causal = g.op("Less", [keyPositions, limit]); // [group * s, past + s]
  const keyAllowed = g.op("Unsqueeze", [
    g.op("Cast", ["attention_mask"], [{ name: "to", type: "int", value: DataType.BOOL }]),
    g.int64("mask_axes", [2], [1, 2]),
  ]); // [b, 1, 1, past + s]
  const allowed = g.op("And", [causal, keyAllowed]);
  return allowed;
}

/** Values computed once and read by every block. */
interface SharedValues {
  eps: string;
  two: string;
  /** cos and sin of the rotary angles at `position_ids`, shaped to broadcast over heads. */
  cos: string;
  sin: string;
  /** bool `[batch, 1, group * seq, past + seq]`: true where a query may attend to a key. */
  allowed: string;
  maskedScore: string;
  scale: string;
  /** Whether `present` outputs carry only the new entries. */
  presentNewOnly: boolean;
}

function addSharedValues(
  g: GraphBuilder,
  weights: LlamaWeights,
  maxPositions: number,
  presentNewOnly: boolean,
): SharedValues {
  const { rope, headDim, rmsNormEps } = weights.config;
  const half = rope.dim / 2;
  const { cosTable, sinTable } = ropeTables(weights, maxPositions);
  const cosRows = g.op("Gather", [g.float("rope_cos", [maxPositions, half], cosTable), "position_ids"]); // [b, s, half]
  const sinRows = g.op("Gather", [g.float("rope_sin", [maxPositions, half], sinTable), "position_ids"]);
  // adjacent: x is viewed as [b, h, s, half, 2], so the table needs [b, 1, s, half, 1];
  // halves: x splits into two [b, h, s, half] parts, so the table needs [b, 1, s, half].
  const axes = g.int64("rope_unsqueeze_axes", [rope.layout === "adjacent" ? 2 : 1], rope.layout === "adjacent" ? [1, 4] : [1]);
  const cos = g.op("Unsqueeze", [cosRows, axes]);
  const sin = g.op("Unsqueeze", [sinRows, axes]);

  const allowed = addAttentionMask(g, weights);
  return {
    eps: g.float("rms_norm_eps", [], [rmsNormEps]),
    two: g.float("two", [], [2]),
    cos,
    sin,
    allowed,
    maskedScore: g.float("masked_score", [], [MASKED_SCORE]),
    scale: g.float("attention_scale", [], [1 / Math.sqrt(headDim)]),
    presentNewOnly,
  };
}

/** RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight. */
function addRmsNorm(g: GraphBuilder, x: string, weight: string, shared: SharedValues): string {
  const meanSquare = g.op("ReduceMean", [g.op("Pow", [x, shared.two])], [
    { name: "axes", type: "ints", value: [-1] },
    { name: "keepdims", type: "int", value: 1 },
  ]);
  const rms = g.op("Sqrt", [g.op("Add", [meanSquare, shared.eps])]);
  return g.op("Mul", [g.op("Div", [x, rms]), weight]);
}

/** Project `x` with a `[out, in]` weight and optional bias, naming the result `output` if given. */
function addLinear(g: GraphBuilder, x: string, name: string, weight: Tensor, bias?: Tensor, output?: string): string {
  const productName = bias ? undefined : output;
  const y = g.matMulNBits && weight.q4_0
    ? addMatMulNBits(g, x, name, weight.dims[0], weight.dims[1], [{ blocks: weight.q4_0, rows: weight.dims[0], scale: 1 }], productName)
    : g.op("MatMul", [x, g.transposedWeight(`${name}_weight_t`, weight)], [], productName);
  return bias ? g.op("Add", [y, g.float(`${name}_bias`, bias.dims, bias.data)], [], output) : y;
}

/**
 * Multiply `x` by the transpose of a `[rows, cols]` weight stored as ggml Q4_0 blocks with
 * `MatMulNBits` (4 bits, block size 32, default zero point 8). `parts` are row ranges stacked
 * in order, each with a factor applied to its block scales.
 */
function addMatMulNBits(
  g: GraphBuilder,
  x: string,
  name: string,
  rows: number,
  cols: number,
  parts: Q4_0Rows[],
  output?: string,
): string {
  const { packed, scales } = matMulNBitsWeights(rows, cols, parts);
  const blocksPerRow = cols / Q4_0_BLOCK_VALUES;
  g.initializers.push({ name: `${name}_q4`, dataType: DataType.UINT8, dims: [rows, blocksPerRow, 16], rawData: packed });
  const out = output ?? g.fresh("matmul_nbits");
  g.contribOp("MatMulNBits", [x, `${name}_q4`, g.float(`${name}_q4_scales`, [rows * blocksPerRow], scales)], [out], [
    { name: "K", type: "int", value: cols },
    { name: "N", type: "int", value: rows },
    { name: "bits", type: "int", value: 4 },
    { name: "block_size", type: "int", value: Q4_0_BLOCK_VALUES },
  ]);
  return out;
}

/** Reshape `[b, s, heads * headDim]` to `[b, heads, s, headDim]`, named `output` if given. */
function splitHeads(g: GraphBuilder, x: string, heads: number, headDim: number, output?: string): string {
  const shape = g.sharedInt64(`heads_shape_${heads}`, [4], [0, 0, heads, headDim]);
  return g.op("Transpose", [g.op("Reshape", [x, shape])], [{ name: "perm", type: "ints", value: [0, 2, 1, 3] }], output);
}

/** Rotate the first `rope.dim` dims of `[b, heads, s, headDim]` by the shared cos/sin. */
function addRope(g: GraphBuilder, weights: LlamaWeights, x: string, shared: SharedValues): string {
  const { rope, headDim } = weights.config;
  const half = rope.dim / 2;
  let rotated = x;
  let passThrough: string | undefined;
  if (rope.dim < headDim) {
    [rotated, passThrough] = g.opMulti("Split", [x, g.sharedInt64("rope_split", [2], [rope.dim, headDim - rope.dim])], 2, [
      { name: "axis", type: "int", value: -1 },
    ]);
  }

  let first: string;
  let second: string;
  if (rope.layout === "adjacent") {
    // Pairs (2i, 2i+1): view as [b, h, s, half, 2] and take the two columns.
    const pairs = g.op("Reshape", [rotated, g.sharedInt64("rope_pairs_shape", [5], [0, 0, 0, half, 2])]);
    [first, second] = g.opMulti("Split", [pairs, g.sharedInt64("rope_pair_split", [2], [1, 1])], 2, [
      { name: "axis", type: "int", value: -1 },
    ]);
  } else {
    // Pairs (i, i + half): the two halves of the rotated dims.
    [first, second] = g.opMulti("Split", [rotated, g.sharedInt64("rope_half_split", [2], [half, half])], 2, [
      { name: "axis", type: "int", value: -1 },
    ]);
  }
  const newFirst = g.op("Sub", [g.op("Mul", [first, shared.cos]), g.op("Mul", [second, shared.sin])]);
  const newSecond = g.op("Add", [g.op("Mul", [second, shared.cos]), g.op("Mul", [first, shared.sin])]);
  let result = g.op("Concat", [newFirst, newSecond], [{ name: "axis", type: "int", value: -1 }]);
  if (rope.layout === "adjacent") {
    result = g.op("Reshape", [result, g.sharedInt64("rope_merge_shape", [4], [0, 0, 0, rope.dim])]);
  }
  if (passThrough) result = g.op("Concat", [result, passThrough], [{ name: "axis", type: "int", value: -1 }]);
  return result;
}

/**
 * Attend from `[b, heads, s, hd]` queries, already scaled by 1/sqrt(headDim), to the past and
 * the new `[b, kvHeads, s, hd]` keys and values, and output layer `index`'s present entries.
 * Returns the context `[b, s, heads * hd]`.
 */
function addAttention(
  g: GraphBuilder,
  weights: LlamaWeights,
  index: number,
  q: string,
  k: string,
  v: string,
  mask: { allowed: string; maskedScore: string; presentNewOnly: boolean },
): string {
  const { nHeads, nKvHeads, headDim } = weights.config;
  const newOnly = mask.presentNewOnly;
  const concatAxis: AttributeInit[] = [{ name: "axis", type: "int", value: 2 }];
  const keys = g.op("Concat", [pastName(index, "key"), k], concatAxis, newOnly ? undefined : presentName(index, "key"));
  const values = g.op("Concat", [pastName(index, "value"), v], concatAxis, newOnly ? undefined : presentName(index, "value"));
  if (newOnly && k !== presentName(index, "key")) g.op("Identity", [k], [], presentName(index, "key"));
  if (newOnly && v !== presentName(index, "value")) g.op("Identity", [v], [], presentName(index, "value"));

  // Grouped-query attention without repeating K/V: query heads kv*group .. kv*group+group-1
  // share kv head `kv`, so [b, heads, s, hd] is viewed as [b, kvHeads, group * s, hd].
  const groupedShape = g.sharedInt64("grouped_query_shape", [4], [0, nKvHeads, -1, headDim]);
  const groupedQuery = g.op("Reshape", [q, groupedShape]);
  const keysT = g.op("Transpose", [keys], [{ name: "perm", type: "ints", value: [0, 1, 3, 2] }]);
  const scores = g.op("MatMul", [groupedQuery, keysT]); // [b, kv, group * s, past + s]
  const masked = g.op("Where", [mask.allowed, scores, mask.maskedScore]);
  const probs = g.op("Softmax", [masked], [{ name: "axis", type: "int", value: -1 }]);
  const context = g.op("MatMul", [probs, values]); // [b, kv, group * s, hd]
  const headsShape = g.sharedInt64("heads_merged_shape", [4], [0, nHeads, -1, headDim]);
  const perToken = g.op("Transpose", [g.op("Reshape", [context, headsShape])], [
    { name: "perm", type: "ints", value: [0, 2, 1, 3] },
  ]); // [b, s, heads, hd]
  const flatShape = g.sharedInt64("flat_heads_shape", [3], [0, 0, nHeads * headDim]);
  return g.op("Reshape", [perToken, flatShape]);
}

/** Add one transformer block and return its output `[b, s, nEmbd]`. */
function addBlock(
  g: GraphBuilder,
  weights: LlamaWeights,
  layer: LlamaLayerWeights,
  index: number,
  hidden: string,
  shared: SharedValues,
): string {
  const { nHeads, nKvHeads, headDim } = weights.config;
  const p = `layer${index}`;

  // Attention.
  const x = addRmsNorm(g, hidden, g.float(`${p}_attn_norm`, layer.attnNorm.dims, layer.attnNorm.data), shared);
  const q = addRope(g, weights, splitHeads(g, addLinear(g, x, `${p}_q`, layer.wq, layer.bq), nHeads, headDim), shared);
  const k = addRope(g, weights, splitHeads(g, addLinear(g, x, `${p}_k`, layer.wk, layer.bk), nKvHeads, headDim), shared);
  const v = splitHeads(g, addLinear(g, x, `${p}_v`, layer.wv, layer.bv), nKvHeads, headDim);
  const context = addAttention(g, weights, index, g.op("Mul", [q, shared.scale]), k, v, shared);
  const attnOut = addLinear(g, context, `${p}_o`, layer.wo);
  const afterAttn = g.op("Add", [hidden, attnOut]);

  // SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
  const y = addRmsNorm(g, afterAttn, g.float(`${p}_ffn_norm`, layer.ffnNorm.dims, layer.ffnNorm.data), shared);
  const gate = addLinear(g, y, `${p}_gate`, layer.wGate);
  const up = addLinear(g, y, `${p}_up`, layer.wUp);
  const silu = g.op("Mul", [gate, g.op("Sigmoid", [gate])]);
  const down = addLinear(g, g.op("Mul", [silu, up]), `${p}_down`, layer.wDown);
  return g.op("Add", [afterAttn, down]);
}

// ---------------------------------------------------------------------------------------
// Blocks built from ONNX Runtime's contrib operators

/** Values computed once and read by every fused block. */
interface FusedSharedValues {
  /** cos and sin of the rotary angles, `[maxPositions, rope.dim / 2]`, which `RotaryEmbedding` indexes by position id. */
  cos: string;
  sin: string;
  /** bool `[batch, 1, group * seq, past + seq]`, see {@link addAttentionMask}. */
  allowed: string;
  maskedScore: string;
  presentNewOnly: boolean;
}

/**
 * Add every decoder block with contrib operators and return the last hidden state
 * `[b, s, nEmbd]` before the output norm. Each block's input RMSNorm is fused with the residual
 * add that ends the block before it (`SkipSimplifiedLayerNormalization`).
 */
function addFusedBlocks(
  g: GraphBuilder,
  weights: LlamaWeights,
  embedded: string,
  maxPositions: number,
  presentNewOnly: boolean,
): string {
  const eps = weights.config.rmsNormEps;
  const { cosTable, sinTable } = ropeTables(weights, maxPositions);
  const half = weights.config.rope.dim / 2;
  const shared: FusedSharedValues = {
    cos: g.float("rope_cos", [maxPositions, half], cosTable),
    sin: g.float("rope_sin", [maxPositions, half], sinTable),
    allowed: addAttentionMask(g, weights),
    maskedScore: g.float("masked_score", [], [MASKED_SCORE]),
    presentNewOnly,
  };
  const attnNorm = (i: number) => g.float(`layer${i}_attn_norm`, weights.layers[i].attnNorm.dims, weights.layers[i].attnNorm.data);

  let x = addSimplifiedLayerNorm(g, embedded, attnNorm(0), eps);
  let residual = embedded;
  for (let i = 0; i < weights.layers.length; i++) {
    const { afterAttn, ffnOut } = addFusedBlock(g, weights, i, x, residual, shared);
    if (i + 1 < weights.layers.length) {
      [x, residual] = addSkipSimplifiedLayerNorm(g, ffnOut, afterAttn, attnNorm(i + 1), eps);
    } else {
      residual = g.op("Add", [afterAttn, ffnOut]);
    }
  }
  return residual;
}

/** RMSNorm over the last axis as one node; ONNX Runtime registers it in the default domain. */
function addSimplifiedLayerNorm(g: GraphBuilder, x: string, weight: string, eps: number): string {
  return g.op("SimplifiedLayerNormalization", [x, weight], [
    { name: "axis", type: "int", value: -1 },
    { name: "epsilon", type: "float", value: eps },
    { name: "stash_type", type: "int", value: 1 },
  ]);
}

/** Return `[rmsNorm(x + skip) * weight, x + skip]` from one node. */
function addSkipSimplifiedLayerNorm(g: GraphBuilder, x: string, skip: string, weight: string, eps: number): [string, string] {
  const normed = g.fresh("skip_norm");
  const sum = g.fresh("residual");
  g.contribOp("SkipSimplifiedLayerNormalization", [x, skip, weight], [normed, "", "", sum], [
    { name: "epsilon", type: "float", value: eps },
  ]);
  return [normed, sum];
}

/** Rotate the first `rope.dim` dims of each head of `[b, s, heads * headDim]` at `position_ids`. */
function addRotaryEmbedding(g: GraphBuilder, weights: LlamaWeights, x: string, heads: number, shared: FusedSharedValues): string {
  const { rope } = weights.config;
  const out = g.fresh("rotary");
  g.contribOp("RotaryEmbedding", [x, "position_ids", shared.cos, shared.sin], [out], [
    { name: "interleaved", type: "int", value: rope.layout === "adjacent" ? 1 : 0 },
    { name: "num_heads", type: "int", value: heads },
    { name: "rotary_embedding_dim", type: "int", value: rope.dim },
  ]);
  return out;
}

/**
 * Project `x` to queries, keys and values with one MatMul over the joined weights and split the
 * result. The query rows are scaled by 1/sqrt(headDim) here, which commutes with RoPE, so the
 * attention needs no separate scaling.
 */
function addQkvProjection(g: GraphBuilder, weights: LlamaWeights, index: number, x: string): [string, string, string] {
  const { nHeads, nKvHeads, headDim, nEmbd } = weights.config;
  const layer = weights.layers[index];
  const scale = 1 / Math.sqrt(headDim);
  const sizes = [nHeads * headDim, nKvHeads * headDim, nKvHeads * headDim];
  const width = sizes[0] + sizes[1] + sizes[2];

  let qkv: string;
  if (g.matMulNBits && layer.wq.q4_0 && layer.wk.q4_0 && layer.wv.q4_0) {
    qkv = addMatMulNBits(g, x, `layer${index}_qkv`, width, nEmbd, [
      { blocks: layer.wq.q4_0, rows: sizes[0], scale },
      { blocks: layer.wk.q4_0, rows: sizes[1], scale: 1 },
      { blocks: layer.wv.q4_0, rows: sizes[2], scale: 1 },
    ]);
  } else {
    // [nEmbd, q | k | v] so that MatMul(x, w) computes all three.
    const joined = new Float32Array(nEmbd * width);
    let column = 0;
    for (const [t, factor] of [[layer.wq, scale], [layer.wk, 1], [layer.wv, 1]] as const) {
      const [rows, cols] = t.dims;
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) joined[c * width + column + r] = t.data[r * cols + c] * factor;
      }
      column += rows;
    }
    qkv = g.op("MatMul", [x, g.float(`layer${index}_qkv_weight_t`, [nEmbd, width], joined)]);
  }
  if (layer.bq || layer.bk || layer.bv) {
    const bias = new Float32Array(width);
    if (layer.bq) for (let i = 0; i < sizes[0]; i++) bias[i] = layer.bq.data[i] * scale;
    if (layer.bk) bias.set(layer.bk.data, sizes[0]);
    if (layer.bv) bias.set(layer.bv.data, sizes[0] + sizes[1]);
    qkv = g.op("Add", [qkv, g.float(`layer${index}_qkv_bias`, [width], bias)]);
  }
  const [q, k, v] = g.opMulti("Split", [qkv, g.sharedInt64("qkv_split", [3], sizes)], 3, [{ name: "axis", type: "int", value: -1 }]);
  return [q, k, v];
}

/** Add one block from contrib operators; its input `x` is already normed. */
function addFusedBlock(
  g: GraphBuilder,
  weights: LlamaWeights,
  index: number,
  x: string,
  residual: string,
  shared: FusedSharedValues,
): { afterAttn: string; ffnOut: string } {
  const { nHeads, nKvHeads, headDim, rmsNormEps } = weights.config;
  const layer = weights.layers[index];
  const p = `layer${index}`;

  // Attention: RoPE on [b, s, heads * headDim] rows, then heads split out for the cache.
  // NOTE: GroupQueryAttention (com.microsoft, onnxruntime 1.30.0) computes the same values but was
  // slower on the SmolLM2-135M shape at cache 1024: +15% per decode step on wasm and 6x per
  // 32-token chunk, no gain on native (bench script, 2-core VM).
  const [q, k, v] = addQkvProjection(g, weights, index, x);
  const newOnly = shared.presentNewOnly;
  const queryHeads = splitHeads(g, addRotaryEmbedding(g, weights, q, nHeads, shared), nHeads, headDim);
  const keyHeads = splitHeads(g, addRotaryEmbedding(g, weights, k, nKvHeads, shared), nKvHeads, headDim, newOnly ? presentName(index, "key") : undefined);
  const valueHeads = splitHeads(g, v, nKvHeads, headDim, newOnly ? presentName(index, "value") : undefined);
  const context = addAttention(g, weights, index, queryHeads, keyHeads, valueHeads, shared);
  const attnOut = addLinear(g, context, `${p}_o`, layer.wo);
  const ffnNorm = g.float(`${p}_ffn_norm`, layer.ffnNorm.dims, layer.ffnNorm.data);
  const [y, afterAttn] = addSkipSimplifiedLayerNorm(g, attnOut, residual, ffnNorm, rmsNormEps);

  // SwiGLU feed-forward; QuickGelu with alpha 1 is x * sigmoid(x), that is SiLU.
  const gate = addLinear(g, y, `${p}_gate`, layer.wGate);
  const up = addLinear(g, y, `${p}_up`, layer.wUp);
  const silu = g.fresh("silu");
  g.contribOp("QuickGelu", [gate], [silu], [{ name: "alpha", type: "float", value: 1 }]);
  const ffnOut = addLinear(g, g.op("Mul", [silu, up]), `${p}_down`, layer.wDown);
  return { afterAttn, ffnOut };
}
