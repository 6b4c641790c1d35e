/**
 * Loading of a Hugging Face model directory with an ONNX decoder export, the layout of
 * transformers.js repositories: `config.json`, `tokenizer.json`, `tokenizer_config.json`,
 * optional `generation_config.json` and `chat_template.jinja`, and `onnx/<variant>.onnx` with
 * any external data files beside it (`<variant>.onnx_data`, `<variant>.onnx_data_1`, …).
 */

import { readdir, readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { configFromHf, type HfModelFacts } from "../architectures.ts";
import { ModelError } from "../errors.ts";
import { DecoderRuntime } from "../runtime.ts";
import { HfTokenizer } from "./hf_tokenizer.ts";

type Json = Record<string, unknown>;

/**
 * ONNX variants in order of preference. The KV cache stores float32, so variants with float16
 * past key/values (`model_fp16.onnx`) are not listed.
 * NOTE: the order (float32 first, then 8-bit, then 4-bit) is not measured on any machine;
 * 8-bit weights are smaller to download, and their speed in onnxruntime-web is untested here.
 */
export const ONNX_VARIANTS = [
  "model.onnx",
  "model_quantized.onnx",
  "model_int8.onnx",
  "model_uint8.onnx",
  "model_q4.onnx",
  "model_bnb4.onnx",
] as const;

/** Files of a Hugging Face layout a model needs besides the ONNX files. */
export const HF_REQUIRED_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json"] as const;
/** Files read when present. */
export const HF_OPTIONAL_FILES = ["generation_config.json", "chat_template.jinja", "special_tokens_map.json"] as const;

/** A Hugging Face model directory read into memory, before the runtime starts. */
export interface HfModelParts {
  facts: HfModelFacts;
  tokenizer: HfTokenizer;
  chatTemplate?: string;
  /** Every end-of-turn id: `eos_token_id` of the generation and model configs, and the tokenizer's EOS. */
  stopIds: number[];
  /** `stop_strings` of `generation_config.json`. */
  stopStrings: string[];
  /** Path of the chosen ONNX file. */
  onnxPath: string;
}

/** Options of {@link readHfModel}. */
export interface ReadHfModelOptions {
  /** Tokens the cache will hold, for RoPE scalings that depend on it. */
  cacheTokens?: number;
  /** ONNX file name under `onnx/`. @default the first of {@link ONNX_VARIANTS} present */
  onnxFile?: string;
}

async function readJson(dir: string, name: string, required: boolean): Promise<Json | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, name), "utf8");
  } catch {
    if (!required) return undefined;
    throw new ModelError(`Cannot load model ${dir}: missing ${name}; a Hugging Face model directory needs ${HF_REQUIRED_FILES.join(", ")}`);
  }
  try {
    return JSON.parse(text) as Json;
  } catch (error) {
    throw new ModelError(`Cannot load model ${dir}: ${name} is not valid JSON (${(error as Error).message})`);
  }
}

/** Return the ONNX file to load from `dir/onnx`: `preferred`, or the first known variant present. */
export async function chooseOnnxFile(dir: string, preferred?: string): Promise<string> {
  let names: string[];
  try {
    names = await readdir(join(dir, "onnx"));
  } catch {
    throw new ModelError(`Cannot load model ${dir}: missing the onnx/ directory; sinkstream runs ONNX decoder exports of Hugging Face models`);
  }
  const candidates = preferred ? [preferred] : ONNX_VARIANTS;
  const found = candidates.find((name) => names.includes(name));
  if (!found) {
    const onnxNames = names.filter((n) => n.endsWith(".onnx"));
    throw new ModelError(
      `Cannot load model ${dir}: no usable ONNX file in onnx/ (found ${onnxNames.join(", ") || "none"}); ` +
        `expected one of ${candidates.join(", ")}`,
    );
  }
  return join(dir, "onnx", found);
}

function chatTemplateFrom(config: Json): string | undefined {
  const value = config.chat_template;
  if (typeof value === "string") return value;
  // Some repositories list named templates; "default" is the one `transformers` picks.
  if (Array.isArray(value)) {
    const named = value.find((t) => (t as Json)?.name === "default") as Json | undefined;
    if (typeof named?.template === "string") return named.template;
  }
  return undefined;
}

function idList(value: unknown): number[] {
  if (typeof value === "number") return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === "number");
  return [];
}

/** Read the configuration, tokenizer and chat template of a model directory. */
export async function readHfModel(dir: string, options: ReadHfModelOptions = {}): Promise<HfModelParts> {
  const config = (await readJson(dir, "config.json", true))!;
  const tokenizerJson = (await readJson(dir, "tokenizer.json", true))!;
  const tokenizerConfig = (await readJson(dir, "tokenizer_config.json", true))!;
  const generationConfig = (await readJson(dir, "generation_config.json", false)) ?? {};

  let facts: HfModelFacts;
  try {
    facts = configFromHf(config, { cacheTokens: options.cacheTokens });
  } catch (error) {
    if (error instanceof RangeError) throw new ModelError(`Cannot load model ${dir}: ${error.message}`);
    throw error;
  }
  const tokenizer = new HfTokenizer(tokenizerJson, tokenizerConfig);
  if (tokenizer.vocabSize > facts.config.vocabSize) {
    throw new ModelError(
      `Cannot load model ${dir}: tokenizer.json has ${tokenizer.vocabSize} tokens but config.json vocab_size is ${facts.config.vocabSize}`,
    );
  }

  let chatTemplate = chatTemplateFrom(tokenizerConfig);
  if (chatTemplate === undefined) {
    try {
      chatTemplate = await readFile(join(dir, "chat_template.jinja"), "utf8");
    } catch {
      // No template: prompts use the plain-text framing.
    }
  }

  const stopIds = new Set([...idList(generationConfig.eos_token_id), ...idList(config.eos_token_id)]);
  if (tokenizer.eosId !== undefined) stopIds.add(tokenizer.eosId);
  const onnxPath = await chooseOnnxFile(dir, options.onnxFile);
  const stopStrings = [generationConfig.stop_strings].flat().filter((s): s is string => typeof s === "string" && s !== "");
  return { facts, tokenizer, chatTemplate, stopIds: [...stopIds], stopStrings, onnxPath };
}

/** Options of {@link startHfRuntime}. */
export interface StartHfRuntimeOptions {
  numThreads?: number;
}

/** Read the ONNX file and its external data files, and start the decoder runtime. */
export async function startHfRuntime(parts: HfModelParts, options: StartHfRuntimeOptions = {}): Promise<DecoderRuntime> {
  const onnxDir = join(parts.onnxPath, "..");
  const name = basename(parts.onnxPath);
  const dataNames = (await readdir(onnxDir)).filter((n) => n.startsWith(`${name}_data`) || n === `${name}.data`);
  const externalData = [];
  for (const dataName of dataNames) {
    externalData.push({ path: dataName, data: new Uint8Array(await readFile(join(onnxDir, dataName))) });
  }
  const bytes = new Uint8Array(await readFile(parts.onnxPath));
  try {
    return await DecoderRuntime.fromOnnx(bytes, parts.facts.config, {
      maxPositions: parts.facts.config.contextLength,
      numThreads: options.numThreads ?? 1,
      externalData,
    });
  } catch (error) {
    throw new ModelError(`Cannot load model ${parts.onnxPath}: ${(error as Error).message}`);
  }
}
