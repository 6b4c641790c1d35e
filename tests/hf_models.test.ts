/**
 * Hugging Face ONNX layouts end to end. The stories model converted to that layout must give
 * the same tokens and greedy output as its GGUF file. Tiny random models of every
 * architecture in the table must stream, summarize and score through the same pipelines.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as ort from "onnxruntime-web";
import { ARCHITECTURES } from "../core/architectures.ts";
import { HfTokenizer } from "../core/hf/hf_tokenizer.ts";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { createSession, type LoadedModel, loadModel } from "../core/model.ts";
import { describeModel } from "../core/model_info.ts";
import { ReferenceModel } from "../core/reference.ts";
import { Sampler } from "../core/sampler.ts";
import { runAnswerStream } from "../pipelines/answer_stream.ts";
import { piecesOf, runEval } from "../pipelines/eval.ts";
import { runGenerate } from "../pipelines/generate.ts";
import { randomHfModel, type RandomArchitecture, storiesToHf, writeHfLayout } from "./support/hf_layout.ts";
import { loadShared, LOGS_DIR, STORIES_V1 } from "./support/stories.ts";

const SLOW_TEST_MS = 60_000;
const ARCHS: RandomArchitecture[] = ["llama", "qwen2", "mistral", "phi3"];

let root: string;
let storiesDir: string;
const models = new Map<string, LoadedModel>();

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sinkstream-hf-"));
  storiesDir = join(root, "stories");
  await writeHfLayout(storiesDir, storiesToHf(await loadLlamaGguf(STORIES_V1)));
  models.set("stories", await loadModel(storiesDir, { offline: true }));
  for (const arch of ARCHS) {
    const dir = join(root, arch);
    await writeHfLayout(dir, randomHfModel(arch));
    models.set(arch, await loadModel(dir, { offline: true }));
  }
}, SLOW_TEST_MS);

afterAll(async () => {
  for (const model of models.values()) await model.runtime.dispose();
  await rm(root, { recursive: true, force: true });
});

async function logLines(name: string, count: number): Promise<string[]> {
  const text = (await readFile(LOGS_DIR + name, "utf8")).replaceAll("\r\n", "\n");
  return text.split(/(?<=\n)/).slice(0, count);
}

async function* asAsync(lines: string[]): AsyncIterable<string> {
  for (const line of lines) yield line;
}

describe("stories in Hugging Face layout", () => {
  test("loads as an ONNX export", () => {
    const model = models.get("stories")!;
    expect(model.format).toBe("onnx");
    expect(model.config.rope.layout).toBe("halves");
    expect(model.stopIds).toEqual([2]);
  });

  test("tokenizes like the GGUF tokenizer", async () => {
    const gguf = await loadShared(STORIES_V1);
    const hf = models.get("stories")!;
    const lines = await logLines("OpenSSH_2k.log", 40);
    const texts = ["Once upon a time, there was a little girl named Lily.", "héllo wörld 😀", ...lines];
    for (const [i, text] of texts.entries()) {
      const options = { addBos: i === 0, addSpacePrefix: i < 3 };
      expect(hf.tokenizer.encode(text, options)).toEqual(gguf.tokenizer.encode(text, options));
    }
  });

  test("greedy generation matches the GGUF model", async () => {
    const results = [];
    for (const model of [await loadShared(STORIES_V1), models.get("stories")!]) {
      const { session } = await createSession(model, { sinks: 4, window: 60, chunkSize: 16 });
      results.push(await runGenerate(model, session, { prompt: "Once upon a time", maxTokens: 80, sampler: new Sampler(), onText: () => {} }));
    }
    expect(results[0].ids.length).toBeGreaterThan(64);
    expect(results[1].ids).toEqual(results[0].ids);
    expect(results[1].text).toBe(results[0].text);
  }, SLOW_TEST_MS);
});

describe("HfTokenizer", () => {
  test("reads special tokens only when asked", () => {
    const tokenizer = models.get("qwen2")!.tokenizer as HfTokenizer;
    const endOfTurn = tokenizer.idOf("<|im_end|>")!;
    expect(tokenizer.encode("a<|im_end|>b", { parseSpecial: true })).toEqual([97, endOfTurn, 98]);
    const plain = tokenizer.encode("a<|im_end|>b");
    expect(plain).not.toContain(endOfTurn);
    expect(tokenizer.decode(plain)).toBe("a<|im_end|>b");
  });

  test("adds BOS only where the post-processor does", () => {
    const llama = models.get("llama")!.tokenizer;
    expect(llama.encode("hi", { addBos: true })[0]).toBe(llama.bosId!);
    expect(llama.encode("hi", { addBos: false })[0]).not.toBe(llama.bosId!);
    const qwen2 = models.get("qwen2")!.tokenizer;
    expect(qwen2.bosId).toBeUndefined();
    expect(qwen2.encode("hi", { addBos: true })).toEqual(qwen2.encode("hi", { addBos: false }));
  });

  test("prints no bytes for special tokens", () => {
    const tokenizer = models.get("phi3")!.tokenizer as HfTokenizer;
    expect(tokenizer.tokenBytes(tokenizer.idOf("<|end|>")!)).toHaveLength(0);
    expect(new TextDecoder().decode(tokenizer.tokenBytes(tokenizer.idOf("Ġthe")!))).toBe(" the");
  });
});

describe("stopping generation", () => {
  async function generate(model: LoadedModel) {
    const { session } = await createSession(model, { sinks: 4, window: 120 });
    const pieces: string[] = [];
    const result = await runGenerate(model, session, {
      prompt: "Once upon a time",
      maxTokens: 60,
      sampler: new Sampler(),
      onText: (piece) => pieces.push(piece),
    });
    return { ...result, printed: pieces.join("") };
  }

  test("stops on any end-of-turn id", async () => {
    const model = models.get("stories")!;
    const baseline = await generate(model);
    const stopAt = baseline.ids.findIndex((id, i) => i >= 5 && baseline.ids.indexOf(id) === i);
    const stopped = await generate({ ...model, stopIds: [...model.stopIds, baseline.ids[stopAt]] });
    expect(stopped.ids).toEqual(baseline.ids.slice(0, stopAt));
  }, SLOW_TEST_MS);

  test("stops on a stop string without printing any of it", async () => {
    const model = models.get("stories")!;
    const baseline = await generate(model);
    const words = baseline.text.split(" ").filter((w) => w.length >= 4);
    const stop = ` ${words[3]}`;
    const cut = baseline.text.indexOf(stop);
    expect(cut).toBeGreaterThan(0);
    const stopped = await generate({ ...model, stopStrings: [stop] });
    expect(stopped.text).toBe(baseline.text.slice(0, cut));
    expect(stopped.printed).toBe(stopped.text);
    expect(stopped.ids.length).toBeLessThan(baseline.ids.length);
  }, SLOW_TEST_MS);
});

describe("random models per architecture", () => {
  test("cover every architecture in the table", () => {
    expect([...ARCHS].sort()).toEqual(Object.keys(ARCHITECTURES).sort());
  });

  for (const arch of ARCHS) {
    test(`${arch} streams like the float64 reference with eviction`, async () => {
      const model = models.get(arch)!;
      const files = randomHfModel(arch);
      const reference = new ReferenceModel({ ...files.weights, config: model.config });
      const stream = reference.createStream({ sinks: 2, window: 14 });
      const { session } = await createSession(model, { sinks: 2, window: 14, chunkSize: 1 });
      const lines = await logLines("Linux_2k.log", 6);
      const ids = model.tokenizer.encode(lines.join(""), { addBos: true }).slice(0, 60);
      let worst = 0;
      await session.ingest(ids, (t, logits) => {
        const expected = stream.step(ids[t]);
        let difference = 0;
        let scale = 0;
        for (let i = 0; i < expected.length; i++) {
          difference = Math.max(difference, Math.abs(logits[i] - expected[i]));
          scale = Math.max(scale, Math.abs(expected[i]));
        }
        worst = Math.max(worst, difference / scale);
      });
      expect(session.stats.evictions).toBeGreaterThan(0);
      expect(worst).toBeLessThan(1e-4);
    }, SLOW_TEST_MS);

    test(`${arch} scores a log with eval`, async () => {
      const model = models.get(arch)!;
      const ids = model.tokenizer.encode((await logLines("Apache_2k.log", 8)).join(""), { addBos: true }).slice(0, 80);
      const sizes = { policy: "sink" as const, sinks: 2, window: 20, chunkSize: 8, maxPositions: model.config.contextLength };
      const summary = await runEval(model.runtime, sizes, piecesOf(ids));
      expect(summary.scoredTokens).toBe(ids.length - 1);
      expect(Number.isFinite(summary.perplexity)).toBe(true);
      expect(summary.perplexity).toBeGreaterThan(1);
    }, SLOW_TEST_MS);

    test(`${arch} summarizes a log with its chat template`, async () => {
      const model = models.get(arch)!;
      expect(model.chatTemplate).toBeDefined();
      const { session } = await createSession(model, { sinks: 4, window: 140 });
      const answers = await runAnswerStream(model, session, asAsync(await logLines("HDFS_2k.log", 20)), {
        request: { kind: "summary" },
        maxTokens: 6,
        sampler: new Sampler(),
      });
      expect(answers).toHaveLength(1);
      expect(answers[0].final).toBe(true);
      expect(session.stats.tokensGenerated).toBeGreaterThan(0);
    }, SLOW_TEST_MS);
  }

  test("mistral caps the cache at its sliding window", async () => {
    const model = models.get("mistral")!;
    expect(model.attentionWindow).toBe(160);
    const { session } = await createSession(model, { sinks: 4 });
    expect(session.capacity).toBe(160);
    await expect(createSession(model, { sinks: 4, window: 200 })).rejects.toThrow(
      "the model attends to at most 160 (its sliding window); use --window 156 or less",
    );
  });

  test("summarize rejects a window the request cannot fit in", async () => {
    const model = models.get("qwen2")!;
    const { session } = await createSession(model, { sinks: 4, window: 40 });
    const lines = asAsync(await logLines("HDFS_2k.log", 5));
    await expect(runAnswerStream(model, session, lines, { request: { kind: "summary" }, maxTokens: 6, sampler: new Sampler() }))
      .rejects.toThrow("The request does not fit in the window");
  });

  test("llama export has no position_ids input", async () => {
    const onnxDir = join(root, "llama", "onnx");
    const session = await ort.InferenceSession.create(new Uint8Array(await readFile(join(onnxDir, "model.onnx"))), {
      externalData: [{ path: "model.onnx_data", data: new Uint8Array(await readFile(join(onnxDir, "model.onnx_data"))) }],
    });
    try {
      expect(session.inputNames).not.toContain("position_ids");
      expect(session.inputNames).toContain("num_logits_to_keep");
    } finally {
      await session.release();
    }
  });

  test("describeModel reports per-architecture facts", async () => {
    const llama = await describeModel(join(root, "llama"));
    expect(llama.ropeScaling).toBe("llama3");
    expect(llama.sinkStreaming).toBe(true);
    const mistral = await describeModel(join(root, "mistral"));
    expect(mistral.attentionWindow).toBe(160);
    expect(mistral.reasons).toContain("the cache is capped at the model's sliding window of 160 tokens");
    const phi3 = await describeModel(join(root, "phi3"));
    expect(phi3.ropeScaling).toBe("longrope");
    expect(phi3.reasons.join("\n")).toContain("using the short factors");
  });

  test("qwen2 ignores a disabled sliding window", () => {
    expect(models.get("qwen2")!.attentionWindow).toBeUndefined();
  });

  test("phi3 reports its longrope factor choice", () => {
    const model = models.get("phi3")!;
    expect(model.config.rope.dim).toBe(4);
    expect(model.notes.join("\n")).toContain("using the short factors");
    expect(model.config.rope.invFreq[1]).toBeCloseTo(Math.pow(10000, -0.5) / 1.5, 12);
  });

  test("end-of-turn ids come from the generation config", () => {
    const phi3 = models.get("phi3")!;
    expect(phi3.tokenizer).toBeInstanceOf(HfTokenizer);
    const endOfTurn = (phi3.tokenizer as HfTokenizer).idOf("<|end|>");
    expect(phi3.stopIds).toContain(endOfTurn!);
    expect(phi3.stopIds).toContain(phi3.tokenizer.eosId!);
  });
});
