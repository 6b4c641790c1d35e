import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { GgufMetadataBuilder, writeGguf } from "../core/gguf_writer.ts";
import { readLines } from "../core/text_lines.ts";
import { encodeStreamLine } from "../pipelines/answer_stream.ts";
import { LineScorer, nllOf, TopPercentFilter } from "../pipelines/score.ts";
import { logLines, records, ROOT, runCli, RUNTIMES, startCli, waitFor } from "./support/cli.ts";
import { LOGS_DIR, STORIES_V1, STORIES_V3, storiesSession } from "./support/stories.ts";

const CLI_TIMEOUT_MS = 120_000;
const LOG = "OpenSSH_2k.log";
let scratch: string;

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "sinkstream-score-"));
});

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

describe("nllOf", () => {
  test("matches log-softmax", () => {
    const logits = new Float32Array([1, 2, 3, -1]);
    const total = [1, 2, 3, -1].reduce((sum, x) => sum + Math.exp(x), 0);
    expect(nllOf(logits, 2)).toBeCloseTo(-Math.log(Math.exp(3) / total), 12);
    expect(nllOf(logits, 3)).toBeCloseTo(-Math.log(Math.exp(-1) / total), 12);
  });
});

describe("LineScorer", () => {
  test("matches one full forward pass", async () => {
    const lines = logLines(LOG, 0, 3).split(/(?<=\n)/);
    const { model, session } = await storiesSession({ sinks: 4, window: 400, chunkSize: 16 });
    const scorer = new LineScorer(model, session);
    const scores = [];
    for (const line of lines) scores.push(await scorer.addLine(line));

    // The same tokens in one pass without a cache: logits of token t predict token t + 1.
    const ids = lines.flatMap((line, i) => encodeStreamLine(model.tokenizer, line, i === 0));
    expect(ids.length).toBeLessThan(400);
    const empty = Array.from({ length: model.config.nLayers }, () => ({ key: new Float32Array(0), value: new Float32Array(0) }));
    const { logits } = await model.runtime.run({ inputIds: ids, positionIds: ids.map((_, t) => t), past: empty, pastLength: 0 });
    const vocab = model.config.vocabSize;
    const nll = (t: number) => nllOf(logits.subarray((t - 1) * vocab, t * vocab), ids[t]);

    let t = 1; // ids[0] is BOS
    for (const [i, score] of scores.entries()) {
      const count = encodeStreamLine(model.tokenizer, lines[i], i === 0).length - (i === 0 ? 1 : 0);
      expect(score.line).toBe(i + 1);
      expect(score.tokens).toBe(count);
      const expected = Array.from({ length: count }, (_, k) => nll(t + k));
      expect(score.meanNll!).toBeCloseTo(expected.reduce((a, b) => a + b, 0) / count, 3);
      expect(score.maxNll!).toBeCloseTo(Math.max(...expected), 3);
      t += count;
    }
  }, CLI_TIMEOUT_MS);

  test("piece of a long line keeps its number", async () => {
    const { model, session } = await storiesSession({ sinks: 4, window: 100 });
    const scorer = new LineScorer(model, session);
    expect((await scorer.addLine("first part ")).line).toBe(1);
    expect((await scorer.addLine("rest\n")).line).toBe(1);
    expect((await scorer.addLine("next\n")).line).toBe(2);
    expect(scorer.lines).toBe(2);
  }, CLI_TIMEOUT_MS);
});

describe("TopPercentFilter", () => {
  test("matches rank among scores so far", () => {
    const filter = new TopPercentFilter(10);
    const seen: number[] = [];
    let state = 12345;
    for (let i = 0; i < 500; i++) {
      state = (state * 1103515245 + 12345) % 2 ** 31;
      // Distinct bins: multiples of 0.02 nats.
      const score = (state % 1000) * 0.02 + 0.005;
      seen.push(score);
      const above = seen.filter((other) => Math.floor(other / 0.01) > Math.floor(score / 0.01)).length;
      expect(filter.accept(score)).toBe(above < Math.ceil(0.1 * seen.length));
    }
  });

  test("rejects invalid percentages", () => {
    expect(() => new TopPercentFilter(0)).toThrow("Invalid top percentage: current value is 0");
    expect(() => new TopPercentFilter(101)).toThrow("Invalid top percentage: current value is 101");
  });
});

describe("readLines bad input", () => {
  async function* bytes(...chunks: Uint8Array[]) {
    yield* chunks;
  }

  test("megabyte line split into bounded pieces", async () => {
    const line = new TextEncoder().encode("x".repeat(3_000_000) + "\nnext\n");
    const pieces: string[] = [];
    for await (const piece of readLines(bytes(line.subarray(0, 1_000_001), line.subarray(1_000_001)))) pieces.push(piece);
    expect(pieces.length).toBe(Math.ceil(3_000_000 / 65536) + 1);
    expect(Math.max(...pieces.map((piece) => piece.length))).toBeLessThanOrEqual(65537);
    expect(pieces.at(-1)).toBe("next\n");
  });

  test("tokenization time grows linearly", async () => {
    const { model } = await storiesSession({ sinks: 4, window: 100 });
    const text = logLines(LOG, 0, 2000);
    // CPU time of this process, so that other processes taking the CPU do not count.
    const time = (chars: number) => {
      const started = process.cpuUsage();
      model.tokenizer.encode(text.slice(0, chars), { addBos: false, addSpacePrefix: false });
      const used = process.cpuUsage(started);
      return used.user + used.system;
    };
    time(16384); // warm-up
    // The fastest of five runs filters out pauses of the collector.
    const fastest = (chars: number) => Math.min(...Array.from({ length: 5 }, () => time(chars)));
    const small = fastest(16384);
    const large = fastest(131072);
    // 8 times the text: linear (or n log n) costs about 8-10 times as much, quadratic 64 times.
    expect(large / small).toBeLessThan(40);
  }, CLI_TIMEOUT_MS);
});

describe("score command", () => {
  for (const runtime of ["bun", "deno"]) {
    test(`${runtime} reads a redirected file from its offset`, () => {
      // A shell that reads the header line first hands over the rest of the file, as with cat.
      const path = join(scratch, `offset-${runtime}.log`);
      writeFileSync(path, logLines(LOG, 0, 3));
      const command = [...RUNTIMES[runtime], "score", "--model", STORIES_V1, "--json", "--quiet"]
        .map((word) => `'${word}'`)
        .join(" ");
      const run = spawnSync("sh", ["-c", `{ read -r header; ${command}; } < '${path}'`], { cwd: ROOT, encoding: "utf8" });
      expect(run.status).toBe(0);
      const texts = records(run.stdout).filter((record) => record.type === "line").map((record) => record.text);
      expect(texts).toEqual(logLines(LOG, 1, 3).split("\n").slice(0, 2));
    }, CLI_TIMEOUT_MS);
  }

  for (const [runtime, model] of [["bun", STORIES_V1], ["deno", STORIES_V3]]) {
    test(`${runtime} scores real log lines`, async () => {
      const run = await runCli(runtime, ["score", "--model", model, "--json", "--window", "124"], logLines("Linux_2k.log", 0, 8));
      expect(run.code).toBe(0);
      const all = records(run.stdout);
      const lines = all.filter((record) => record.type === "line");
      expect(lines.map((record) => record.line)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      const expectedText = logLines("Linux_2k.log", 0, 8).split("\n").slice(0, 8);
      expect(lines.map((record) => record.text)).toEqual(expectedText);
      for (const record of lines) {
        expect(record.tokens as number).toBeGreaterThan(0);
        expect(record.mean_nll as number).toBeGreaterThan(0);
        expect(record.max_nll as number).toBeGreaterThanOrEqual(record.mean_nll as number);
      }
      expect(all.at(-1)).toMatchObject({ type: "stats", lines: 8, dropped: 0 });
      expect(run.stderr).toBe("");
    }, CLI_TIMEOUT_MS);
  }

  test("threshold and top filter", async () => {
    const input = logLines("Apache_2k.log", 0, 20);
    const base = ["score", "--model", STORIES_V1, "--json", "--quiet", "--window", "124"];
    const all = records((await runCli("bun", base, input)).stdout).filter((record) => record.type === "line");
    const means = all.map((record) => record.mean_nll as number);
    const threshold = [...means].sort((a, b) => a - b)[10];
    const above = records((await runCli("bun", [...base, "--threshold", String(threshold)], input)).stdout)
      .filter((record) => record.type === "line");
    expect(above).toEqual(all.filter((record) => (record.mean_nll as number) > threshold));
    expect(above.length).toBe(9);

    const top = records((await runCli("bun", [...base, "--top", "20"], input)).stdout).filter((record) => record.type === "line");
    const filter = new TopPercentFilter(20);
    expect(top).toEqual(all.filter((record) => filter.accept(record.mean_nll as number)));
    expect(top.length).toBeLessThan(all.length);
  }, CLI_TIMEOUT_MS);

  test("plain output has scores and the line", async () => {
    const run = await runCli("bun", ["score", "--model", STORIES_V1, "--quiet"], logLines(LOG, 0, 2));
    expect(run.code).toBe(0);
    const rows = run.stdout.trimEnd().split("\n");
    expect(rows).toHaveLength(2);
    expect(rows[1]).toMatch(/^\d+\.\d{3}\t\d+\.\d{3}\tDec 10 06:55:46 LabSZ sshd\[24200\]: Invalid user webmaster/);
  }, CLI_TIMEOUT_MS);
});

describe("bad input", () => {
  test("invalid UTF-8 and binary bytes", async () => {
    const input = new Uint8Array([
      ...new TextEncoder().encode("ok line\n"),
      0xff, 0xfe, 0x41, 0x0a, // invalid bytes, then "A"
      0x00, 0x01, 0x02, 0x1b, 0x42, 0x0a, // NUL and control bytes, then "B"
      0xe2, 0x82, // truncated multibyte sequence at the end
    ]);
    const run = await runCli("bun", ["score", "--model", STORIES_V1, "--json", "--quiet"], input);
    expect(run.code).toBe(0);
    const lines = records(run.stdout).filter((record) => record.type === "line");
    expect(lines.map((record) => record.text)).toEqual(["ok line", "\uFFFD\uFFFDA", "\u0000\u0001\u0002\u001bB", "\uFFFD"]);
    expect(run.stderr).toBe("");
  }, CLI_TIMEOUT_MS);

  test("empty input prints only stats", async () => {
    const run = await runCli("bun", ["score", "--model", STORIES_V1, "--json", "--quiet"], "");
    expect(run.code).toBe(0);
    expect(records(run.stdout)).toEqual([expect.objectContaining({ type: "stats", lines: 0 })]);
  }, CLI_TIMEOUT_MS);

  test("model errors are one line", async () => {
    const gpt2 = join(scratch, "gpt2.gguf");
    writeFileSync(gpt2, writeGguf({ metadata: new GgufMetadataBuilder().string("general.architecture", "gpt2").entries(), tensors: [] }));
    const cases: [string, string, RegExp][] = [
      ["missing", "/nonexistent/model.gguf", /^sinkstream: Model file not found: \/nonexistent\/model.gguf; /],
      ["not a model", `${LOGS_DIR}Linux_2k.log`, /^sinkstream: Cannot load model .*Linux_2k.log: Failed to parse GGUF: not a GGUF file/],
      ["unsupported architecture", gpt2, /^sinkstream: Cannot load model .*gpt2.gguf: .*"gpt2"/],
    ];
    for (const [, model, message] of cases) {
      for (const command of ["score", "watch"]) {
        const run = await runCli("bun", [command, "--model", model], "a line\n");
        expect(run.code).toBe(3);
        expect(run.stderr).toMatch(message);
        expect(run.stderr.trim().split("\n")).toHaveLength(1);
        expect(run.stdout).toBe("");
      }
    }
  }, CLI_TIMEOUT_MS);

  test("invalid options exit 2", async () => {
    const run = await runCli("bun", ["score", "--model", STORIES_V1, "--top", "0"], "");
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/^sinkstream: Invalid top percentage: current value is "0"; use a number above 0 and at most 100/);
  }, CLI_TIMEOUT_MS);
});

describe("closed standard output", () => {
  for (const runtime of Object.keys(RUNTIMES)) {
    for (const command of ["score", "watch"]) {
      test(`${runtime} ${command} ends quietly after head -1`, async () => {
        const args = command === "score"
          ? ["score", "--model", STORIES_V1]
          : ["watch", "--model", STORIES_V1, "--every", "1", "--max-tokens", "2", "--json"];
        const cli = startCli(runtime, args);
        // Standard input stays open, as under `tail -F log | sinkstream … | head -1`.
        cli.child.stdin.write(logLines(LOG, 0, 40));
        await waitFor(() => cli.stdout().includes("\n"), CLI_TIMEOUT_MS / 2, "the first output line");
        cli.child.stdout.destroy();
        const run = await cli.done;
        expect(run.code).toBe(0);
        expect(run.stderr).not.toContain("error");
        expect(run.stderr).not.toContain("    at ");
      }, CLI_TIMEOUT_MS);
    }
  }

  test("shell pipeline to head -1", async () => {
    const { spawnSync } = await import("node:child_process");
    const bun = RUNTIMES.bun[0];
    const script = `head -c 20000 ${LOGS_DIR}${LOG} | ${bun} cli/main.ts score --model ${STORIES_V1} | head -1; echo "status \${PIPESTATUS[1]}"`;
    const result = spawnSync("bash", ["-c", script], { cwd: new URL("..", import.meta.url).pathname, encoding: "utf8" });
    const [first, status] = result.stdout.trim().split("\n");
    expect(first).toMatch(/^\d+\.\d{3}\t\d+\.\d{3}\tDec 10 06:55:46/);
    expect(status).toBe("status 0");
    expect(result.stderr).toBe("");
  }, CLI_TIMEOUT_MS);
});
