/**
 * Loading of a model for streaming: weights, tokenizer, chat template and the ONNX Runtime
 * session, from a GGUF file (path or hub file id) or a Hugging Face ONNX export (directory or
 * hub repository id).
 */

import { stat } from "node:fs/promises";
import { ModelError, UsageError } from "./errors.ts";
import { readHfModel, startHfRuntime } from "./hf/hf_model.ts";
import { downloadHubRepo, parseHubRepoId, type RepoDownloadOptions } from "./hf/hub_repo.ts";
import { downloadHubFile, parseHubFileId } from "./hub.ts";
import { KvKernel } from "./kv_kernel.ts";
import { loadLlamaGguf } from "./llama_gguf.ts";
import { type Backend, DecoderRuntime } from "./runtime.ts";
import { kernelPositions, resolveCacheSizes, StreamingSession, type StreamingSessionOptions } from "./session.ts";
import type { TextTokenizer } from "./text_tokenizer.ts";
import type { LlamaConfig } from "./types.ts";

/**
 * The model used when `--model` is not given: SmolLM2-135M-Instruct (Apache-2.0), a llama
 * model with a chat template and an ONNX export in its repository (`onnx/model.onnx`, float32,
 * 654 MB per the hub's file listing).
 * NOTE: chosen from documented facts (size, licence, ONNX export), not measured: the hub
 * cannot be reached from the machines this was written on.
 */
export const DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct";

/**
 * llama2.c's 260K-parameter TinyStories model as converted to GGUF by ggml-org. It only
 * continues children's stories. It is the smallest real model that exercises every part of
 * the pipeline, so the tests and the demo run it.
 */
export const STORIES_MODEL = "ggml-org/models/tinyllamas/stories260K.gguf";

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions extends RepoDownloadOptions {
  /** Positions the RoPE table must cover. @default the model's context length */
  maxPositions?: number;
  /** ONNX Runtime threads. @default 1 */
  numThreads?: number;
  /** ONNX Runtime build for GGUF models. @default "wasm" */
  backend?: Backend;
  /**
   * Tokens the cache will hold (sinks + window), for RoPE scalings that depend on it
   * (Phi-3's longrope picks its short or long factors by it).
   * @default min(1024, the model's context length), the default cache
   */
  cacheTokens?: number;
}

/** A model ready to run. */
export interface LoadedModel {
  /** Local path of the model file, or of the directory of a Hugging Face layout. */
  path: string;
  /** `gguf` for a GGUF file, `onnx` for a Hugging Face ONNX export. */
  format: "gguf" | "onnx";
  config: LlamaConfig;
  tokenizer: TextTokenizer;
  chatTemplate?: string;
  /** Token ids that end generation: every end-of-turn id the model declares. */
  stopIds: number[];
  /** Texts that end generation (`stop_strings` of `generation_config.json`), never printed. */
  stopStrings: string[];
  /** Native sliding attention window of the model. The cache never contains more tokens. */
  attentionWindow?: number;
  /** Choices made while loading (such as RoPE factors), for `models inspect` and warnings. */
  notes: string[];
  runtime: DecoderRuntime;
}

/**
 * Resolve a model argument to a local path: an existing file or directory, a hub file id
 * `org/name/path.gguf[@revision]` or a hub repository id `org/name[@revision]`, downloaded
 * into the cache.
 */
export async function resolveModelPath(spec: string, options: RepoDownloadOptions = {}): Promise<string> {
  try {
    await stat(spec);
    return spec;
  } catch {
    // Not a local path: try the hub ids below.
  }
  // Hub ids are org/name or org/name/file. A spec that starts like a path, names a model file
  // right under one folder, or starts with a folder that exists here is a missing local path.
  const segments = spec.split("/");
  const local = spec.startsWith(".") || spec.startsWith("/") || spec.startsWith("~") ||
    (segments.length === 2 && /\.(gguf|onnx)$/i.test(spec)) ||
    (segments.length > 1 && (await isDirectory(segments[0])));
  const hubRepo = local ? undefined : parseHubRepoId(spec);
  if (hubRepo) return await downloadHubRepo(hubRepo, options);
  const hubFile = local ? undefined : parseHubFileId(spec);
  if (!hubFile) {
    throw new ModelError(
      `Model file not found: ${spec}; give the path of a GGUF file or of a Hugging Face model directory, ` +
        `a hub repository id such as ${DEFAULT_MODEL}, or a hub file id such as ${STORIES_MODEL}`,
    );
  }
  return await downloadHubFile(hubFile, options);
}

/** Load a GGUF model and build its runtime. */
export async function loadModel(spec: string, options: LoadModelOptions = {}): Promise<LoadedModel> {
  const path = await resolveModelPath(spec, options);
  if ((await stat(path)).isDirectory()) return await loadHfModel(path, options);
  let loaded;
  try {
    loaded = await loadLlamaGguf(path);
  } catch (error) {
    // The loader's RangeError and TypeError messages name what is wrong with the file.
    if (error instanceof RangeError || error instanceof TypeError) {
      throw new ModelError(`Cannot load model ${path}: ${error.message}`);
    }
    throw error;
  }
  const { weights, tokenizer, chatTemplate } = loaded;
  const maxPositions = Math.max(options.maxPositions ?? 0, weights.config.contextLength);
  const runtime = await DecoderRuntime.create(weights, {
    maxPositions,
    numThreads: options.numThreads ?? 1,
    backend: options.backend,
    // The session keeps its own cache, so it needs only the new entries of each step.
    presentNewOnly: true,
  });
  return {
    path,
    format: "gguf",
    config: weights.config,
    tokenizer,
    chatTemplate,
    stopIds: [tokenizer.eosId],
    stopStrings: [],
    notes: [],
    runtime,
  };
}

/** Load a Hugging Face model directory with an ONNX decoder export. */
async function loadHfModel(dir: string, options: LoadModelOptions): Promise<LoadedModel> {
  const parts = await readHfModel(dir, { cacheTokens: options.cacheTokens, onnxFile: options.onnxFile });
  const runtime = await startHfRuntime(parts, { numThreads: options.numThreads });
  return {
    path: dir,
    format: "onnx",
    config: parts.facts.config,
    tokenizer: parts.tokenizer,
    chatTemplate: parts.chatTemplate,
    stopIds: parts.stopIds,
    stopStrings: parts.stopStrings,
    attentionWindow: parts.facts.attentionWindow,
    notes: parts.facts.notes,
    runtime,
  };
}

/** Create a streaming session over a loaded model; returns a warning for oversized caches. */
export async function createSession(
  model: LoadedModel,
  options: StreamingSessionOptions,
): Promise<{ session: StreamingSession; warning?: string }> {
  // A native sliding window bounds what the model was trained to attend to, so it bounds the cache.
  const limit = Math.min(model.config.contextLength, model.attentionWindow ?? Infinity);
  const { sizes, warning } = resolveCacheSizes(options, limit);
  if (model.attentionWindow !== undefined && sizes.sinks + sizes.window > model.attentionWindow) {
    throw new UsageError(
      `Invalid cache size: current value is ${sizes.sinks} sinks + ${sizes.window} window = ${sizes.sinks + sizes.window} tokens, ` +
        `but the model attends to at most ${model.attentionWindow} (its sliding window); use --window ${model.attentionWindow - sizes.sinks} or less`,
    );
  }
  if (sizes.sinks + sizes.window > model.runtime.maxPositions) {
    throw new UsageError(
      `The cache (${sizes.sinks + sizes.window} tokens) needs positions up to ${sizes.sinks + sizes.window - 1}, ` +
        `but the runtime was built for ${model.runtime.maxPositions}; load the model with a larger maxPositions`,
    );
  }
  const kernel = await KvKernel.create({
    layers: model.config.nLayers,
    kvHeads: model.config.nKvHeads,
    headDim: model.config.headDim,
    sinks: sizes.sinks,
    window: sizes.window,
    rope: model.config.rope,
    maxPositions: kernelPositions(model.runtime, sizes.sinks + sizes.window),
  });
  return { session: new StreamingSession(model.runtime, kernel, sizes), warning };
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}
