/**
 * Descriptions of models for `sinkstream models`: what a GGUF file or a Hugging Face layout
 * contains and whether sink streaming applies, read without starting ONNX Runtime. Also the
 * listing of the models in the cache.
 */

import { readdir, readFile, stat } from "node:fs/promises";
import { join, relative } from "node:path";
import { ARCHITECTURES, configFromHf, REJECTED_ARCHITECTURES } from "./architectures.ts";
import { GGML_TYPE_NAMES, getMetadata, parseGguf } from "./gguf.ts";
import { chooseOnnxFile } from "./hf/hf_model.ts";
import { REPO_MARKER } from "./hf/hub_repo.ts";
import { readLlamaConfig } from "./llama_gguf.ts";
import type { LlamaConfig } from "./types.ts";

/** Report of `models inspect`. */
export interface ModelDescription {
  path: string;
  format: "gguf" | "onnx";
  architecture: string;
  /** Total bytes of the files the model loads. */
  bytes: number;
  config?: LlamaConfig;
  /** RoPE scaling type the model declares (`llama3`, `longrope`, …), or "none". */
  ropeScaling: string;
  /** Count of tensors per ggml type, for GGUF files. */
  tensorTypes?: Record<string, number>;
  onnxFile?: string;
  chatTemplate: boolean;
  attentionWindow?: number;
  /** Whether the sink-and-window cache applies to this model. */
  sinkStreaming: boolean;
  /** Reasons sink streaming does not apply, or notes on how it applies. */
  reasons: string[];
}

async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    total += entry.isDirectory() ? await directoryBytes(path) : (await stat(path)).size;
  }
  return total;
}

/** Describe a local model file or directory. */
export async function describeModel(path: string): Promise<ModelDescription> {
  if ((await stat(path)).isDirectory()) return await describeHfDirectory(path);
  const file = parseGguf(new Uint8Array(await readFile(path)));
  const architecture = String(getMetadata(file, "general.architecture"));
  const tensorTypes: Record<string, number> = {};
  for (const info of file.tensors.values()) {
    const name = GGML_TYPE_NAMES[info.type] ?? `type ${info.type}`;
    tensorTypes[name] = (tensorTypes[name] ?? 0) + 1;
  }
  const description: ModelDescription = {
    path,
    format: "gguf",
    architecture,
    bytes: file.bytes.byteLength,
    ropeScaling: String(getMetadata(file, "llama.rope.scaling.type") ?? (file.tensors.has("rope_freqs.weight") ? "rope_freqs.weight" : "none")),
    tensorTypes,
    chatTemplate: typeof getMetadata(file, "tokenizer.chat_template") === "string",
    sinkStreaming: false,
    reasons: [],
  };
  if (architecture !== "llama") {
    description.reasons.push(`GGUF architecture ${architecture} is not loaded by sinkstream (only llama GGUF files are)`);
    return description;
  }
  try {
    const tokens = getMetadata(file, "tokenizer.ggml.tokens");
    description.config = readLlamaConfig(file, Array.isArray(tokens) ? tokens.length : 0);
    description.sinkStreaming = true;
    description.reasons.push("rotary position embeddings: cached keys are re-rotated when the window moves");
  } catch (error) {
    description.reasons.push((error as Error).message);
  }
  return description;
}

async function describeHfDirectory(dir: string): Promise<ModelDescription> {
  const hf = JSON.parse(await readFile(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  let tokenizerConfig: Record<string, unknown> = {};
  try {
    tokenizerConfig = JSON.parse(await readFile(join(dir, "tokenizer_config.json"), "utf8"));
  } catch {
    // Reported below as no chat template.
  }
  const architecture = String(hf.model_type);
  const description: ModelDescription = {
    path: dir,
    format: "onnx",
    architecture,
    bytes: await directoryBytes(dir),
    ropeScaling: String((hf.rope_scaling as Record<string, unknown> | null)?.rope_type ?? (hf.rope_scaling as Record<string, unknown> | null)?.type ?? "none"),
    chatTemplate: tokenizerConfig.chat_template !== undefined,
    sinkStreaming: false,
    reasons: [],
  };
  try {
    description.onnxFile = relative(dir, await chooseOnnxFile(dir));
  } catch (error) {
    description.reasons.push((error as Error).message);
  }
  if (REJECTED_ARCHITECTURES[architecture]) {
    description.reasons.push(`${architecture} uses ${REJECTED_ARCHITECTURES[architecture]}`);
    return description;
  }
  if (!ARCHITECTURES[architecture]) {
    description.reasons.push(`architecture ${architecture} is not in sinkstream's table (${Object.keys(ARCHITECTURES).join(", ")})`);
    return description;
  }
  try {
    const facts = configFromHf(hf);
    description.config = facts.config;
    description.attentionWindow = facts.attentionWindow;
    description.sinkStreaming = description.onnxFile !== undefined;
    description.reasons.push("rotary position embeddings: cached keys are re-rotated when the window moves", ...facts.notes);
    if (facts.attentionWindow) description.reasons.push(`the cache is capped at the model's sliding window of ${facts.attentionWindow} tokens`);
  } catch (error) {
    description.reasons.push((error as Error).message);
  }
  return description;
}

/** One model in the cache. */
export interface CachedModel {
  /** Id to pass to `--model`. */
  id: string;
  path: string;
  bytes: number;
  /** False for a repository whose download has not finished. */
  complete: boolean;
}

/** List the hub repositories and GGUF files in the cache directory. */
export async function listCachedModels(cacheDir: string): Promise<CachedModel[]> {
  const hubDir = join(cacheDir, "hub");
  const models: CachedModel[] = [];
  const entries = async (dir: string) => {
    try {
      return (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name).sort();
    } catch {
      return [];
    }
  };
  for (const org of await entries(hubDir)) {
    for (const name of await entries(join(hubDir, org))) {
      for (const revision of await entries(join(hubDir, org, name))) {
        const dir = join(hubDir, org, name, revision);
        const suffix = revision === "main" ? "" : `@${revision}`;
        const files = await filesUnder(dir);
        const ggufs = files.filter((f) => f.endsWith(".gguf"));
        if (files.includes(REPO_MARKER) || files.includes("config.json")) {
          models.push({ id: `${org}/${name}${suffix}`, path: dir, bytes: await directoryBytes(dir), complete: files.includes(REPO_MARKER) });
        }
        for (const gguf of ggufs) {
          const path = join(dir, gguf);
          models.push({ id: `${org}/${name}/${gguf}${suffix}`, path, bytes: (await stat(path)).size, complete: true });
        }
      }
    }
  }
  return models;
}

async function filesUnder(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(join(dir, prefix), { withFileTypes: true })) {
    const path = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await filesUnder(dir, path)));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}
