import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFileSync, mkdtempSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileFollower, type FollowStart } from "../core/follow.ts";
import { readStateFile } from "../core/stream_state.ts";
import { LineDecoder, readLines } from "../core/text_lines.ts";
import { logBytes, logLines, records, runCli, startCli, waitFor } from "./support/cli.ts";
import { STORIES_V1 } from "./support/stories.ts";

const CLI_TIMEOUT_MS = 120_000;
const LOG = "Zookeeper_2k.log";
let scratch: string;

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "sinkstream-follow-"));
});

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

/** Collect a follower's bytes as text in the background. */
function collect(follower: FileFollower) {
  let text = "";
  const decoder = new TextDecoder();
  const done = (async () => {
    for await (const bytes of follower.bytes()) text += decoder.decode(bytes, { stream: true });
  })();
  return { text: () => text, done };
}

describe("FileFollower", () => {
  test("appends, rotation and truncation", async () => {
    const path = join(scratch, "app.log");
    writeFileSync(path, "one\n");
    const stop = new AbortController();
    const follower = new FileFollower(path, { pollMs: 20, signal: stop.signal });
    const reader = collect(follower);
    await waitFor(() => reader.text() === "one\n", 5000, "the existing bytes");

    appendFileSync(path, "two\n");
    await waitFor(() => reader.text() === "one\ntwo\n", 5000, "appended bytes");

    // Rotation: the last bytes written to the old file are still read, then the new file.
    const before = follower.position!.file;
    appendFileSync(path, "three\n");
    renameSync(path, path + ".1");
    writeFileSync(path, "four\n");
    await waitFor(() => reader.text() === "one\ntwo\nthree\nfour\n", 5000, "the rotated file");
    expect(follower.position!.file).not.toBe(before);

    // Truncation: reading restarts at the new start of the file.
    truncateSync(path, 0);
    await new Promise((resolve) => setTimeout(resolve, 100));
    writeFileSync(path, "five\n");
    await waitFor(() => reader.text().endsWith("four\nfive\n"), 5000, "bytes after truncation");
    expect(follower.position!.offset).toBe(5);

    stop.abort();
    await reader.done;
  });

  test("waits for a missing file", async () => {
    const path = join(scratch, "later.log");
    const stop = new AbortController();
    const reader = collect(new FileFollower(path, { pollMs: 20, signal: stop.signal }));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(reader.text()).toBe("");
    writeFileSync(path, "hello\n");
    await waitFor(() => reader.text() === "hello\n", 5000, "the created file");
    stop.abort();
    await reader.done;
  });
});

describe("LineDecoder", () => {
  test("split and resume anywhere", async () => {
    // CRLF, a lone CR, an invalid byte, a character split by the cut, and a line in pieces.
    const bytes = new Uint8Array([
      ...new TextEncoder().encode("ab\r\ncé😀\r"),
      0xff,
      ...new TextEncoder().encode("x\n\r\n" + "y".repeat(25) + "\r\nlast"),
    ]);
    const expected: string[] = [];
    for await (const line of readLines((async function* () { yield bytes; })(), { maxLineChars: 10 })) expected.push(line);
    for (let cut = 0; cut <= bytes.length; cut++) {
      // Carried over: the next decoder continues the first one's partial line.
      const first = new LineDecoder({ maxLineChars: 10 });
      const carried = first.push(bytes.subarray(0, cut)).map((line) => line.text);
      const next = new LineDecoder({ maxLineChars: 10, partial: first.partial() });
      carried.push(...[...next.push(bytes.subarray(cut)), ...next.finish()].map((line) => line.text));
      expect(carried).toEqual(expected);

      // Resumed at a byte offset: a decoder started at each line's end reads the rest.
      const whole = new LineDecoder({ maxLineChars: 10 });
      const lines = [...whole.push(bytes.subarray(0, cut)), ...whole.push(bytes.subarray(cut)), ...whole.finish()];
      for (const [k, line] of lines.entries()) {
        const resumed = new LineDecoder({ maxLineChars: 10, start: line.end });
        const rest = [...resumed.push(bytes.subarray(line.end.offset)), ...resumed.finish()].map((item) => item.text);
        expect(rest).toEqual(expected.slice(k + 1));
      }
    }
  });
});

describe("FileFollower resumeAt", () => {
  /** Follow `path` from `resumeAt` until `expected` was read, and return the start reports. */
  async function readFrom(path: string, resumeAt: { file: string; offset: number }, expected: string) {
    const starts: FollowStart[] = [];
    const stop = new AbortController();
    const reader = collect(new FileFollower(path, { pollMs: 20, signal: stop.signal, resumeAt, onStart: (start) => starts.push(start) }));
    await waitFor(() => reader.text() === expected, 5000, JSON.stringify(expected));
    stop.abort();
    await reader.done;
    return starts;
  }

  test("continues, or restarts after rotation and truncation", async () => {
    const path = join(scratch, "resume.log");
    writeFileSync(path, "one\ntwo\n");
    const stop = new AbortController();
    const reader = collect(new FileFollower(path, { pollMs: 20, signal: stop.signal }));
    await waitFor(() => reader.text() === "one\ntwo\n", 5000, "the first bytes");
    stop.abort();
    await reader.done;
    const { ino, dev } = statSync(path);
    const file = `${dev}:${ino}`;

    appendFileSync(path, "three\n");
    expect(await readFrom(path, { file, offset: 4 }, "two\nthree\n")).toEqual([{ kind: "continued", file, offset: 4 }]);

    truncateSync(path, 0);
    writeFileSync(path, "new\n");
    expect(await readFrom(path, { file, offset: 14 }, "new\n")).toEqual([{ kind: "truncated", file, size: 4, offset: 14 }]);

    renameSync(path, path + ".1");
    writeFileSync(path, "rotated\n");
    const rotated = `${statSync(path).dev}:${statSync(path).ino}`;
    expect(await readFrom(path, { file, offset: 4 }, "rotated\n")).toEqual([{ kind: "replaced", file: rotated, previous: file }]);
  });
});

describe("--follow with --state", () => {
  const OPENSSH = "OpenSSH_2k.log";
  const base = ["score", "--model", STORIES_V1, "--json", "--quiet", "--window", "60"];
  const lineRecords = (stdout: string) => records(stdout).filter((record) => record.type === "line");

  /** Follow `path` until `until` holds for the line records, then stop with SIGTERM. */
  async function followUntil(path: string, state: string, until: (count: number) => boolean) {
    const cli = startCli("bun", [...base, "--follow", path, "--state", state]);
    await waitFor(() => until(lineRecords(cli.stdout()).length), CLI_TIMEOUT_MS / 2, "scored lines");
    cli.child.kill("SIGTERM");
    const run = await cli.done;
    expect(run.code).toBe(0);
    return run;
  }

  test("restart continues at the saved offset", async () => {
    const path = join(scratch, "openssh.log");
    const state = join(scratch, "openssh.state");
    writeFileSync(path, logBytes(OPENSSH, 0, 200));
    const whole = await runCli("bun", base, logBytes(OPENSSH, 0, 230));
    const expected = lineRecords(whole.stdout);
    expect(expected).toHaveLength(230);

    // Stop mid-file: lines are still queued, and some not read yet.
    const first = await followUntil(path, state, (count) => count >= 5);
    const firstLines = lineRecords(first.stdout);
    expect(firstLines.length).toBeLessThan(200);
    const saved = await readStateFile(state);
    expect(saved!.pipeline.input).toMatchObject({
      source: "follow",
      path,
      // Past the CR that ended the last ingested line, so the LF after it is skipped on resume.
      position: { offset: logBytes(OPENSSH, 0, firstLines.length).length - 1, pieceChars: 0, afterCr: true },
    });

    appendFileSync(path, logBytes(OPENSSH, 200, 230));
    const second = await followUntil(path, state, (count) => firstLines.length + count >= 230);
    expect(second.stderr).toBe("");
    const secondLines = lineRecords(second.stdout);
    expect(secondLines).toEqual(expected.slice(firstLines.length));
    expect([...firstLines, ...secondLines].map((record) => record.line)).toEqual(expected.map((record) => record.line));
  }, CLI_TIMEOUT_MS * 2);

  test("rotation and truncation while stopped", async () => {
    const path = join(scratch, "rotated.log");
    const state = join(scratch, "rotated.state");
    writeFileSync(path, logBytes(OPENSSH, 0, 5));
    const whole = await runCli("bun", base, logBytes(OPENSSH, 0, 12));
    const expected = lineRecords(whole.stdout);

    const first = await followUntil(path, state, (count) => count >= 5);
    expect(lineRecords(first.stdout)).toEqual(expected.slice(0, 5));

    // Rotated while stopped: the new file is read from its start.
    appendFileSync(path, logBytes(OPENSSH, 100, 101)); // written to the old file after the stop: not read
    renameSync(path, path + ".1");
    writeFileSync(path, logBytes(OPENSSH, 5, 10));
    const second = await followUntil(path, state, (count) => count >= 5);
    expect(lineRecords(second.stdout)).toEqual(expected.slice(5, 10));
    expect(second.stderr).toMatch(/^sinkstream: \S+rotated\.log is another file than when the state was saved \(inode \d+:\d+, now \d+:\d+\), so it is read from its start\n$/);

    // Truncated while stopped, and now shorter than the saved offset.
    truncateSync(path, 0);
    writeFileSync(path, logBytes(OPENSSH, 10, 12));
    const third = await followUntil(path, state, (count) => count >= 2);
    expect(lineRecords(third.stdout)).toEqual(expected.slice(10, 12));
    const size = logBytes(OPENSSH, 10, 12).length;
    const offset = logBytes(OPENSSH, 5, 10).length - 1; // before the last LF
    expect(third.stderr).toBe(
      `sinkstream: ${path} is ${size} bytes, shorter than the saved offset ${offset}, so it was truncated; reading it from its start\n`,
    );
  }, CLI_TIMEOUT_MS * 2);
});

describe("--follow", () => {
  test("score follows rotation and stops on SIGTERM", async () => {
    const path = join(scratch, "zookeeper.log");
    writeFileSync(path, logLines(LOG, 0, 3));
    const cli = startCli("bun", ["score", "--model", STORIES_V1, "--json", "--follow", path]);
    const lines = () => records(cli.stdout()).filter((record) => record.type === "line");
    await waitFor(() => lines().length === 3, CLI_TIMEOUT_MS / 2, "3 scored lines");

    renameSync(path, path + ".1");
    writeFileSync(path, logLines(LOG, 3, 5));
    await waitFor(() => lines().length === 5, CLI_TIMEOUT_MS / 2, "lines of the rotated file");

    truncateSync(path, 0);
    await new Promise((resolve) => setTimeout(resolve, 600));
    writeFileSync(path, logLines(LOG, 5, 6));
    await waitFor(() => lines().length === 6, CLI_TIMEOUT_MS / 2, "the line after truncation");

    cli.child.kill("SIGTERM");
    const run = await cli.done;
    expect(run.code).toBe(0);
    expect(lines().map((record) => record.line)).toEqual([1, 2, 3, 4, 5, 6]);
    const expected = logLines(LOG, 0, 6).split("\n").slice(0, 6);
    expect(lines().map((record) => record.text)).toEqual(expected);
    expect(records(run.stdout).at(-1)).toMatchObject({ type: "stats", lines: 6 });
    expect(run.stderr).toBe("");
  }, CLI_TIMEOUT_MS);
});
