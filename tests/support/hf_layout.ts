/**
 * Writers of Hugging Face model layouts for tests: `config.json`, `tokenizer.json`,
 * `tokenizer_config.json`, `generation_config.json` and `onnx/model.onnx` with its
 * initializers in `onnx/model.onnx_data`, the files of a transformers.js ONNX export.
 *
 * Two sources: tiny random-weight models per architecture, and the stories260K GGUF model
 * converted to this layout (Q and K rows permuted from Meta's adjacent rotary pairs to the
 * `rotate_half` layout, the SentencePiece vocabulary written as a byte-fallback BPE).
 */

import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { configFromHf } from "../../core/architectures.ts";
import type { LlamaGguf } from "../../core/llama_gguf.ts";
import { buildLlamaOnnx } from "../../core/onnx/llama_graph.ts";
import { TOKEN_TYPE } from "../../core/tokenizer.ts";
import type { LlamaLayerWeights, LlamaWeights, Tensor } from "../../core/types.ts";
import { externalizeInitializers, withExportSignature } from "./onnx_external.ts";

type Json = Record<string, unknown>;

/** The files of one model in Hugging Face layout, before they are written. */
export interface HfModelFiles {
  config: Json;
  tokenizer: Json;
  tokenizerConfig: Json;
  generationConfig: Json;
  /** Weights in the `halves` rotary layout, written as the ONNX graph. */
  weights: LlamaWeights;
  /** Give the graph the inputs of newer exports: no `position_ids`, an extra `num_logits_to_keep`. */
  exportSignature?: boolean;
}

/** Write `files` into `dir` and return the paths written, relative to `dir`. */
export async function writeHfLayout(dir: string, files: HfModelFiles): Promise<string[]> {
  await mkdir(join(dir, "onnx"), { recursive: true });
  const { config } = configFromHf(files.config);
  let onnx = buildLlamaOnnx({ ...files.weights, config }, { maxPositions: config.contextLength });
  if (files.exportSignature) onnx = withExportSignature(onnx);
  const { model, data } = externalizeInitializers(onnx, "model.onnx_data");
  const written: [string, string | Uint8Array][] = [
    ["config.json", JSON.stringify(files.config, null, 2)],
    ["tokenizer.json", JSON.stringify(files.tokenizer)],
    ["tokenizer_config.json", JSON.stringify(files.tokenizerConfig, null, 2)],
    ["generation_config.json", JSON.stringify(files.generationConfig, null, 2)],
    ["onnx/model.onnx", model],
    ["onnx/model.onnx_data", data],
  ];
  for (const [path, content] of written) await writeFile(join(dir, path), content);
  return written.map(([path]) => path);
}

/** Reorder the rows of each head from rotary pairs (2i, 2i+1) to pairs (i, i + dim/2). */
export function permuteToHalves(weight: Tensor, heads: number, headDim: number): Tensor {
  const cols = weight.dims.length === 2 ? weight.dims[1] : 1;
  const out = new Float32Array(weight.data.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let t = 0; t < 2; t++) {
        const from = (h * headDim + 2 * i + t) * cols;
        const to = (h * headDim + t * half + i) * cols;
        out.set(weight.data.subarray(from, from + cols), to);
      }
    }
  }
  return { dims: weight.dims, data: out };
}

/** Convert the stories260K GGUF model into Hugging Face layout files. */
export function storiesToHf(gguf: LlamaGguf): HfModelFiles {
  const { weights } = gguf;
  const c = weights.config;
  if (c.rope.dim !== c.headDim) throw new RangeError("storiesToHf expects a fully rotated head");
  const layers: LlamaLayerWeights[] = weights.layers.map((layer) => ({
    ...layer,
    wq: permuteToHalves(layer.wq, c.nHeads, c.headDim),
    wk: permuteToHalves(layer.wk, c.nKvHeads, c.headDim),
  }));
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: c.nEmbd,
    intermediate_size: c.nFf,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    head_dim: c.headDim,
    max_position_embeddings: c.contextLength,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.rope.base,
    rope_scaling: null,
    vocab_size: c.vocabSize,
    tie_word_embeddings: false,
    bos_token_id: gguf.tokenizer.bosId,
    eos_token_id: gguf.tokenizer.eosId,
  };
  const { tokenizer, tokenizerConfig } = spmToTokenizerJson(gguf);
  return {
    config,
    tokenizer,
    tokenizerConfig,
    generationConfig: { bos_token_id: gguf.tokenizer.bosId, eos_token_id: gguf.tokenizer.eosId },
    weights: { ...weights, layers },
  };
}

/**
 * Write a SentencePiece (llama.cpp "llama") vocabulary as a byte-fallback BPE, the way
 * `transformers` converts SentencePiece models: a pair (a, b) merges when a, b and ab are all
 * pieces, ranked by the score of ab, highest first.
 */
function spmToTokenizerJson(gguf: LlamaGguf): { tokenizer: Json; tokenizerConfig: Json } {
  const data = gguf.tokenizer.data;
  const vocab: Record<string, number> = {};
  data.tokens.forEach((piece, id) => (vocab[piece] = id));
  const candidates: { pair: string; score: number; id: number }[] = [];
  data.tokens.forEach((piece, id) => {
    if (data.tokenTypes[id] !== TOKEN_TYPE.NORMAL) return;
    const chars = [...piece];
    for (let k = 1; k < chars.length; k++) {
      const left = chars.slice(0, k).join("");
      const right = chars.slice(k).join("");
      if (left in vocab && right in vocab) candidates.push({ pair: `${left} ${right}`, score: data.scores[id], id });
    }
  });
  candidates.sort((a, b) => b.score - a.score || a.id - b.id);
  const special = (id: number) => ({
    id,
    content: data.tokens[id],
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const bos = data.tokens[data.bosId];
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(data.unknownId), special(data.bosId), special(data.eosId)],
    normalizer: {
      type: "Sequence",
      normalizers: [{ type: "Prepend", prepend: "\u2581" }, { type: "Replace", pattern: { String: " " }, content: "\u2581" }],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [data.bosId], tokens: [bos] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "\u2581" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: data.tokens[data.unknownId],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: candidates.map((c) => c.pair),
    },
  };
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: bos,
    eos_token: data.tokens[data.eosId],
    unk_token: data.tokens[data.unknownId],
    legacy: true,
    model_max_length: gguf.weights.config.contextLength,
    tokenizer_class: "LlamaTokenizer",
  };
  return { tokenizer, tokenizerConfig };
}

/** Architectures the random-model writer covers. */
export type RandomArchitecture = "llama" | "qwen2" | "mistral" | "phi3";

/** Chat templates in the style of each family, small enough to read in a test. */
const CHAT_TEMPLATES: Record<RandomArchitecture, string> = {
  llama: "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}" +
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
  qwen2: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
  mistral: "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% endif %}{% endfor %}",
  phi3: "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
};

/** Special tokens of each family: [bos, eos, end-of-turn and template markers...]. */
const SPECIAL_TOKENS: Record<RandomArchitecture, string[]> = {
  llama: ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
  qwen2: ["<|endoftext|>", "<|endoftext|>", "<|im_end|>", "<|im_start|>"],
  mistral: ["<s>", "</s>", "[INST]", "[/INST]"],
  phi3: ["<s>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>"],
};

/** GPT-2's byte-to-character table, for a byte-level BPE vocabulary. */
function byteLevelChars(): string[] {
  const chars: string[] = [];
  let next = 0;
  for (let byte = 0; byte < 256; byte++) {
    const printable = (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
    chars.push(String.fromCharCode(printable ? byte : 256 + next++));
  }
  return chars;
}

/** Build a byte-level BPE tokenizer: 256 byte pieces, a few merges, then the family's special tokens. */
function byteLevelTokenizer(arch: RandomArchitecture): { tokenizer: Json; ids: Map<string, number> } {
  const vocab: Record<string, number> = {};
  byteLevelChars().forEach((char, id) => (vocab[char] = id));
  const merges = ["Ġ t", "h e", "Ġt he", "i n", "e r", "o n", "Ġ a", "r e"];
  let next = 256;
  for (const merge of merges) vocab[merge.replace(" ", "")] = next++;
  const ids = new Map<string, number>();
  const added = [];
  for (const token of new Set(SPECIAL_TOKENS[arch])) {
    ids.set(token, next);
    vocab[token] = next;
    added.push({ id: next, content: token, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
    next++;
  }
  const bos = SPECIAL_TOKENS[arch][0];
  const addsBos = arch === "llama";
  const tokenizer = {
    version: "1.0",
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: addsBos
      ? {
        type: "TemplateProcessing",
        single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
        pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
        special_tokens: { [bos]: { id: bos, ids: [ids.get(bos)], tokens: [bos] } },
      }
      : { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: true },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  return { tokenizer, ids };
}

/** Deterministic pseudo-random numbers in [-1, 1) (xorshift32). */
function makeRandom(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 31 - 1;
  };
}

/** Context length of the random models. */
export const RANDOM_CONTEXT = 256;

/**
 * Make a tiny random-weight model of `arch` in Hugging Face layout. Each family gets its
 * distinguishing features: llama3 RoPE scaling and a BOS-adding tokenizer (llama), q/k/v
 * biases (qwen2), a native sliding window of 160 tokens (mistral), longrope factors and
 * partial rotary dims (phi3). The llama and phi3 graphs take the inputs of newer exports (no
 * `position_ids`, an extra `num_logits_to_keep`).
 */
export function randomHfModel(arch: RandomArchitecture, seed = 1): HfModelFiles {
  const random = makeRandom(seed * 7 + arch.length);
  const { tokenizer, ids } = byteLevelTokenizer(arch);
  const vocabSize = ids.size + 256 + 8;
  const nEmbd = 32;
  const nHeads = 4;
  const nKvHeads = 2;
  const headDim = 8;
  const nFf = 48;
  const nLayers = 2;
  const config: Json = {
    model_type: arch,
    hidden_size: nEmbd,
    intermediate_size: nFf,
    num_hidden_layers: nLayers,
    num_attention_heads: nHeads,
    num_key_value_heads: nKvHeads,
    max_position_embeddings: RANDOM_CONTEXT,
    rms_norm_eps: 1e-5,
    rope_theta: arch === "qwen2" ? 1000000 : 10000,
    vocab_size: vocabSize,
    tie_word_embeddings: true,
  };
  if (arch === "llama") {
    config.rope_scaling = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 };
  }
  if (arch === "mistral") config.sliding_window = 160;
  if (arch === "qwen2") {
    config.sliding_window = 32;
    config.use_sliding_window = false;
  }
  if (arch === "phi3") {
    config.partial_rotary_factor = 0.5;
    config.original_max_position_embeddings = RANDOM_CONTEXT;
    config.rope_scaling = { type: "longrope", short_factor: [1, 1.5], long_factor: [4, 8] };
  }

  const tensor = (dims: number[], scale: number): Tensor => {
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = random() * scale;
    return { dims, data };
  };
  const ones = (n: number): Tensor => ({ dims: [n], data: new Float32Array(n).fill(1) });
  const layers: LlamaLayerWeights[] = [];
  for (let i = 0; i < nLayers; i++) {
    const layer: LlamaLayerWeights = {
      attnNorm: ones(nEmbd),
      wq: tensor([nHeads * headDim, nEmbd], 0.5),
      wk: tensor([nKvHeads * headDim, nEmbd], 0.5),
      wv: tensor([nKvHeads * headDim, nEmbd], 0.5),
      wo: tensor([nEmbd, nHeads * headDim], 0.3),
      ffnNorm: ones(nEmbd),
      wGate: tensor([nFf, nEmbd], 0.3),
      wUp: tensor([nFf, nEmbd], 0.3),
      wDown: tensor([nEmbd, nFf], 0.3),
    };
    if (arch === "qwen2") {
      layer.bq = tensor([nHeads * headDim], 0.2);
      layer.bk = tensor([nKvHeads * headDim], 0.2);
      layer.bv = tensor([nKvHeads * headDim], 0.2);
    }
    layers.push(layer);
  }
  const embedding = tensor([vocabSize, nEmbd], 1);
  const { config: llamaConfig } = configFromHf(config);
  const weights: LlamaWeights = { config: llamaConfig, tokenEmbedding: embedding, layers, outputNorm: ones(nEmbd), output: embedding };

  const [bos, eos, endOfTurn] = SPECIAL_TOKENS[arch];
  const tokenizerConfig: Json = {
    bos_token: arch === "qwen2" ? null : bos,
    eos_token: eos,
    chat_template: CHAT_TEMPLATES[arch],
    add_bos_token: arch === "llama" || arch === "mistral",
  };
  const eosIds = [ids.get(eos)!, ids.get(endOfTurn)!].filter((id, i, all) => all.indexOf(id) === i);
  return {
    exportSignature: arch === "llama" || arch === "phi3",
    config: { ...config, bos_token_id: ids.get(bos), eos_token_id: ids.get(eos) },
    tokenizer,
    tokenizerConfig,
    generationConfig: { bos_token_id: ids.get(bos), eos_token_id: eosIds.length === 1 ? eosIds[0] : eosIds },
    weights,
  };
}
