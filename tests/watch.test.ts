import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { BoundedQueue } from "../core/line_queue.ts";
import { Sampler } from "../core/sampler.ts";
import { readStateFile } from "../core/stream_state.ts";
import { type WatchEvent, Watcher, type WatchRun } from "../pipelines/watch.ts";
import {
  type CliProcess,
  type CliRun,
  logLines,
  records,
  ROOT,
  runCli,
  RUNTIMES,
  startCli,
  waitFor,
} from "./support/cli.ts";
import { STORIES_V1, STORIES_V3, storiesSession } from "./support/stories.ts";

const CLI_TIMEOUT_MS = 120_000;
const LOG = "OpenSSH_2k.log";
let scratch: string;

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "sinkstream-watch-"));
});

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

async function watcher(run: Partial<WatchRun>) {
  const { model, session } = await storiesSession({ sinks: 4, window: 124 });
  const events: WatchEvent[] = [];
  const watch = new Watcher(model, session, {
    request: { kind: "summary" },
    maxTokens: 2,
    sampler: new Sampler(),
    onEvent: (event) => events.push(event),
    ...run,
  });
  return { watch, events, session };
}

describe("Watcher", () => {
  test("every, trigger and final answers", async () => {
    const { watch, events } = await watcher({ every: 5, trigger: /Invalid user/ });
    const lines = logLines(LOG, 0, 12).split(/(?<=\n)/);
    for (const line of lines) await watch.addLine(line);
    await watch.finish();
    const triggered = lines.flatMap((line, i) => (/Invalid user/.test(line) ? [i + 1] : []));
    expect(triggered.length).toBeGreaterThan(0);
    expect(events.filter((event) => event.reason === "trigger").map((event) => event.answer.lines)).toEqual(triggered);
    expect(events.filter((event) => event.reason === "every").map((event) => event.answer.lines)).toEqual([5, 10]);
    expect(events.at(-1)!.reason).toBe("final");
    expect(events.at(-1)!.answer.final).toBe(true);
    expect(events.find((event) => event.reason === "trigger")!.cause!.text).toContain("Invalid user");
  }, CLI_TIMEOUT_MS);

  test("threshold answers on surprising lines", async () => {
    const { watch, events } = await watcher({ threshold: 7.5 });
    const scores = [];
    for (const line of logLines(LOG, 0, 8).split(/(?<=\n)/)) scores.push(await watch.addLine(line));
    const above = scores.filter((score) => score.meanNll! > 7.5).map((score) => score.line);
    expect(above.length).toBeGreaterThan(0);
    expect(above.length).toBeLessThan(8);
    expect(events.map((event) => event.cause!.line)).toEqual(above);
    expect(events.every((event) => event.reason === "threshold")).toBe(true);
  }, CLI_TIMEOUT_MS);

  test("interval answers only after new lines", async () => {
    const { watch, events } = await watcher({ intervalMs: 1000 });
    const start = performance.now();
    expect(watch.msUntilInterval(start)).toBeGreaterThan(900);
    await watch.checkInterval(start + 1500);
    expect(events).toHaveLength(0);
    await watch.addLine(logLines(LOG, 0, 1));
    await watch.checkInterval(start + 1400);
    expect(events).toHaveLength(0);
    await watch.checkInterval(start + 2500);
    expect(events.map((event) => event.reason)).toEqual(["interval"]);
    expect(await watch.finish()).toBeUndefined();
  }, CLI_TIMEOUT_MS);

  test("answer leaves the cache unchanged", async () => {
    const { watch, session } = await watcher({});
    await watch.addLine(logLines(LOG, 0, 1));
    const before = session.kernel.exportState();
    await watch.answerNow("trigger");
    expect(session.kernel.exportState()).toEqual(before);
  }, CLI_TIMEOUT_MS);
});

describe("BoundedQueue", () => {
  test("push waits while full", async () => {
    const queue = new BoundedQueue<number>({ capacity: 2 });
    await queue.push(1);
    await queue.push(2);
    let pushed = false;
    const third = queue.push(3).then(() => (pushed = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(pushed).toBe(false);
    expect(await queue.take()).toEqual({ kind: "item", item: 1 });
    await third;
    expect(queue.size).toBe(2);
    queue.close();
    expect(await queue.take()).toEqual({ kind: "item", item: 2 });
    expect(await queue.take()).toEqual({ kind: "item", item: 3 });
    expect(await queue.take()).toEqual({ kind: "end" });
  });

  test("drop mode counts skipped items", async () => {
    const queue = new BoundedQueue<number>({ capacity: 3, drop: true });
    for (let i = 0; i < 10; i++) await queue.push(i);
    expect(queue.dropped).toBe(7);
    expect(queue.size).toBe(3);
  });

  test("take times out and reports failures", async () => {
    const queue = new BoundedQueue<number>({ capacity: 1 });
    expect(await queue.take(10)).toEqual({ kind: "timeout" });
    queue.fail(new Error("read failed"));
    await expect(queue.take()).rejects.toThrow("read failed");
    expect(() => new BoundedQueue({ capacity: 0 })).toThrow("Invalid queue capacity: current value is 0");
  });
});

describe("watch command", () => {
  test("unterminated last line counts", async () => {
    // Like the shared logs, the input ends without a newline: its last line still completes --every.
    const input = logLines(LOG, 0, 6).replace(/\n$/, "");
    const run = await runCli("bun", ["watch", "--model", STORIES_V1, "--every", "6", "--max-tokens", "2", "--json"], input);
    expect(run.code).toBe(0);
    const all = records(run.stdout);
    const answers = all.filter((record) => record.type === "summary");
    expect(answers.map((record) => [record.reason, record.lines])).toEqual([["every", 6]]);
    expect(all.at(-1)).toMatchObject({ type: "stats", lines: 6 });
  }, CLI_TIMEOUT_MS);

  test("bun every and trigger as NDJSON", async () => {
    const run = await runCli("bun", [
      "watch", "--model", STORIES_V1, "--every", "6", "--trigger", "POSSIBLE BREAK-IN", "--max-tokens", "3", "--json", "--window", "124",
    ], logLines(LOG, 0, 14));
    expect(run.code).toBe(0);
    const all = records(run.stdout);
    const answers = all.filter((record) => record.type === "summary");
    expect(answers.filter((record) => record.reason === "every").map((record) => record.lines)).toEqual([6, 12]);
    const triggers = answers.filter((record) => record.reason === "trigger");
    expect(triggers.length).toBeGreaterThan(0);
    for (const record of triggers) expect((record.cause as { text: string }).text).toContain("POSSIBLE BREAK-IN");
    expect(answers.at(-1)).toMatchObject({ reason: "final", lines: 14 });
    expect(all.at(-1)).toMatchObject({ type: "stats", lines: 14, dropped: 0 });
  }, CLI_TIMEOUT_MS);

  test("deno ask as plain text", async () => {
    const run = await runCli("deno", ["watch", "--model", STORIES_V3, "--ask", "Who failed?", "--every", "4", "--max-tokens", "3", "--quiet"], logLines(LOG, 0, 8));
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^\[line 4, every\]\n/);
    expect(run.stdout).toContain("[line 8, every]\n");
    expect(run.stdout).not.toContain("final");
  }, CLI_TIMEOUT_MS);

  test("SIGTERM mid-stream saves and summarizes", async () => {
    const path = join(scratch, "sigterm.state");
    const cli = startCli("bun", [
      "watch", "--model", STORIES_V1, "--every", "1000", "--max-tokens", "3", "--json", "--state", path, "--save-every", "3",
    ]);
    cli.child.stdin.write(logLines(LOG, 0, 10));
    await waitFor(() => cli.stderr() !== "" || existsSync(path), CLI_TIMEOUT_MS / 2, "the first saved state");
    cli.child.kill("SIGTERM");
    const run = await cli.done;
    expect(run.code).toBe(0);
    expect(run.stderr).toBe("");
    const all = records(run.stdout);
    const final = all.find((record) => record.reason === "final")!;
    expect(final.type).toBe("summary");
    const stats = all.at(-1)!;
    expect(stats.type).toBe("stats");
    const saved = await readStateFile(path);
    const watcherState = saved!.pipeline.watcher as { scorer: { lines: number } };
    expect(watcherState.scorer.lines).toBe(stats.lines as number);
    expect(final.lines).toBe(stats.lines);
    expect(stats.lines as number).toBeGreaterThanOrEqual(3);
  }, CLI_TIMEOUT_MS);

  test("second SIGINT exits at once", async () => {
    const path = join(scratch, "sigint.state");
    const cli = startCli("bun", [
      "watch", "--model", STORIES_V1, "--every", "1000", "--max-tokens", "400", "--temperature", "1", "--window", "508",
      "--state", path, "--save-every", "1",
    ]);
    cli.child.stdin.write(logLines(LOG, 0, 40));
    // A saved state means the stream runs and the signal handlers are installed.
    await waitFor(() => cli.stderr() !== "" || existsSync(path), CLI_TIMEOUT_MS / 2, "the first saved state");
    cli.child.kill("SIGINT");
    await new Promise((resolve) => setTimeout(resolve, 100));
    cli.child.kill("SIGINT");
    const run = await cli.done;
    expect(run.code).toBe(130);
  }, CLI_TIMEOUT_MS);

  test("drop reports skipped lines", async () => {
    const run = await runCli("bun", ["watch", "--model", STORIES_V1, "--queue", "2", "--drop", "--json", "--max-tokens", "1"], logLines(LOG, 0, 300));
    expect(run.code).toBe(0);
    const stats = records(run.stdout).at(-1)!;
    expect(stats.type).toBe("stats");
    expect(stats.dropped as number).toBeGreaterThan(0);
    expect((stats.lines as number) + (stats.dropped as number)).toBe(300);
    expect(run.stderr).toContain(`sinkstream: dropped ${stats.dropped} lines that arrived while the queue of 2 was full (--drop)`);
  }, CLI_TIMEOUT_MS);

  test("error mid-stream exits with input open", async () => {
    // The first answer cannot fit its 100 tokens in a window of 60.
    const cli = startCli("bun", ["watch", "--model", STORIES_V1, "--window", "60", "--max-tokens", "100", "--every", "1"]);
    cli.child.stdin.write(logLines(LOG, 0, 3));
    const run = await cli.done;
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/^sinkstream: .*window/);
    expect(run.stderr.trim().split("\n")).toHaveLength(1);
  }, CLI_TIMEOUT_MS);

  test("invalid interval exits 2", async () => {
    const run = await runCli("bun", ["watch", "--model", STORIES_V1, "--interval", "soon"], "");
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/^sinkstream: Invalid duration: current value is "soon"; /);
  }, CLI_TIMEOUT_MS);
});

/**
 * Signal tests start the Deno binary itself, because the npm `deno` launcher is a Node process
 * that would take the signal and leave Deno running.
 */
const SIGNAL_RUNTIMES: Record<string, string[]> = {
  bun: RUNTIMES.bun,
  deno: [`${ROOT}node_modules/deno/deno`, "run", "-A", "cli/main.ts"],
};

/** Start the CLI with `input` on standard input, which is then closed. */
function startSignalled(runtime: string, args: string[], input: string): CliProcess {
  const [command, ...prefix] = SIGNAL_RUNTIMES[runtime];
  const child = spawn(command, [...prefix, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => (stdout += chunk));
  child.stderr.on("data", (chunk) => (stderr += chunk));
  child.stdin.on("error", () => {});
  child.stdin.end(input);
  const done = new Promise<CliRun>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }))
  );
  return { child, stdout: () => stdout, stderr: () => stderr, done };
}

describe("signals while lines are queued", () => {
  // All 2000 lines are queued at once; ingesting them takes far longer than the test allows.
  const input = logLines("HDFS_2k.log", 0, 2000);

  for (const runtime of Object.keys(SIGNAL_RUNTIMES)) {
    test(`${runtime} score stops soon after SIGINT`, async () => {
      const cli = startSignalled(runtime, ["score", "--model", STORIES_V1, "--json"], input);
      await waitFor(() => cli.stdout().includes("\n"), CLI_TIMEOUT_MS / 2, "the first line record");
      await new Promise((resolve) => setTimeout(resolve, 3000));
      cli.child.kill("SIGINT");
      const signalled = performance.now();
      const run = await cli.done;

      expect(performance.now() - signalled).toBeLessThan(5000);
      expect(run.code).toBe(0);
      expect(run.stderr).not.toContain("    at ");
      const all = records(run.stdout);
      const lineRecords = all.filter((record) => record.type === "line");
      expect(lineRecords.length).toBeGreaterThan(0);
      expect(lineRecords.length).toBeLessThan(2000);
      expect(all.at(-1)).toMatchObject({ type: "stats", lines: lineRecords.length });
    }, CLI_TIMEOUT_MS);

    test(`${runtime} watch second SIGINT during final answer`, async () => {
      // 2000 tokens of final answer take seconds, so the second SIGINT arrives while it runs.
      const path = join(scratch, `${runtime}-queued.state`);
      const cli = startSignalled(runtime, [
        "watch", "--model", STORIES_V1, "--every", "100000", "--max-tokens", "2000", "--window", "2040",
        "--temperature", "1", "--seed", "1", "--json", "--quiet", "--state", path, "--save-every", "1",
      ], input);
      // A saved state means the stream runs and the signal handlers are installed.
      await waitFor(() => existsSync(path), CLI_TIMEOUT_MS / 2, "the first saved state");
      await new Promise((resolve) => setTimeout(resolve, 3000));
      cli.child.kill("SIGINT");
      await new Promise((resolve) => setTimeout(resolve, 300));
      // Repeat the second SIGINT, as a user pressing Ctrl-C again would: on a loaded machine two
      // signals that arrive before the runtime dispatches the first are delivered as one.
      const signalled = performance.now();
      const repeat = setInterval(() => cli.child.kill("SIGINT"), 250);
      cli.child.kill("SIGINT");
      const run = await cli.done;
      clearInterval(repeat);

      expect(performance.now() - signalled).toBeLessThan(1000);
      expect(run.code).toBe(130);
      expect(records(run.stdout).filter((record) => record.type === "stats")).toHaveLength(0);
    }, CLI_TIMEOUT_MS);
  }
});
