import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildSinkModel, firstTokenMass } from "../bench/sink_model.ts";
import { writeLlamaGgufFile } from "../core/gguf_writer.ts";
import { type LlamaGguf, loadLlamaGguf } from "../core/llama_gguf.ts";
import { createSession, loadModel } from "../core/model.ts";
import { ReferenceModel } from "../core/reference.ts";
import { referenceDenseNll } from "../core/reference_policies.ts";
import { Sampler } from "../core/sampler.ts";
import type { LlamaWeights } from "../core/types.ts";
import { LOGS_DIR, STORIES_V1 } from "./support/stories.ts";

const SETUP_TIMEOUT_MS = 30_000;
const CLI_TIMEOUT_MS = 30_000;
const ROOT = new URL("..", import.meta.url).pathname;
const SINKS = 4;
const WINDOW = 28;
/** More than 10 times the 32-token cache. */
const STREAM_TOKENS = 400;
/** The stories model's training length. */
const TRAINING_TOKENS = 512;
/** `window` must be at least this many times worse than `sink` once BOS is evicted. */
const MIN_WINDOW_TO_SINK_RATIO = 10;
/** `sink` may be at most this many times worse than `dense` within the training length. */
const MAX_SINK_TO_DENSE_RATIO = 1.5;

let stories: LlamaGguf;
let sinkWeights: LlamaWeights;
let dormantKvHeads: number[];
let directory: string;
let modelPath: string;
/** BOS, then stories sampled from the stories model, run together without separators. */
let storyIds: number[];

/** Token ids of a real log, BOS first, tokenized as one text. */
function logIds(name: string, count: number): number[] {
  const text = readFileSync(LOGS_DIR + name, "utf8").slice(0, count * 8);
  const ids = stories.tokenizer.encode(text, { addBos: true, addSpacePrefix: true });
  if (ids.length < count) throw new Error(`Test setup: ${name} gave only ${ids.length} tokens, expected ${count}`);
  return ids.slice(0, count);
}

/**
 * Sample stories from the stories model at temperature 1 (seeds 0, 1, …), each from BOS,
 * until `count` tokens, and join them without their BOS tokens: text the model predicts well,
 * with BOS only at position 0.
 */
async function sampleStories(count: number): Promise<number[]> {
  // A model of its own, not the shared one, because it is disposed here.
  const model = await loadModel(STORIES_V1, { offline: true });
  try {
    const { bosId, eosId } = model.tokenizer;
    const { session } = await createSession(model, { sinks: 0, window: TRAINING_TOKENS, chunkSize: 1 });
    const ids = [bosId!];
    for (let seed = 0; ids.length < count; seed++) {
      const sampler = new Sampler({ temperature: 1, seed });
      const sampled = await session.generate([bosId!], { maxTokens: 300, sampler, stopIds: [eosId!] });
      ids.push(...sampled.filter((id) => id !== eosId));
    }
    return ids.slice(0, count);
  } finally {
    await model.runtime.dispose();
  }
}

beforeAll(async () => {
  stories = await loadLlamaGguf(STORIES_V1);
  storyIds = await sampleStories(TRAINING_TOKENS + 256);
  // Calibrate on the text after the scored tokens.
  const calibrationIds = [stories.tokenizer.bosId!, ...storyIds.slice(TRAINING_TOKENS + 1)];
  const built = buildSinkModel(stories.weights, { bosId: stories.tokenizer.bosId!, calibrationIds });
  sinkWeights = built.weights;
  dormantKvHeads = built.report.dormantKvHeads;
  directory = mkdtempSync(join(tmpdir(), "sinkstream-sink-model-"));
  modelPath = join(directory, "sink.gguf");
  await writeLlamaGgufFile(modelPath, sinkWeights, stories.tokenizer.data);
}, SETUP_TIMEOUT_MS);

afterAll(() => {
  if (directory !== undefined) rmSync(directory, { recursive: true, force: true });
});

/** Run `sinkstream eval --ids` on the sink model and return the perplexity of its summary. */
function evalPerplexity(ids: number[], args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const argv = ["cli/main.ts", "eval", "-m", modelPath, "--ids", "--json", "--offline", "-q", ...args];
    const child = spawn(`${ROOT}node_modules/.bin/bun`, argv, { cwd: ROOT });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`sinkstream eval ${args.join(" ")} exited with ${code}: ${stderr}`));
      const summary = JSON.parse(stdout.trim().split("\n").pop()!);
      resolve(summary.perplexity);
    });
    child.stdin.end(ids.join(" "));
  });
}

describe("sink model", () => {
  test("dormant heads attend to BOS", () => {
    // Out-of-domain text too: the sink must not depend on the calibration text.
    const mass = firstTokenMass(sinkWeights, logIds("Linux_2k.log", 128));
    const group = stories.weights.config.nHeads / stories.weights.config.nKvHeads;
    dormantKvHeads.forEach((kvHead, layer) => {
      for (let head = kvHead * group; head < (kvHead + 1) * group; head++) expect(mass[layer][head]).toBeGreaterThan(0.98);
    });
  });

  test("GGUF file loads back to the built weights", async () => {
    const loaded = (await loadLlamaGguf(modelPath)).weights;
    expect(loaded.layers[0].bq?.data).toEqual(sinkWeights.layers[0].bq?.data);
    expect(loaded.tokenEmbedding.data).toEqual(sinkWeights.tokenEmbedding.data);
    expect(loaded.output.data).toEqual(stories.weights.output.data);
  });

  test("window breaks once BOS is evicted, sink does not", async () => {
    const ids = storyIds.slice(0, STREAM_TOKENS);
    const sink = await evalPerplexity(ids, ["--policy", "sink", "--sinks", String(SINKS), "--window", String(WINDOW)]);
    const window = await evalPerplexity(ids, ["--policy", "window", "--window", String(SINKS + WINDOW)]);
    expect(Number.isFinite(sink)).toBe(true);
    expect(window).toBeGreaterThan(MIN_WINDOW_TO_SINK_RATIO * sink);
  }, CLI_TIMEOUT_MS);

  test("sink stays near dense within the training length", async () => {
    const ids = storyIds.slice(0, TRAINING_TOKENS);
    const sink = await evalPerplexity(ids, ["--policy", "sink", "--sinks", String(SINKS), "--window", String(WINDOW)]);
    const dense = await evalPerplexity(ids, ["--policy", "dense", "--max-positions", String(TRAINING_TOKENS)]);
    expect(sink).toBeLessThan(MAX_SINK_TO_DENSE_RATIO * dense);
    expect(dense).toBeLessThan(MAX_SINK_TO_DENSE_RATIO * sink);
  }, CLI_TIMEOUT_MS);

  test("dense matches the float64 reference", async () => {
    const ids = logIds("HDFS_2k.log", 64);
    const nll = referenceDenseNll(new ReferenceModel(sinkWeights), ids);
    const expected = Math.exp(nll.reduce((a, b) => a + b, 0) / nll.length);
    const dense = await evalPerplexity(ids, ["--policy", "dense", "--max-positions", "64"]);
    expect(Math.abs(Math.log(dense / expected))).toBeLessThan(1e-3);
  }, CLI_TIMEOUT_MS);
});
