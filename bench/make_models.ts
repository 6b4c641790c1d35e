/**
 * Write random-weight GGUF models with the exact shapes of real small models, for
 * benchmarks that need realistic sizes but no downloads.
 *
 * Usage: npx bun bench/make_models.ts [--out DIR] [--only NAME] [--force]
 *
 * Weights come from a seeded PRNG, so every run writes the same bytes: matrices and biases
 * are normal(0, 0.02) and norm weights are 1, which keeps activations finite. The vocabulary
 * is a synthetic SentencePiece-style one of the model's exact size, so the tokenizer works on
 * real text. These models produce meaningless text; they measure speed and memory only.
 */

import { mkdir, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { type GgufTensorType, llamaGgufSpec, type LlamaWeightSources, type TensorLike, writeGgufFile } from "../core/gguf_writer.ts";
import { planGguf } from "../core/gguf_writer.ts";
import { TOKEN_TYPE, type TokenizerData } from "../core/tokenizer.ts";
import type { LlamaConfig } from "../core/types.ts";
import { ropeInvFreq } from "../core/types.ts";

/** Shape of one benchmark model. */
export interface BenchModelShape {
  /** File name stem, e.g. `smollm2-135m`; the tensor type is appended. */
  name: string;
  /** Name of the real model whose shapes this copies, written as `general.name`. */
  realName: string;
  nEmbd: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  nFf: number;
  vocabSize: number;
  ropeBase: number;
  contextLength: number;
  rmsNormEps: number;
  /** Whether Q, K and V have biases (Qwen2 does). */
  qkvBias: boolean;
}

/**
 * Shapes of the benchmark models, from the `config.json` of HuggingFaceTB/SmolLM2-135M and
 * Qwen/Qwen2.5-0.5B. Both tie the output projection to the token embedding.
 */
export const BENCH_MODELS: readonly BenchModelShape[] = [
  {
    name: "smollm2-135m",
    realName: "SmolLM2-135M (random weights)",
    nEmbd: 576,
    nLayers: 30,
    nHeads: 9,
    nKvHeads: 3,
    nFf: 1536,
    vocabSize: 49152,
    ropeBase: 100000,
    contextLength: 8192,
    rmsNormEps: 1e-5,
    qkvBias: false,
  },
  {
    name: "qwen2.5-0.5b",
    realName: "Qwen2.5-0.5B (random weights)",
    nEmbd: 896,
    nLayers: 24,
    nHeads: 14,
    nKvHeads: 2,
    nFf: 4864,
    vocabSize: 151936,
    ropeBase: 1000000,
    contextLength: 32768,
    rmsNormEps: 1e-6,
    qkvBias: true,
  },
];

const TENSOR_TYPES: readonly GgufTensorType[] = ["F32", "F16", "Q4_0"];
const WEIGHT_STD = 0.02;
const MODEL_SEED = 0x5eed;
/** Values generated per chunk of a streamed tensor. */
const CHUNK_ELEMENTS = 1 << 20;

// ---------------------------------------------------------------------------------------
// Seeded random numbers
// ---------------------------------------------------------------------------------------

/** Hash a string to 32 bits (FNV-1a), to give each tensor its own PRNG stream. */
function hashString(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  return hash >>> 0;
}

/** xoshiro128** generator of uniform 32-bit integers, seeded through splitmix32. */
export class Xoshiro128 {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    let state = seed >>> 0;
    const splitmix = () => {
      state = (state + 0x9e3779b9) | 0;
      let z = state;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = splitmix();
    this.s1 = splitmix();
    this.s2 = splitmix();
    this.s3 = splitmix();
  }

  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Fill `out` with normal(0, std) samples (Box-Muller). */
  fillNormal(out: Float32Array, std: number): void {
    for (let i = 0; i < out.length; i += 2) {
      // (n + 1) / 2^32 lies in (0, 1], so the logarithm is finite.
      const u1 = (this.nextUint32() + 1) / 4294967296;
      const u2 = this.nextUint32() / 4294967296;
      const radius = std * Math.sqrt(-2 * Math.log(u1));
      out[i] = radius * Math.cos(2 * Math.PI * u2);
      if (i + 1 < out.length) out[i + 1] = radius * Math.sin(2 * Math.PI * u2);
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ---------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------

/** Describe a tensor of normal(0, std) values, generated chunk by chunk from a seed and its name. */
function randomTensor(name: string, dims: number[], seed: number, std = WEIGHT_STD): TensorLike {
  const count = dims.reduce((a, b) => a * b, 1);
  return {
    dims,
    data: function* () {
      const rng = new Xoshiro128(seed ^ hashString(name));
      for (let start = 0; start < count; start += CHUNK_ELEMENTS) {
        const chunk = new Float32Array(Math.min(CHUNK_ELEMENTS, count - start));
        rng.fillNormal(chunk, std);
        yield chunk;
      }
    },
  };
}

function onesTensor(size: number): TensorLike {
  return { dims: [size], data: new Float32Array(size).fill(1) };
}

/** Build the config of a benchmark model; rotary pairs are adjacent, as in every llama GGUF. */
export function benchModelConfig(shape: BenchModelShape): LlamaConfig {
  const headDim = shape.nEmbd / shape.nHeads;
  return {
    architecture: "llama",
    nLayers: shape.nLayers,
    nEmbd: shape.nEmbd,
    nHeads: shape.nHeads,
    nKvHeads: shape.nKvHeads,
    headDim,
    nFf: shape.nFf,
    vocabSize: shape.vocabSize,
    contextLength: shape.contextLength,
    rmsNormEps: shape.rmsNormEps,
    rope: { dim: headDim, base: shape.ropeBase, layout: "adjacent", invFreq: ropeInvFreq(headDim, shape.ropeBase) },
  };
}

/** Describe the random weights of a model; no data is generated until a writer reads it. */
export function benchModelWeights(shape: BenchModelShape, seed = MODEL_SEED): LlamaWeightSources {
  const config = benchModelConfig(shape);
  const { nEmbd, nFf, headDim } = config;
  const qDim = config.nHeads * headDim;
  const kvDim = config.nKvHeads * headDim;
  const layers = Array.from({ length: config.nLayers }, (_, i) => {
    const p = `blk.${i}.`;
    const random = (name: string, dims: number[]) => randomTensor(p + name, dims, seed);
    return {
      attnNorm: onesTensor(nEmbd),
      wq: random("attn_q.weight", [qDim, nEmbd]),
      wk: random("attn_k.weight", [kvDim, nEmbd]),
      wv: random("attn_v.weight", [kvDim, nEmbd]),
      wo: random("attn_output.weight", [nEmbd, qDim]),
      ...(shape.qkvBias
        ? { bq: random("attn_q.bias", [qDim]), bk: random("attn_k.bias", [kvDim]), bv: random("attn_v.bias", [kvDim]) }
        : {}),
      ffnNorm: onesTensor(nEmbd),
      wGate: random("ffn_gate.weight", [nFf, nEmbd]),
      wUp: random("ffn_up.weight", [nFf, nEmbd]),
      wDown: random("ffn_down.weight", [nEmbd, nFf]),
    };
  });
  const tokenEmbedding = randomTensor("token_embd.weight", [config.vocabSize, nEmbd], seed);
  return { config, tokenEmbedding, layers, outputNorm: onesTensor(nEmbd), output: tokenEmbedding };
}

// ---------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------

const SPACE = "\u2581";

/** Common English and log words; every prefix of each becomes a piece too, so SPM merges can reach it. */
const WORDS = (
  "the of and to in is was for that on with as by at it from be this are an or not have had " +
  "but his her they she he we you one all there their which when were would what been has more " +
  "will if out so up about into than them can only other new some could time these two may then " +
  "do first any my now such like our over man me even most made after also did many before must " +
  "through back years where much your way well down should because each just those people how too " +
  "little state good very make world still own see men work long get here between both life being " +
  "under never day same another know while last might us great old year off come since against go " +
  "came right used take three once upon girl boy named Lily Tom happy play said saw big friend " +
  "The A In It He She They This There Once One When What If We You I " +
  "error warning info debug notice critical fatal failed failure success successful started stopped " +
  "starting stopping connection connected disconnected closed open opened session user root system " +
  "service server client request response timeout retry exception kernel process thread memory disk " +
  "network interface address port host node block packet received sent receive send read write file " +
  "directory path config configuration status code message login logout authentication password " +
  "invalid denied accepted allowed unknown message queue job task worker scheduler manager instance " +
  "Error Warning Info Debug INFO WARN ERROR DEBUG FATAL Failed Connection Received Starting Stopping " +
  "sshd kernel daemon cron systemd http https GET POST HTTP null true false id ms sec min"
).split(" ");

/** Lowercase letters from most to least frequent in English text. */
const LETTERS_BY_FREQUENCY = "etaoinshrdlcumwfgypbvkjxqz";

/** List all lowercase n-grams of length `n`, the ones of more frequent letters first. */
function letterNgrams(n: number): string[] {
  const rank = new Map([...LETTERS_BY_FREQUENCY].map((letter, i) => [letter, i]));
  let grams = [""];
  for (let k = 0; k < n; k++) grams = grams.flatMap((gram) => [...LETTERS_BY_FREQUENCY].map((letter) => gram + letter));
  const cost = (gram: string) => [...gram].reduce((sum, letter) => sum + rank.get(letter)!, 0);
  return grams.map((gram) => [gram, cost(gram)] as const).sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1)).map(([gram]) => gram);
}

/**
 * Build a SentencePiece-style (`tokenizer.ggml.model = "llama"`) vocabulary of exactly
 * `size` pieces. It starts with `<unk>`, `<s>`, `</s>` and the 256 `<0xXX>` byte pieces. Then
 * come `▁`, the printable ASCII characters, and common words with all their prefixes, plain
 * and `▁`-prefixed. Lowercase letter n-grams up to length 4 fill the rest. Normal pieces get
 * descending scores, so earlier pieces merge first.
 */
export function syntheticVocabulary(size: number): TokenizerData {
  const specials = ["<unk>", "<s>", "</s>"];
  const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  const minimum = specials.length + bytes.length + 1;
  if (!Number.isInteger(size) || size < minimum) {
    throw new RangeError(`Failed to build the vocabulary: current size is ${size}, expected an integer of at least ${minimum}`);
  }

  const pieces = new Set<string>();
  const target = size - specials.length - bytes.length;
  const addPiece = (piece: string) => {
    if (pieces.size < target) pieces.add(piece);
  };
  addPiece(SPACE);
  for (let code = 33; code < 127; code++) addPiece(String.fromCharCode(code));
  for (const word of WORDS) {
    for (let length = 1; length <= word.length; length++) {
      addPiece(SPACE + word.slice(0, length));
      addPiece(word.slice(0, length));
    }
  }
  for (let n = 2; n <= 4 && pieces.size < target; n++) {
    for (const gram of letterNgrams(n - 1)) addPiece(SPACE + gram);
    for (const gram of letterNgrams(n)) addPiece(gram);
  }
  if (pieces.size < target) {
    throw new RangeError(`Failed to build the vocabulary: current size ${size} is above the ${pieces.size + minimum - 1} pieces it can make`);
  }

  const tokens = [...specials, ...bytes, ...pieces];
  const scores = new Float32Array(size);
  const tokenTypes = new Uint8Array(size).fill(TOKEN_TYPE.NORMAL);
  tokenTypes[0] = TOKEN_TYPE.UNKNOWN;
  tokenTypes[1] = TOKEN_TYPE.CONTROL;
  tokenTypes[2] = TOKEN_TYPE.CONTROL;
  tokenTypes.fill(TOKEN_TYPE.BYTE, 3, 3 + 256);
  for (let id = 3 + 256; id < size; id++) scores[id] = -(id - 3 - 256);
  return {
    model: "llama",
    tokens,
    scores,
    tokenTypes,
    bosId: 1,
    eosId: 2,
    unknownId: 0,
    addBos: true,
    addEos: false,
    addSpacePrefix: true,
  };
}

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

interface Options {
  outDir: string;
  only?: string;
  force: boolean;
}

const USAGE = "Usage: bun bench/make_models.ts [--out DIR] [--only NAME] [--force]";

function defaultOutDir(): string {
  const cache = process.env.SINKSTREAM_CACHE;
  return cache ? join(cache, "bench-models") : join(homedir(), ".cache", "sinkstream", "bench-models");
}

function parseArgs(args: string[]): Options {
  const options: Options = { outDir: defaultOutDir(), force: false };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--force") {
      options.force = true;
    } else if ((arg === "--out" || arg === "--only") && i + 1 < args.length) {
      if (arg === "--out") options.outDir = args[++i];
      else options.only = args[++i];
    } else {
      throw new Error(`Invalid argument ${JSON.stringify(arg)}: ${arg.startsWith("--") ? "missing value or unknown option" : "unexpected"}. ${USAGE}`);
    }
  }
  return options;
}

/** Name every model file that `--only` selects: a model name (both types) or one file stem. */
function selectModels(only: string | undefined): { shape: BenchModelShape; type: GgufTensorType; stem: string }[] {
  const all = BENCH_MODELS.flatMap((shape) =>
    TENSOR_TYPES.map((type) => ({ shape, type, stem: `${shape.name}-${type.toLowerCase()}` }))
  );
  if (only === undefined) return all;
  const selected = all.filter(({ shape, stem }) => only === shape.name || only === stem);
  if (selected.length === 0) {
    const names = [...BENCH_MODELS.map((m) => m.name), ...all.map((m) => m.stem)];
    throw new Error(`Invalid --only ${JSON.stringify(only)}: expected one of ${names.join(", ")}`);
  }
  return selected;
}

async function existingSize(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch {
    return undefined;
  }
}

function formatMiB(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  await mkdir(options.outDir, { recursive: true });
  const vocabularies = new Map<number, TokenizerData>();

  for (const { shape, type, stem } of selectModels(options.only)) {
    const path = join(options.outDir, `${stem}.gguf`);
    let tokenizer = vocabularies.get(shape.vocabSize);
    if (tokenizer === undefined) {
      tokenizer = syntheticVocabulary(shape.vocabSize);
      vocabularies.set(shape.vocabSize, tokenizer);
    }
    const spec = llamaGgufSpec(benchModelWeights(shape), tokenizer, { tensorType: type, name: shape.realName });
    const expectedSize = planGguf(spec).fileSize;

    // NOTE: only the size is compared, so a file from an older generator of the same shapes is kept.
    if (!options.force && (await existingSize(path)) === expectedSize) {
      console.log(`${stem}: kept ${path} (${formatMiB(expectedSize)})`);
      continue;
    }
    const started = performance.now();
    await writeGgufFile(path, spec);
    const seconds = (performance.now() - started) / 1000;
    console.log(`${stem}: wrote ${path} (${formatMiB(expectedSize)}) in ${seconds.toFixed(1)} s`);
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(`make_models: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  }
}
