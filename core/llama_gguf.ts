/**
 * Loader of llama-architecture GGUF files into `LlamaWeights` and tokenizer data.
 */

import {
  getMetadata,
  type GgufFile,
  type GgufValue,
  parseGguf,
  readTensor,
  requireMetadata,
} from "./gguf.ts";
import { TOKEN_TYPE, Tokenizer, type TokenizerData } from "./tokenizer.ts";
import type { LlamaConfig, LlamaLayerWeights, LlamaWeights, RopeConfig, Tensor } from "./types.ts";
import { ropeInvFreq } from "./types.ts";

/** A loaded llama GGUF file. */
export interface LlamaGguf {
  weights: LlamaWeights;
  /** SPM tokenizer built from the `tokenizer.ggml.*` keys. Its `data` contains the raw values. */
  tokenizer: Tokenizer;
  /** `tokenizer.chat_template`, when the file has one. */
  chatTemplate?: string;
  /** Every metadata value of the file, by key. */
  metadata: Map<string, GgufValue>;
  /** GGUF version of the file (1, 2 or 3). */
  version: number;
}

/**
 * Load a llama GGUF file from a path or from its bytes. F32, F16, Q8_0, Q4_0, Q4_K and Q6_K
 * tensors are read as float32. Throws a one-line error naming the problem for a non-GGUF or
 * truncated file, an architecture other than `llama`, a missing key or tensor, any other
 * tensor type, a RoPE scaling that cannot be reproduced exactly, or a vocabulary other than
 * SentencePiece.
 */
export async function loadLlamaGguf(source: string | Uint8Array): Promise<LlamaGguf> {
  const bytes = typeof source === "string" ? await readFileBytes(source) : source;
  return loadLlamaGgufBytes(bytes);
}

async function readFileBytes(path: string): Promise<Uint8Array> {
  const { readFile } = await import("node:fs/promises");
  return new Uint8Array(await readFile(path));
}

/** Synchronous form of `loadLlamaGguf` for bytes already in memory. */
export function loadLlamaGgufBytes(bytes: Uint8Array): LlamaGguf {
  const file = parseGguf(bytes);
  const architecture = requireString(file, "general.architecture");
  if (architecture !== "llama") {
    throw new RangeError(
      `Failed to load GGUF: general.architecture is ${JSON.stringify(architecture)}, sinkstream supports "llama" only`,
    );
  }

  const tokenizerData = readTokenizerData(file);
  const config = readLlamaConfig(file, tokenizerData.tokens.length);
  const weights = readLlamaWeights(file, config);

  const metadata = new Map<string, GgufValue>();
  for (const [key, entry] of file.metadata) metadata.set(key, entry.value);
  const tokenizer = new Tokenizer(tokenizerData);
  return { weights, tokenizer, chatTemplate: tokenizerData.chatTemplate, metadata, version: file.version };
}

function requireNumber(file: GgufFile, key: string): number {
  const value = requireMetadata(file, key);
  if (typeof value !== "number" && typeof value !== "bigint") {
    throw new TypeError(`Failed to load GGUF: ${key} must be a number, current value is ${String(value)}`);
  }
  return Number(value);
}

function optionalNumber(file: GgufFile, key: string, fallback: number): number {
  return file.metadata.has(key) ? requireNumber(file, key) : fallback;
}

function requireString(file: GgufFile, key: string): string {
  const value = requireMetadata(file, key);
  if (typeof value !== "string") {
    throw new TypeError(`Failed to load GGUF: ${key} must be a string, current value is ${String(value)}`);
  }
  return value;
}

function optionalBoolean(file: GgufFile, key: string, fallback: boolean): boolean {
  const value = getMetadata(file, key);
  return value === undefined ? fallback : Boolean(value);
}

function requireArray(file: GgufFile, key: string): GgufValue[] {
  const value = requireMetadata(file, key);
  if (!Array.isArray(value)) {
    throw new TypeError(`Failed to load GGUF: ${key} must be an array, current value is ${String(value)}`);
  }
  return value;
}

/** Read the `llama.*` hyperparameters and the RoPE settings. */
export function readLlamaConfig(file: GgufFile, vocabSize: number): LlamaConfig {
  const nEmbd = requireNumber(file, "llama.embedding_length");
  const nHeads = requireNumber(file, "llama.attention.head_count");
  const nKvHeads = optionalNumber(file, "llama.attention.head_count_kv", nHeads);
  const headDim = nEmbd / nHeads;
  const expertCount = optionalNumber(file, "llama.expert_count", 0);
  if (expertCount > 0) {
    throw new RangeError(
      `Unsupported mixture of experts: llama.expert_count is ${expertCount}, sinkstream loads dense llama models only`,
    );
  }
  if (!Number.isInteger(headDim) || nHeads % nKvHeads !== 0) {
    throw new RangeError(
      `Failed to load GGUF: llama.embedding_length ${nEmbd} must be a multiple of llama.attention.head_count ${nHeads}, ` +
        `which must be a multiple of llama.attention.head_count_kv ${nKvHeads}`,
    );
  }
  return {
    architecture: "llama",
    nLayers: requireNumber(file, "llama.block_count"),
    nEmbd,
    nHeads,
    nKvHeads,
    headDim,
    nFf: requireNumber(file, "llama.feed_forward_length"),
    vocabSize,
    contextLength: requireNumber(file, "llama.context_length"),
    rmsNormEps: requireNumber(file, "llama.attention.layer_norm_rms_epsilon"),
    rope: readRopeConfig(file, headDim),
  };
}

function readRopeConfig(file: GgufFile, headDim: number): RopeConfig {
  const dim = optionalNumber(file, "llama.rope.dimension_count", headDim);
  if (dim % 2 !== 0 || dim > headDim || dim <= 0) {
    throw new RangeError(
      `Failed to load GGUF: llama.rope.dimension_count must be even and at most the head size ${headDim}, current value is ${dim}`,
    );
  }
  const base = optionalNumber(file, "llama.rope.freq_base", 10000);
  const invFreq = ropeInvFreq(dim, base);

  const scalingType = getMetadata(file, "llama.rope.scaling.type");
  const factor = optionalNumber(file, "llama.rope.scaling.factor", 0);
  // llama.cpp's older key: llama.rope.scale_linear is a linear factor.
  const legacyLinear = optionalNumber(file, "llama.rope.scale_linear", 0);
  if (scalingType === undefined || scalingType === "none") {
    if (legacyLinear > 0 && legacyLinear !== 1) {
      for (let i = 0; i < invFreq.length; i++) invFreq[i] /= legacyLinear;
    }
  } else if (scalingType === "linear") {
    if (factor > 0 && factor !== 1) {
      for (let i = 0; i < invFreq.length; i++) invFreq[i] /= factor;
    }
  } else {
    throw new RangeError(
      `Unsupported RoPE scaling ${JSON.stringify(scalingType)} in llama.rope.scaling.type: sinkstream supports "none" and "linear"`,
    );
  }

  // Llama 3.1 style files store a per-pair divisor of the frequencies in rope_freqs.weight,
  // which llama.cpp applies as theta / factor.
  if (file.tensors.has("rope_freqs.weight")) {
    const factors = expectDims("rope_freqs.weight", readTensor(file, "rope_freqs.weight"), [dim / 2]);
    for (let i = 0; i < invFreq.length; i++) invFreq[i] /= factors.data[i];
  }
  return { dim, base, layout: "adjacent", invFreq };
}

/** Read the `tokenizer.ggml.*` keys with llama.cpp's defaults for an SPM vocabulary. */
export function readTokenizerData(file: GgufFile): TokenizerData {
  const model = requireString(file, "tokenizer.ggml.model");
  const tokens = requireArray(file, "tokenizer.ggml.tokens").map(String);
  const count = tokens.length;

  const scores = new Float32Array(count);
  const scoreValues = getMetadata(file, "tokenizer.ggml.scores");
  if (Array.isArray(scoreValues)) scores.set(scoreValues.map(Number));

  const tokenTypes = new Uint8Array(count).fill(TOKEN_TYPE.NORMAL);
  const typeValues = getMetadata(file, "tokenizer.ggml.token_type");
  if (Array.isArray(typeValues)) tokenTypes.set(typeValues.map(Number));

  const paddingValue = getMetadata(file, "tokenizer.ggml.padding_token_id");
  const chatTemplate = getMetadata(file, "tokenizer.chat_template");
  return {
    model,
    tokens,
    scores,
    tokenTypes,
    bosId: optionalNumber(file, "tokenizer.ggml.bos_token_id", 1),
    eosId: optionalNumber(file, "tokenizer.ggml.eos_token_id", 2),
    unknownId: optionalNumber(file, "tokenizer.ggml.unknown_token_id", 0),
    paddingId: paddingValue === undefined ? undefined : Number(paddingValue),
    addBos: optionalBoolean(file, "tokenizer.ggml.add_bos_token", true),
    addEos: optionalBoolean(file, "tokenizer.ggml.add_eos_token", false),
    addSpacePrefix: optionalBoolean(file, "tokenizer.ggml.add_space_prefix", true),
    chatTemplate: typeof chatTemplate === "string" ? chatTemplate : undefined,
  };
}

function expectDims(name: string, tensor: Tensor, dims: number[]): Tensor {
  if (tensor.dims.length !== dims.length || tensor.dims.some((d, i) => d !== dims[i])) {
    throw new RangeError(
      `Failed to load GGUF: tensor ${name} must have dims [${dims}] (outermost first), current dims are [${tensor.dims}]`,
    );
  }
  return tensor;
}

/** Read every weight tensor and check its dims against the config. */
export function readLlamaWeights(file: GgufFile, config: LlamaConfig): LlamaWeights {
  const { nEmbd, nFf, vocabSize, headDim } = config;
  const qDim = config.nHeads * headDim;
  const kvDim = config.nKvHeads * headDim;
  const read = (name: string, dims: number[]) => expectDims(name, readTensor(file, name), dims);
  const readOptional = (name: string, dims: number[]) =>
    file.tensors.has(name) ? read(name, dims) : undefined;

  const layers: LlamaLayerWeights[] = [];
  for (let i = 0; i < config.nLayers; i++) {
    const prefix = `blk.${i}.`;
    const layer: LlamaLayerWeights = {
      attnNorm: read(`${prefix}attn_norm.weight`, [nEmbd]),
      wq: read(`${prefix}attn_q.weight`, [qDim, nEmbd]),
      wk: read(`${prefix}attn_k.weight`, [kvDim, nEmbd]),
      wv: read(`${prefix}attn_v.weight`, [kvDim, nEmbd]),
      wo: read(`${prefix}attn_output.weight`, [nEmbd, qDim]),
      ffnNorm: read(`${prefix}ffn_norm.weight`, [nEmbd]),
      wGate: read(`${prefix}ffn_gate.weight`, [nFf, nEmbd]),
      wUp: read(`${prefix}ffn_up.weight`, [nFf, nEmbd]),
      wDown: read(`${prefix}ffn_down.weight`, [nEmbd, nFf]),
    };
    const bq = readOptional(`${prefix}attn_q.bias`, [qDim]);
    const bk = readOptional(`${prefix}attn_k.bias`, [kvDim]);
    const bv = readOptional(`${prefix}attn_v.bias`, [kvDim]);
    if (bq) layer.bq = bq;
    if (bk) layer.bk = bk;
    if (bv) layer.bv = bv;
    layers.push(layer);
  }

  const tokenEmbedding = read("token_embd.weight", [vocabSize, nEmbd]);
  // Without output.weight the model ties its output projection to the token embedding.
  const output = readOptional("output.weight", [vocabSize, nEmbd]) ?? tokenEmbedding;
  return {
    config,
    tokenEmbedding,
    layers,
    outputNorm: read("output_norm.weight", [nEmbd]),
    output,
  };
}
