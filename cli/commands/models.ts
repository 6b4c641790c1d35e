/** `sinkstream models list | pull ID | inspect MODEL`: the model cache and what a model is. */

import process from "node:process";
import type { Command } from "commander";
import { defaultCacheDir } from "../../core/hub.ts";
import { ModelError } from "../../core/errors.ts";
import { describeModel, listCachedModels, type ModelDescription } from "../../core/model_info.ts";
import { DEFAULT_MODEL, resolveModelPath } from "../../core/model.ts";
import { writeStderr, writeStdout } from "../io.ts";

interface ModelsOptions {
  json?: boolean;
  offline?: boolean;
  quiet?: boolean;
  onnxFile?: string;
}

function mebibytes(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** Draw download progress on stderr when it is a terminal. */
function progressPrinter(options: ModelsOptions) {
  let lastDraw = 0;
  return (progress: { file: string; receivedBytes: number; totalBytes?: number }) => {
    if (options.quiet || !process.stderr.isTTY) return;
    const now = performance.now();
    const done = progress.receivedBytes === progress.totalBytes;
    if (now - lastDraw < 200 && !done) return;
    lastDraw = now;
    const total = progress.totalBytes ? ` of ${mebibytes(progress.totalBytes)}` : "";
    writeStderr(`\r\x1b[Kdownloading ${progress.file}: ${mebibytes(progress.receivedBytes)}${total}`);
    if (done) writeStderr("\n");
  };
}

/** Add the `models` command group to the program. */
export function registerModels(program: Command): void {
  const models = program.command("models").description("list, download and inspect models");

  models
    .command("list")
    .description("list the models in the cache ($SINKSTREAM_CACHE or the user cache directory) with their sizes")
    .option("--json", "write one NDJSON record per model")
    .action(async (options: ModelsOptions) => {
      const cacheDir = defaultCacheDir();
      const cached = await listCachedModels(cacheDir);
      if (options.json) {
        for (const model of cached) await writeStdout(JSON.stringify({ type: "model", ...model }) + "\n");
        return;
      }
      if (cached.length === 0) {
        await writeStdout(`no models in ${cacheDir}; download one with: sinkstream models pull ${DEFAULT_MODEL}\n`);
        return;
      }
      for (const model of cached) {
        const state = model.complete ? "" : "  (incomplete: run models pull again to resume)";
        await writeStdout(`${model.id.padEnd(60)} ${mebibytes(model.bytes).padStart(11)}${state}\n`);
      }
    });

  models
    .command("pull")
    .description("download a hub repository org/name[@revision] or a hub file org/name/file.gguf[@revision] into the cache")
    .argument("<id>", "hub repository or file id")
    .option("--onnx-file <name>", "ONNX file under onnx/ to download (default: the first of model.onnx, model_quantized.onnx, …)")
    .option("-q, --quiet", "print no progress on standard error")
    .action(async (id: string, options: ModelsOptions) => {
      const path = await resolveModelPath(id, { onnxFile: options.onnxFile, onProgress: progressPrinter(options) });
      await writeStdout(`${path}\n`);
    });

  models
    .command("inspect")
    .description("print a model's architecture, sizes, context length, RoPE settings and whether sink streaming applies")
    .argument("<model>", "GGUF file, Hugging Face model directory, or hub id")
    .option("--json", "write one JSON record")
    .option("--offline", "never download; use only local files and the cache")
    .action(async (spec: string, options: ModelsOptions) => {
      const path = await resolveModelPath(spec, { offline: options.offline, onProgress: progressPrinter(options) });
      let description: ModelDescription;
      try {
        description = await describeModel(path);
      } catch (error) {
        // The GGUF parser's RangeError and TypeError messages name what is wrong with the file.
        if (error instanceof RangeError || error instanceof TypeError) {
          throw new ModelError(`Cannot inspect model ${path}: ${error.message}`);
        }
        throw error;
      }
      if (options.json) {
        const { config, ...rest } = description;
        const rope = config ? { ...config.rope, invFreq: Array.from(config.rope.invFreq) } : undefined;
        await writeStdout(JSON.stringify({ type: "model", ...rest, config: config && { ...config, rope } }) + "\n");
      } else {
        await writeStdout(formatDescription(description));
      }
    });
}

function formatDescription(d: ModelDescription): string {
  const lines = [`model:          ${d.path}`, `format:         ${d.format}${d.onnxFile ? ` (${d.onnxFile})` : ""}`];
  lines.push(`architecture:   ${d.architecture}`, `size:           ${mebibytes(d.bytes)}`);
  if (d.tensorTypes) {
    lines.push(`tensor types:   ${Object.entries(d.tensorTypes).map(([type, count]) => `${type} ×${count}`).join(", ")}`);
  }
  const c = d.config;
  if (c) {
    lines.push(
      `layers:         ${c.nLayers}`,
      `embedding:      ${c.nEmbd}`,
      `heads:          ${c.nHeads} query, ${c.nKvHeads} key/value, ${c.headDim} dims each`,
      `feed-forward:   ${c.nFf}`,
      `vocabulary:     ${c.vocabSize}`,
      `context length: ${c.contextLength}`,
      `rope:           ${c.rope.dim} dims, base ${c.rope.base}, ${c.rope.layout} pairs, scaling ${d.ropeScaling}`,
    );
  }
  if (d.attentionWindow) lines.push(`sliding window: ${d.attentionWindow}`);
  lines.push(`chat template:  ${d.chatTemplate ? "yes" : "no"}`);
  lines.push(`sink streaming: ${d.sinkStreaming ? "yes" : "no"}`);
  for (const reason of d.reasons) lines.push(`  - ${reason}`);
  return lines.join("\n") + "\n";
}
