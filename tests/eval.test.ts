import { afterAll, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { type LoadedModel, loadModel } from "../core/model.ts";
import { createPolicy, negativeLogLikelihood, type PolicySizes, type TokenScore } from "../core/policies.ts";
import { ReferenceModel } from "../core/reference.ts";
import { referenceDenseNll, referenceRecomputeNll, referenceSinkWindowNll } from "../core/reference_policies.ts";
import { parseIdStream, piecesOf, runEval } from "../pipelines/eval.ts";
import { LOGS_DIR, STORIES_V1 } from "./support/stories.ts";

const SLOW_TEST_MS = 120_000;
const CLI_TIMEOUT_MS = 120_000;
/** Largest NLL difference, in nats, allowed between the runtime and the float64 reference. */
const NLL_TOLERANCE = 1e-3;
/** Stream length of the exactness tests: more than 10 times the 32-token caches. */
const STREAM_TOKENS = 400;
/** Dense runs past the 512-token training length, so the RoPE table needs these rows. */
const DENSE_TOKENS = 600;

const ROOT = new URL("..", import.meta.url).pathname;

let model: LoadedModel | undefined;
let reference: ReferenceModel | undefined;

/** Load the stories model once, with a RoPE table long enough for the dense run. */
async function storiesModel(): Promise<LoadedModel> {
  model ??= await loadModel(STORIES_V1, { offline: true, maxPositions: DENSE_TOKENS });
  return model;
}

async function referenceModel(): Promise<ReferenceModel> {
  reference ??= new ReferenceModel((await loadLlamaGguf(STORIES_V1)).weights);
  return reference;
}

afterAll(async () => {
  await model?.runtime.dispose();
});

/** Token ids of a real log, BOS first, tokenized as one text. */
async function logTokens(name: string, count: number): Promise<number[]> {
  const { tokenizer } = await storiesModel();
  const text = readFileSync(LOGS_DIR + name, "utf8").slice(0, count * 8);
  const ids = tokenizer.encode(text, { addBos: true, addSpacePrefix: true });
  if (ids.length < count) throw new Error(`Test setup: ${name} gave only ${ids.length} tokens, expected ${count}`);
  return ids.slice(0, count);
}

/** Score `ids` with a policy, pushing them in the given piece sizes (cycled). */
async function policyScores(sizes: PolicySizes, ids: number[], pieceSizes = [ids.length]): Promise<TokenScore[]> {
  const { runtime } = await storiesModel();
  const policy = await createPolicy(runtime, sizes);
  const scores: TokenScore[] = [];
  try {
    for (let start = 0, piece = 0; start < ids.length; piece++) {
      const size = pieceSizes[piece % pieceSizes.length];
      await policy.push(ids.slice(start, start + size), (score) => scores.push(score));
      start += size;
    }
    await policy.finish((score) => scores.push(score));
  } finally {
    policy.dispose();
  }
  return scores;
}

/** Check indices and tokens, and return the largest NLL difference from the reference. */
function worstDifference(scores: TokenScore[], ids: number[], expected: number[]): number {
  expect(scores).toHaveLength(ids.length - 1);
  expect(expected).toHaveLength(ids.length - 1);
  let worst = 0;
  for (let i = 0; i < scores.length; i++) {
    expect(scores[i].index).toBe(i + 1);
    expect(scores[i].token).toBe(ids[i + 1]);
    worst = Math.max(worst, Math.abs(scores[i].nll - expected[i]));
  }
  return worst;
}

function sizesOf(policy: PolicySizes["policy"], sinks: number, window: number, chunkSize = 1): PolicySizes {
  return { policy, sinks, window, chunkSize, maxPositions: DENSE_TOKENS };
}

describe("negativeLogLikelihood", () => {
  test("matches log-softmax of a small row", () => {
    const logits = new Float32Array([1, 2, 3]);
    const expected = Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)) - 2;
    expect(negativeLogLikelihood(logits, 1)).toBeCloseTo(expected, 12);
  });

  test("stays finite for large logits", () => {
    expect(negativeLogLikelihood(new Float32Array([1000, 1000]), 0)).toBeCloseTo(Math.LN2, 12);
  });
});

describe("cache policies against the float64 reference", () => {
  test("sink 4+28 per token over 400 tokens", async () => {
    const ids = await logTokens("Linux_2k.log", STREAM_TOKENS);
    const scores = await policyScores(sizesOf("sink", 4, 28), ids);
    const expected = referenceSinkWindowNll(await referenceModel(), ids, 4, 28);
    expect(worstDifference(scores, ids, expected)).toBeLessThan(NLL_TOLERANCE);
  }, SLOW_TEST_MS);

  test("window 32 per token over 400 tokens", async () => {
    const ids = await logTokens("OpenSSH_2k.log", STREAM_TOKENS);
    const scores = await policyScores(sizesOf("window", 0, 32), ids);
    const expected = referenceSinkWindowNll(await referenceModel(), ids, 0, 32);
    expect(worstDifference(scores, ids, expected)).toBeLessThan(NLL_TOLERANCE);
  }, SLOW_TEST_MS);

  test("window and sink scores differ once sinks are evicted", async () => {
    const ids = await logTokens("Linux_2k.log", 100);
    const sink = await policyScores(sizesOf("sink", 4, 28), ids);
    const window = await policyScores(sizesOf("window", 0, 32), ids);
    // Up to token 32 both caches hold the same tokens at the same positions.
    for (let i = 0; i < 31; i++) expect(Math.abs(sink[i].nll - window[i].nll)).toBeLessThan(NLL_TOLERANCE);
    const later = sink.slice(40).map((score, i) => Math.abs(score.nll - window[40 + i].nll));
    expect(Math.max(...later)).toBeGreaterThan(0.01);
  }, SLOW_TEST_MS);

  test("dense per token over 600 tokens, past the training length", async () => {
    const ids = await logTokens("HDFS_2k.log", DENSE_TOKENS);
    const scores = await policyScores(sizesOf("dense", 0, 0), ids);
    const expected = referenceDenseNll(await referenceModel(), ids);
    expect(worstDifference(scores, ids, expected)).toBeLessThan(NLL_TOLERANCE);
  }, SLOW_TEST_MS);

  test("dense in chunks of 32 stays exact", async () => {
    const ids = await logTokens("HDFS_2k.log", DENSE_TOKENS);
    const scores = await policyScores(sizesOf("dense", 0, 0, 32), ids, [50, 7]);
    const expected = referenceDenseNll(await referenceModel(), ids);
    expect(worstDifference(scores, ids, expected)).toBeLessThan(NLL_TOLERANCE);
  }, SLOW_TEST_MS);

  test("recompute window 32 per token over 400 tokens", async () => {
    const ids = await logTokens("Apache_2k.log", STREAM_TOKENS);
    const scores = await policyScores(sizesOf("recompute", 0, 32), ids, [33, 1, 90]);
    const expected = referenceRecomputeNll(await referenceModel(), ids, 32);
    expect(worstDifference(scores, ids, expected)).toBeLessThan(NLL_TOLERANCE);
  }, SLOW_TEST_MS);

  test("recompute window 32 in chunks of 8 matches the strided reference", async () => {
    const ids = await logTokens("Apache_2k.log", 203);
    const scores = await policyScores(sizesOf("recompute", 0, 32, 8), ids, [5]);
    const expected = referenceRecomputeNll(await referenceModel(), ids, 32, 8);
    expect(worstDifference(scores, ids, expected)).toBeLessThan(NLL_TOLERANCE);
  }, SLOW_TEST_MS);
});

describe("cache policies in chunks", () => {
  test("sink scores do not depend on push piece sizes", async () => {
    const ids = await logTokens("Zookeeper_2k.log", 300);
    const whole = await policyScores(sizesOf("sink", 4, 28, 8), ids);
    const pieces = await policyScores(sizesOf("sink", 4, 28, 8), ids, [3, 17, 1, 64]);
    expect(pieces).toEqual(whole);
  }, SLOW_TEST_MS);

  test("sink chunk 8 differs from per-token only in the chunk's early tokens", async () => {
    const ids = await logTokens("Zookeeper_2k.log", 300);
    const exact = await policyScores(sizesOf("sink", 4, 28, 1), ids);
    const chunked = await policyScores(sizesOf("sink", 4, 28, 8), ids);
    // Before the first eviction (the cache fills at 32 tokens) both runs see the same cache.
    for (let i = 0; i < 31; i++) expect(Math.abs(chunked[i].nll - exact[i].nll)).toBeLessThan(NLL_TOLERANCE);
    const later = chunked.slice(40).map((score, i) => Math.abs(score.nll - exact[40 + i].nll));
    expect(Math.max(...later)).toBeGreaterThan(1e-3);
  }, SLOW_TEST_MS);

  test("dense rejects tokens past its position limit", async () => {
    const { runtime } = await storiesModel();
    const policy = await createPolicy(runtime, { ...sizesOf("dense", 0, 0), maxPositions: 4 });
    try {
      await policy.push([1, 2, 3, 4], () => {});
      expect(policy.full).toBe(true);
      await expect(policy.push([5], () => {})).rejects.toThrow(
        "Cannot push more tokens to the dense policy: current stream length is 4, the limit set by maxPositions; " +
          "raise maxPositions or check full before pushing",
      );
    } finally {
      policy.dispose();
    }
  });

  test("createPolicy rejects a cache larger than the RoPE table", async () => {
    const { runtime } = await storiesModel();
    await expect(createPolicy(runtime, sizesOf("sink", 4, 1000))).rejects.toThrow(
      "Cannot run the sink policy: it needs positions up to 1003, but the runtime was built for 600; " +
        "load the model with maxPositions ≥ 1004",
    );
  });
});

describe("runEval", () => {
  test("dense stops at maxPositions and says so", async () => {
    const { runtime } = await storiesModel();
    const ids = await logTokens("Linux_2k.log", 100);
    const summary = await runEval(runtime, { ...sizesOf("dense", 0, 0, 4), maxPositions: 50 }, piecesOf(ids));
    expect(summary.streamTokens).toBe(50);
    expect(summary.scoredTokens).toBe(49);
    expect(summary.peakCacheTokens).toBe(50);
    expect(summary.stoppedEarly).toContain("stopped at 50 tokens");
  });

  test("summary perplexity is exp of the mean score", async () => {
    const { runtime } = await storiesModel();
    const ids = await logTokens("Android_2k.log", 120);
    const scores: TokenScore[] = [];
    const summary = await runEval(runtime, sizesOf("sink", 2, 30, 4), piecesOf(ids), {
      onScores: (batch) => void scores.push(...batch),
    });
    const mean = scores.reduce((sum, score) => sum + score.nll, 0) / scores.length;
    expect(scores).toHaveLength(119);
    expect(summary.scoredTokens).toBe(119);
    expect(summary.meanNll).toBeCloseTo(mean, 10);
    expect(summary.perplexity).toBeCloseTo(Math.exp(mean), 8);
    expect(summary.peakCacheTokens).toBe(32);
  });
});

describe("parseIdStream", () => {
  async function* bytes(...parts: string[]): AsyncGenerator<Uint8Array> {
    for (const part of parts) yield new TextEncoder().encode(part);
  }

  async function collect(parts: string[], vocab = 512): Promise<number[]> {
    const ids: number[] = [];
    for await (const piece of parseIdStream(bytes(...parts), vocab)) ids.push(...piece);
    return ids;
  }

  test("joins a number split across chunks", async () => {
    expect(await collect(["1 40", "3\n\t7  ", "", "9"])).toEqual([1, 403, 7, 9]);
  });

  test("rejects an id outside the vocabulary", async () => {
    await expect(collect(["1 2 512 3"])).rejects.toThrow(
      'Invalid token id at index 2: current value is "512"; --ids expects whitespace-separated whole numbers below the vocabulary size 512',
    );
  });

  test("rejects a word that is not a number", async () => {
    await expect(collect(["1 -2"])).rejects.toThrow('Invalid token id at index 1: current value is "-2"');
  });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(runtime: "bun" | "deno", args: string[], input: string): Promise<Run> {
  const command = runtime === "bun"
    ? [`${ROOT}node_modules/.bin/bun`, "cli/main.ts"]
    : [`${ROOT}node_modules/.bin/deno`, "run", "-A", "cli/main.ts"];
  const child = spawn(command[0], [...command.slice(1), ...args], { cwd: ROOT });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => (stdout += chunk));
  child.stderr.on("data", (chunk) => (stderr += chunk));
  child.stdin.on("error", () => {});
  child.stdin.end(input);
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

describe("sinkstream eval", () => {
  test("bun: --ids --json matches the reference per token", async () => {
    const ids = await logTokens("Linux_2k.log", 120);
    const run = await runCli("bun", [
      "eval", "--model", STORIES_V1, "--ids", "--json", "--policy", "sink", "--sinks", "4", "--window", "28",
    ], ids.join(" ") + "\n");
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    const records = run.stdout.trim().split("\n").map((line) => JSON.parse(line));
    expect(records).toHaveLength(ids.length);

    const expected = referenceSinkWindowNll(await referenceModel(), ids, 4, 28);
    for (let i = 0; i < ids.length - 1; i++) {
      expect(Object.keys(records[i])).toEqual(["i", "token", "nll"]);
      expect(records[i].i).toBe(i + 1);
      expect(records[i].token).toBe(ids[i + 1]);
      expect(Math.abs(records[i].nll - expected[i])).toBeLessThan(NLL_TOLERANCE);
    }

    const summary = records[ids.length - 1];
    const mean = expected.reduce((sum, nll) => sum + nll, 0) / expected.length;
    expect(summary.type).toBe("summary");
    expect(summary.tokens).toBe(ids.length - 1);
    expect(summary.peak_cache_tokens).toBe(32);
    expect(Math.abs(Math.log(summary.perplexity) - mean)).toBeLessThan(NLL_TOLERANCE);
    expect(summary.tokens_per_s).toBeGreaterThan(0);
  }, CLI_TIMEOUT_MS);

  test("deno: text input with the recompute policy", async () => {
    const text = "Once upon a time, there was a little girl named Lily. She loved to play in the park.";
    const run = await runCli("deno", ["eval", "--model", STORIES_V1, "--policy", "recompute", "--window", "8"], text);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^policy recompute, cache 8, chunk 1: \d+ tokens scored, perplexity \d+\.\d{4} /);

    const { tokenizer } = await storiesModel();
    const ids = tokenizer.encode(text, { addBos: true, addSpacePrefix: true });
    const expected = referenceRecomputeNll(await referenceModel(), ids, 8);
    const perplexity = Math.exp(expected.reduce((sum, nll) => sum + nll, 0) / expected.length);
    expect(run.stdout).toContain(`${ids.length - 1} tokens scored, perplexity ${perplexity.toFixed(4)} `);
  }, CLI_TIMEOUT_MS);

  test("rejects --sinks with the window policy", async () => {
    const run = await runCli("bun", ["eval", "--model", STORIES_V1, "--policy", "window", "--sinks", "4"], "1 2 3");
    expect(run.code).toBe(2);
    expect(run.stderr).toBe(
      "sinkstream: Invalid option --sinks for --policy window: current value is 4; only --policy sink keeps sink tokens\n",
    );
  }, CLI_TIMEOUT_MS);

  test("rejects input of one token", async () => {
    const run = await runCli("bun", ["eval", "--model", STORIES_V1, "--ids"], "1\n");
    expect(run.code).toBe(4);
    expect(run.stderr).toContain("Cannot score the input: current length is 1 tokens");
  }, CLI_TIMEOUT_MS);
});
