import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFileSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { Sampler } from "../core/sampler.ts";
import { readStateFile } from "../core/stream_state.ts";
import { type Answer, AnswerStream, type AnswerStreamState } from "../pipelines/answer_stream.ts";
import { logBytes, logLines, records, ROOT, runCli, RUNTIMES, startCli, waitFor } from "./support/cli.ts";
import { STORIES_V1, storiesSession } from "./support/stories.ts";

const CLI_TIMEOUT_MS = 120_000;
const LOG = "OpenSSH_2k.log";
let scratch: string;

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "sinkstream-answer-"));
});

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Read the answer stream state of a state file, or undefined while there is none. */
async function savedAnswerState(path: string): Promise<AnswerStreamState | undefined> {
  if (!existsSync(path)) return undefined;
  const state = await readStateFile(path);
  return state?.pipeline.answerStream as AnswerStreamState | undefined;
}

describe("AnswerStream", () => {
  test("resumable finish keeps pending tokens out", async () => {
    const { model, session } = await storiesSession({ sinks: 4, window: 124 });
    const answers: Answer[] = [];
    const stream = new AnswerStream(model, session, {
      request: { kind: "summary" },
      maxTokens: 2,
      sampler: new Sampler(),
      resumable: true,
      onAnswer: (answer) => answers.push(answer),
    });
    for (const line of logLines(LOG, 0, 7).split(/(?<=\n)/)) await stream.addLine(line);
    const pending = stream.exportState().ingestor.pendingTokens;
    expect(pending.length).toBeGreaterThan(0);
    const cache = session.kernel.exportState();
    const { evictions, tokensIngested } = session.stats;

    await stream.finish();

    expect(answers).toHaveLength(1);
    expect(answers[0].final).toBe(true);
    expect(answers[0].tokens).toBe(tokensIngested + pending.length);
    expect(session.kernel.exportState()).toEqual(cache);
    expect(session.stats.evictions).toBe(evictions);
    expect(session.stats.tokensIngested).toBe(tokensIngested);
    expect(stream.exportState().ingestor.pendingTokens).toEqual(pending);
  }, CLI_TIMEOUT_MS);

  test("importState rejects a malformed state", async () => {
    const { model, session } = await storiesSession({ sinks: 4, window: 124 });
    const stream = new AnswerStream(model, session, { request: { kind: "summary" }, maxTokens: 2, sampler: new Sampler() });
    const state = { ingestor: { lines: 3, started: true, pendingTokens: [1, model.config.vocabSize] } };
    expect(() => stream.importState(state)).toThrow(
      `Invalid saved pending token: current value is ${model.config.vocabSize}; the model's vocabulary has ${model.config.vocabSize} ids`,
    );
    expect(() => stream.importState({} as AnswerStreamState)).toThrow("Invalid saved line state: current value is undefined");
  }, CLI_TIMEOUT_MS);
});

describe("summarize and ask with --state", () => {
  const base = ["--model", STORIES_V1, "--json", "--max-tokens", "12", "--window", "124", "--every", "40", "--recall", "0", "--temperature", "0"];

  test("split run answers as one run", async () => {
    const whole = logBytes(LOG, 0, 125);
    // The end of input ingests an unterminated line as it is, so the split is at a line end.
    const split = logBytes(LOG, 0, 57).length;
    const state = join(scratch, "split.state");
    const onceState = join(scratch, "once.state");

    const once = await runCli("bun", ["summarize", ...base, "--state", onceState], whole);
    const first = await runCli("bun", ["summarize", ...base, "--state", state], whole.subarray(0, split));
    const second = await runCli("bun", ["summarize", ...base, "--state", state], whole.subarray(split));

    for (const run of [once, first, second]) expect(run.code).toBe(0);
    const onceAnswers = records(once.stdout).filter((record) => record.type === "summary");
    const firstAnswers = records(first.stdout).filter((record) => record.type === "summary");
    const secondAnswers = records(second.stdout).filter((record) => record.type === "summary");
    expect(onceAnswers.map((record) => record.lines)).toEqual([40, 80, 120, 125]);
    expect(firstAnswers.map((record) => [record.lines, record.final])).toEqual([[40, false], [57, true]]);
    // The every answers after the restart, and the final one, match the uninterrupted run's.
    expect(secondAnswers).toEqual(onceAnswers.slice(1));
    expect(secondAnswers.at(-1)).toMatchObject({ final: true, lines: 125 });

    // Both saved the same stream: the same chunks went into the cache, and the same tokens wait.
    const onceSaved = (await readStateFile(onceState))!;
    const splitSaved = (await readStateFile(state))!;
    expect(splitSaved.pipeline.answerStream).toEqual(onceSaved.pipeline.answerStream);
    expect(splitSaved.stats.tokensIngested).toBe(onceSaved.stats.tokensIngested);
    expect(splitSaved.stats.evictions).toBe(onceSaved.stats.evictions);
    expect(sha256(splitSaved.kernel)).toBe(sha256(onceSaved.kernel));
  }, CLI_TIMEOUT_MS);

  test("ask resumes its own state only", async () => {
    const state = join(scratch, "ask.state");
    const first = await runCli("bun", ["ask", "Who failed?", ...base, "--state", state], logLines(LOG, 0, 10));
    expect(first.code).toBe(0);
    expect(records(first.stdout)[0]).toMatchObject({ type: "answer", question: "Who failed?", final: true, lines: 10 });

    const other = await runCli("bun", ["summarize", ...base, "--state", state], logLines(LOG, 10, 20));
    expect(other.code).toBe(6);
    expect(other.stderr).toBe(
      `sinkstream: Cannot resume from ${state}: it was saved by the "ask" command, not "summarize"; give each command its own state file\n`,
    );

    const second = await runCli("bun", ["ask", "Who failed?", ...base, "--state", state], logLines(LOG, 10, 20));
    expect(second.code).toBe(0);
    expect(records(second.stdout)[0]).toMatchObject({ type: "answer", final: true, lines: 20 });
  }, CLI_TIMEOUT_MS);
});

describe("summarize --follow", () => {
  test("answers, then summarizes on SIGTERM", async () => {
    const path = join(scratch, "growing.log");
    const state = join(scratch, "follow.state");
    writeFileSync(path, logBytes(LOG, 0, 20));
    const args = ["summarize", "--model", STORIES_V1, "--json", "--max-tokens", "6", "--every", "10", "--recall", "0", "--follow", path];
    const cli = startCli("bun", [...args, "--state", state, "--save-every", "1"]);
    const summaries = () => records(cli.stdout()).filter((record) => record.type === "summary");

    await waitFor(() => summaries().some((record) => record.lines === 20), CLI_TIMEOUT_MS / 2, "the answer after 20 lines");
    appendFileSync(path, logBytes(LOG, 20, 35));
    // Each line saves the state, so its line count shows when all 35 lines are in.
    let saved: AnswerStreamState | undefined;
    await waitFor(() => {
      void savedAnswerState(state).then((value) => (saved = value)).catch(() => {});
      return saved?.ingestor.lines === 35;
    }, CLI_TIMEOUT_MS / 2, "35 lines in the saved state");
    cli.child.kill("SIGTERM");
    const run = await cli.done;

    expect(run.code).toBe(0);
    const answers = records(run.stdout).filter((record) => record.type === "summary");
    expect(answers.map((record) => [record.lines, record.final])).toEqual([[10, false], [20, false], [30, false], [35, true]]);
    expect(records(run.stdout).at(-1)).toMatchObject({ type: "stats", lines: 35, dropped: 0 });
    // The saved position is past the last line's CR; the LF after it is skipped on resume.
    const final = await readStateFile(state);
    const input = final!.pipeline.input as { source: string; position: { offset: number; afterCr: boolean } };
    expect(input.source).toBe("follow");
    expect(input.position).toMatchObject({ offset: statSync(path).size - 1, afterCr: true });

    // A restart continues after the saved offset: only the new lines are read.
    appendFileSync(path, logBytes(LOG, 35, 38));
    const restarted = startCli("bun", [...args, "--state", state, "--save-every", "1"]);
    let resumed: AnswerStreamState | undefined;
    await waitFor(() => {
      void savedAnswerState(state).then((value) => (resumed = value)).catch(() => {});
      return resumed?.ingestor.lines === 38;
    }, CLI_TIMEOUT_MS / 2, "38 lines in the saved state");
    restarted.child.kill("SIGTERM");
    const second = await restarted.done;
    expect(second.code).toBe(0);
    expect(records(second.stdout).find((record) => record.final)).toMatchObject({ type: "summary", lines: 38 });
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

describe("summarize on SIGINT", () => {
  // All 2000 lines are queued at once; ingesting them takes far longer than the test waits.
  const input = logLines("HDFS_2k.log", 0, 2000);
  // No answer is due before the signal; the saved state shows that the stream runs.
  const args = ["summarize", "--model", STORIES_V1, "--every", "100000", "--max-tokens", "6", "--recall", "0", "--save-every", "5"];

  test("bun prints the final summary as JSON", async () => {
    const state = join(scratch, "sigint-bun.state");
    const cli = startCli("bun", [...args, "--json", "--state", state]);
    cli.child.stdin.end(input);
    await waitFor(() => existsSync(state), CLI_TIMEOUT_MS / 2, "the first saved state");
    cli.child.kill("SIGINT");
    const run = await cli.done;

    expect(run.code).toBe(0);
    expect(run.stderr).toBe("");
    const all = records(run.stdout);
    const summaries = all.filter((record) => record.type === "summary");
    expect(summaries).toHaveLength(1);
    expect(summaries[0].final).toBe(true);
    expect(summaries[0].lines as number).toBeGreaterThanOrEqual(5);
    expect(summaries[0].lines as number).toBeLessThan(2000);
    expect(all.at(-1)).toMatchObject({ type: "stats", lines: summaries[0].lines });
    expect((await savedAnswerState(state))!.ingestor.lines).toBe(summaries[0].lines as number);
  }, CLI_TIMEOUT_MS);

  test("deno prints the final summary as text", async () => {
    const state = join(scratch, "sigint-deno.state");
    const [command, ...prefix] = SIGNAL_RUNTIMES.deno;
    const child = spawn(command, [...prefix, ...args, "--quiet", "--state", state], { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" } });
    let stdout = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stdin.on("error", () => {});
    child.stdin.end(input);
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    await waitFor(() => existsSync(state), CLI_TIMEOUT_MS / 2, "the first saved state");
    child.kill("SIGINT");

    expect(await exited).toBe(0);
    expect(stdout).toMatch(/^\[after \d+ lines, stopped by a signal\]\n[^\n]*\n\n?$/);
  }, CLI_TIMEOUT_MS);
});
