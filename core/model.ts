/**
 * Loading of a model for streaming: weights, tokenizer, chat template and the ONNX Runtime
 * session, from a GGUF file given by path or by hub id.
 */

import { stat } from "node:fs/promises";
import { ModelError, UsageError } from "./errors.ts";
import { type DownloadOptions, downloadHubFile, parseHubFileId } from "./hub.ts";
import { KvKernel } from "./kv_kernel.ts";
import { loadLlamaGguf } from "./llama_gguf.ts";
import { DecoderRuntime } from "./runtime.ts";
import { resolveCacheSizes, StreamingSession, type StreamingSessionOptions } from "./session.ts";
import type { Tokenizer } from "./tokenizer.ts";
import type { LlamaConfig } from "./types.ts";

/**
 * The model used when `--model` is not given: llama2.c's 260K-parameter TinyStories model as
 * converted to GGUF by ggml-org. It only continues children's stories; it is the smallest real
 * model that exercises every part of the pipeline.
 */
export const DEFAULT_MODEL = "ggml-org/models/tinyllamas/stories260K.gguf";

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions extends DownloadOptions {
  /** Positions the RoPE table must cover. @default the model's context length */
  maxPositions?: number;
  /** ONNX Runtime threads. @default 1 */
  numThreads?: number;
}

/** A model ready to run. */
export interface LoadedModel {
  /** Local path of the model file. */
  path: string;
  config: LlamaConfig;
  tokenizer: Tokenizer;
  chatTemplate?: string;
  runtime: DecoderRuntime;
}

/**
 * Resolve a model argument to a local file: an existing path, or a hub file id
 * `org/name/path.gguf[@revision]` downloaded into the cache.
 */
export async function resolveModelPath(spec: string, options: DownloadOptions = {}): Promise<string> {
  try {
    const info = await stat(spec);
    if (info.isDirectory()) {
      throw new ModelError(
        `Cannot load model ${spec}: it is a directory; sinkstream loads GGUF files for now, give the path of a .gguf file`,
      );
    }
    return spec;
  } catch (error) {
    if (error instanceof ModelError) throw error;
  }
  const hubFile = parseHubFileId(spec);
  if (!hubFile || spec.startsWith(".") || spec.startsWith("/")) {
    throw new ModelError(
      `Model file not found: ${spec}; give the path of a GGUF file or a hub file id such as ${DEFAULT_MODEL}`,
    );
  }
  return await downloadHubFile(hubFile, options);
}

/** Load a GGUF model and build its runtime. */
export async function loadModel(spec: string, options: LoadModelOptions = {}): Promise<LoadedModel> {
  const path = await resolveModelPath(spec, options);
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
  const runtime = await DecoderRuntime.create(weights, { maxPositions, numThreads: options.numThreads ?? 1 });
  return { path, config: weights.config, tokenizer, chatTemplate, runtime };
}

/** Create a streaming session over a loaded model; returns a warning for oversized caches. */
export async function createSession(
  model: LoadedModel,
  options: StreamingSessionOptions,
): Promise<{ session: StreamingSession; warning?: string }> {
  const { sizes, warning } = resolveCacheSizes(options, model.config.contextLength);
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
  });
  return { session: new StreamingSession(model.runtime, kernel, sizes), warning };
}
