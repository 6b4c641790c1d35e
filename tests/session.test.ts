import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { ReferenceModel } from "../core/reference.ts";
import { resolveCacheSizes } from "../core/session.ts";
import { UsageError } from "../core/errors.ts";
import { loadShared, LOGS_DIR, STORIES_V1, storiesSession } from "./support/stories.ts";
import { relativeError } from "./support/numeric.ts";

const SLOW_TEST_MS = 120_000;

const fixture = JSON.parse(
  readFileSync(new URL("./fixtures/llamacpp_stories260K.json", import.meta.url), "utf8"),
);

/** Token ids of a real log, BOS first, tokenized as the pipelines do: line by line. */
async function logTokens(name: string, count: number): Promise<number[]> {
  const model = await loadShared();
  const lines = readFileSync(LOGS_DIR + name, "utf8").replaceAll("\r\n", "\n").split(/(?<=\n)/);
  const ids: number[] = [];
  for (let i = 0; ids.length < count; i++) {
    ids.push(...model.tokenizer.encode(lines[i], { addBos: i === 0, addSpacePrefix: i === 0 }));
  }
  return ids.slice(0, count);
}

let reference: ReferenceModel | undefined;
async function referenceModel(): Promise<ReferenceModel> {
  reference ??= new ReferenceModel((await loadLlamaGguf(STORIES_V1)).weights);
  return reference;
}

describe("StreamingSession against the float64 reference", () => {
  test("runtime logits match a full reference forward", async () => {
    const ids = await logTokens("Linux_2k.log", 120);
    const expected = (await referenceModel()).forward(ids);
    const { session } = await storiesSession({ sinks: 4, window: 508, chunkSize: 120 });
    const rows: Float32Array[] = [];
    await session.ingest(ids, (_, logits) => rows.push(logits.slice()));
    expect(rows).toHaveLength(ids.length);
    for (let t = 0; t < ids.length; t++) expect(relativeError(rows[t], expected[t])).toBeLessThan(1e-4);
  }, SLOW_TEST_MS);

  for (const [sinks, window] of [[4, 60], [0, 32], [1, 1], [8, 23]]) {
    test(`per-token stream ${sinks}+${window} matches the reference at every step`, async () => {
      const capacity = sinks + window;
      const ids = await logTokens("OpenSSH_2k.log", Math.max(5 * capacity, 160));
      const stream = (await referenceModel()).createStream({ sinks, window });
      const { session } = await storiesSession({ sinks, window, chunkSize: 1 });
      let worst = 0;
      await session.ingest(ids, (t, logits) => {
        const expected = stream.step(ids[t]);
        worst = Math.max(worst, relativeError(logits, expected));
        expect(session.cacheLength).toBe(Math.min(t + 1, capacity));
      });
      expect(worst).toBeLessThan(1e-4);
      expect(session.stats.evictions).toBe(ids.length - capacity);
    }, SLOW_TEST_MS);
  }

  test("chunked prefill without eviction equals per-token", async () => {
    const ids = await logTokens("HDFS_2k.log", 200);
    const perToken = await storiesSession({ sinks: 4, window: 300, chunkSize: 1 });
    const chunked = await storiesSession({ sinks: 4, window: 300, chunkSize: 48 });
    const expected: Float32Array[] = [];
    await perToken.session.ingest(ids, (_, logits) => expected.push(logits.slice()));
    await chunked.session.ingest(ids, (t, logits) => {
      expect(relativeError(logits, expected[t])).toBeLessThan(1e-4);
    });
  }, SLOW_TEST_MS);

  test("input longer than the whole cache in one call", async () => {
    const ids = await logTokens("Apache_2k.log", 700);
    const { session } = await storiesSession({ sinks: 4, window: 60, chunkSize: 1000 });
    expect(session.sizes.chunkSize).toBe(60);
    let rows = 0;
    await session.ingest(ids, (_, logits) => {
      rows++;
      expect(Number.isFinite(logits[0])).toBe(true);
    });
    expect(rows).toBe(700);
    expect(session.cacheLength).toBeLessThanOrEqual(64);
    expect(session.stats.tokensIngested).toBe(700);
  }, SLOW_TEST_MS);
});

describe("StreamingSession.generate", () => {
  test("greedy continuation equals llama.cpp's", async () => {
    const { model, session } = await storiesSession({});
    const promptIds = model.tokenizer.encode(fixture.greedy.prompt, { addBos: true, addSpacePrefix: true });
    expect(promptIds).toEqual(fixture.greedy.promptIds);
    const ids = await session.generate(promptIds, { maxTokens: fixture.greedy.continuation.length });
    expect(ids).toEqual(fixture.greedy.continuation);
    expect(model.tokenizer.decode(ids)).toBe(fixture.greedy.continuationText);
  }, SLOW_TEST_MS);

  test("a mid-stream answer leaves later log-probabilities unchanged", async () => {
    const ids = await logTokens("Zookeeper_2k.log", 400);
    const before = ids.slice(0, 250);
    const after = ids.slice(250);
    const options = { sinks: 4, window: 100, chunkSize: 16 };

    const plain = await storiesSession(options);
    await plain.session.ingest(before);
    const expected: Float32Array[] = [];
    await plain.session.ingest(after, (_, logits) => expected.push(logits.slice()));

    const asked = await storiesSession(options);
    await asked.session.ingest(before);
    const question = asked.model.tokenizer.encode("\nQuestion: what happened?\nAnswer:", { addSpacePrefix: false });
    // Long enough to evict window tokens while answering.
    const lengthBefore = asked.session.cacheLength;
    const answer = await asked.session.generate(question, { maxTokens: 120 });
    expect(answer.length).toBeGreaterThan(0);
    expect(asked.session.cacheLength).toBe(lengthBefore);
    await asked.session.ingest(after, (t, logits) => {
      expect(relativeError(logits, expected[t])).toBe(0);
    });
    expect(asked.session.stats.evictions).toBe(plain.session.stats.evictions);
  }, SLOW_TEST_MS);
});

describe("resolveCacheSizes", () => {
  test("defaults follow the paper within the context length", () => {
    expect(resolveCacheSizes({}, 512).sizes).toEqual({ sinks: 4, window: 508, chunkSize: 32 });
    expect(resolveCacheSizes({}, 4096).sizes).toEqual({ sinks: 4, window: 1020, chunkSize: 32 });
  });

  test("window below 1 is rejected", () => {
    expect(() => resolveCacheSizes({ window: 0 }, 512)).toThrow(
      new UsageError("Invalid window size: current value is 0; use a whole number ≥ 1 so the token in hand fits (--window)"),
    );
  });

  test("fractional sizes are rejected", () => {
    expect(() => resolveCacheSizes({ sinks: 1.5 }, 512)).toThrow("Invalid sink count: current value is 1.5");
    expect(() => resolveCacheSizes({ window: 2.5 }, 512)).toThrow("Invalid window size: current value is 2.5");
  });

  test("a cache beyond the context length warns", () => {
    const { warning } = resolveCacheSizes({ sinks: 4, window: 600 }, 512);
    expect(warning).toContain("exceeds the model's context length 512");
  });
});
