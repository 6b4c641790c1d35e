import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFileSync, mkdtempSync, renameSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileFollower } from "../core/follow.ts";
import { logLines, records, startCli, waitFor } from "./support/cli.ts";
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
