import { describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { LOG_NAMES, LOGS_DIR, STORIES_V1, STORIES_V3 } from "./support/stories.ts";

const CLI_TIMEOUT_MS = 120_000;
const ROOT = new URL("..", import.meta.url).pathname;
const RUNTIMES: Record<string, string[]> = {
  bun: [`${ROOT}node_modules/.bin/bun`, "cli/main.ts"],
  deno: [`${ROOT}node_modules/.bin/deno`, "run", "-A", "cli/main.ts"],
};

const fixture = JSON.parse(readFileSync(new URL("./fixtures/llamacpp_stories260K.json", import.meta.url), "utf8"));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the CLI with `input` on stdin; `closeStdoutAfter` closes our end of stdout after that many bytes. */
function runCli(runtime: string, args: string[], input = "", closeStdoutAfter?: number): Promise<Run> {
  const [command, ...prefix] = RUNTIMES[runtime];
  const child = spawn(command, [...prefix, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => {
    stdout += chunk;
    if (closeStdoutAfter !== undefined && stdout.length >= closeStdoutAfter) child.stdout.destroy();
  });
  child.stderr.on("data", (chunk) => (stderr += chunk));
  child.stdin.on("error", () => {});
  child.stdin.end(input);
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

function headLines(name: string, count: number): string {
  return readFileSync(LOGS_DIR + name, "latin1").split("\n").slice(0, count).join("\n");
}

function records(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split("\n").map((line) => JSON.parse(line));
}

describe("generate", () => {
  for (const runtime of Object.keys(RUNTIMES)) {
    for (const model of [STORIES_V1, STORIES_V3]) {
      test(`${runtime} prints llama.cpp's greedy continuation (${model.split("/").pop()})`, async () => {
        const run = await runCli(runtime, [
          "generate", "--model", model, "--prompt", fixture.greedy.prompt,
          "--max-tokens", String(fixture.greedy.continuation.length), "--temperature", "0",
        ]);
        expect(run.stderr).toContain("sinkstream: ingested");
        expect(run.code).toBe(0);
        expect(run.stdout).toBe(fixture.greedy.continuationText + "\n");
      }, CLI_TIMEOUT_MS);
    }
  }

  test("prompt from standard input, JSON output", async () => {
    const run = await runCli("bun", ["generate", "--model", STORIES_V1, "--max-tokens", "8", "--json", "--quiet"], "Once upon a time");
    expect(run.code).toBe(0);
    const [generation, stats] = records(run.stdout);
    expect(generation.type).toBe("generation");
    expect(generation.token_ids).toEqual(fixture.greedy.continuation.slice(0, 8));
    expect(stats.type).toBe("stats");
    expect(stats.tokens_generated).toBe(8);
    expect(run.stderr).toBe("");
  }, CLI_TIMEOUT_MS);
});

describe("summarize and ask on real logs", () => {
  for (const name of LOG_NAMES) {
    test(`summarize ${name}`, async () => {
      const run = await runCli("bun", ["summarize", "--model", STORIES_V1, "--max-tokens", "8", "--json", "--window", "124"], headLines(name, 150));
      expect(run.code).toBe(0);
      const all = records(run.stdout);
      const summary = all[0];
      expect(summary.type).toBe("summary");
      expect(summary.final).toBe(true);
      expect(summary.lines).toBe(150);
      expect(summary.cache_tokens).toBe(128);
      expect(typeof summary.text).toBe("string");
      const stats = all.at(-1)!;
      expect(stats.type).toBe("stats");
      expect(stats.evictions as number).toBeGreaterThan(0);
      expect(stats.tokens_ingested).toBe(summary.tokens);
    }, CLI_TIMEOUT_MS);
  }

  test("ask every N lines under Deno", async () => {
    const run = await runCli("deno", ["ask", "Which user failed?", "--every", "40", "--model", STORIES_V3, "--max-tokens", "6", "--json"], headLines("OpenSSH_2k.log", 100));
    expect(run.code).toBe(0);
    const answers = records(run.stdout).filter((record) => record.type === "answer");
    expect(answers.map((answer) => answer.lines)).toEqual([40, 80, 100]);
    expect(answers.map((answer) => answer.final)).toEqual([false, false, true]);
    expect(answers[0].question).toBe("Which user failed?");
  }, CLI_TIMEOUT_MS);

  test("plain-text summary of 500 lines", async () => {
    const run = await runCli("bun", ["summarize", "--model", STORIES_V1, "--max-tokens", "16"], headLines("HealthApp_2k.log", 500));
    expect(run.code).toBe(0);
    expect(run.stdout.trim().length).toBeGreaterThan(0);
    expect(run.stderr).toMatch(/ingested \d+ tokens at [\d.]+ tok\/s/);
  }, CLI_TIMEOUT_MS);

  test("empty input still answers", async () => {
    const run = await runCli("bun", ["summarize", "--model", STORIES_V1, "--max-tokens", "4", "--json"], "");
    expect(run.code).toBe(0);
    expect(records(run.stdout)[0]).toMatchObject({ type: "summary", lines: 0, tokens: 0 });
  }, CLI_TIMEOUT_MS);
});

describe("errors and pipes", () => {
  const cases: [string, string[], number, RegExp][] = [
    ["missing model", ["summarize", "--model", "/nonexistent/model.gguf"], 3, /^sinkstream: Model file not found: \/nonexistent\/model.gguf; /],
    // Relative paths with one slash look like hub ids; these must not reach the network.
    ["missing relative model", ["summarize", "--model", "models/stories.gguf"], 3, /^sinkstream: Model file not found: models\/stories.gguf; /],
    ["missing file in a folder here", ["summarize", "--model", "tests/nonexistent"], 3, /^sinkstream: Model file not found: tests\/nonexistent; /],
    ["a log as the model", ["summarize", "--model", `${LOGS_DIR}Linux_2k.log`], 3, /^sinkstream: Cannot load model .*Linux_2k.log: Failed to parse GGUF: not a GGUF file/],
    ["window 0", ["summarize", "--model", STORIES_V1, "--window", "0"], 2, /^sinkstream: Invalid window size: current value is "0"; use a whole number ≥ 1/],
    ["window not a number", ["summarize", "--window", "abc"], 2, /Invalid window size: current value is "abc"/],
    ["unknown option", ["summarize", "--windw", "3"], 2, /^sinkstream: unknown option '--windw'/],
  ];
  for (const [name, args, code, message] of cases) {
    test(`${name} exits ${code} with one line`, async () => {
      const run = await runCli("bun", args, "some input\n");
      expect(run.code).toBe(code);
      expect(run.stderr).toMatch(message);
      expect(run.stderr).not.toContain("    at ");
      expect(run.stdout).toBe("");
    }, CLI_TIMEOUT_MS);
  }

  test("closed standard output ends quietly", async () => {
    const run = await runCli("bun", ["generate", "--model", STORIES_V1, "--prompt", "Once upon a time", "--max-tokens", "400", "--temperature", "1"], "", 1);
    expect(run.code).toBe(0);
    expect(run.stderr).not.toContain("error");
  }, CLI_TIMEOUT_MS);

  for (const runtime of Object.keys(RUNTIMES)) {
    for (const json of [false, true]) {
      test(`${runtime} summarize --every${json ? " --json" : ""} after head -1, input open`, async () => {
        const [command, ...prefix] = RUNTIMES[runtime];
        const args = ["summarize", "--model", STORIES_V1, "--every", "5", "--max-tokens", "4", ...(json ? ["--json"] : [])];
        const child = spawn(command, [...prefix, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" } });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (chunk) => {
          stdout += chunk;
          // Like `| head -1`: close our end after the first line.
          if (stdout.includes("\n")) child.stdout.destroy();
        });
        child.stderr.on("data", (chunk) => (stderr += chunk));
        child.stdin.on("error", () => {});
        const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
        // Standard input stays open, as under `tail -F log | sinkstream … | head -1`.
        child.stdin.write(headLines("Linux_2k.log", 30) + "\n");

        let timer: ReturnType<typeof setTimeout> | undefined;
        const timedOut = new Promise<"timed out">((resolve) => (timer = setTimeout(() => resolve("timed out"), 30_000)));
        const code = await Promise.race([exited, timedOut]);
        clearTimeout(timer);
        child.stdin.end();
        if (code === "timed out") child.kill("SIGKILL");

        expect(code).toBe(0);
        expect(stderr).not.toContain("    at ");
        expect(stderr).not.toContain("Error");
      }, CLI_TIMEOUT_MS);
    }
  }
});
