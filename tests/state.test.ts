import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StateError } from "../core/errors.ts";
import { parseGguf } from "../core/gguf.ts";
import { KvKernel } from "../core/kv_kernel.ts";
import {
  captureState,
  decodeState,
  encodeState,
  modelFingerprint,
  readStateFile,
  restoreState,
  STATE_FILE_VERSION,
  writeStateFile,
} from "../core/stream_state.ts";
import { ropeInvFreq } from "../core/types.ts";
import { LineScorer } from "../pipelines/score.ts";
import { logLines, records, runCli, startCli, waitFor } from "./support/cli.ts";
import { STORIES_V1, STORIES_V3, storiesSession } from "./support/stories.ts";

const CLI_TIMEOUT_MS = 120_000;
const LOG = "OpenSSH_2k.log";
let scratch: string;

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "sinkstream-state-"));
});

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

const rope = { dim: 8, base: 10000, layout: "adjacent" as const, invFreq: ropeInvFreq(8, 10000) };
const kernelOptions = { layers: 2, kvHeads: 2, headDim: 8, sinks: 2, window: 5, rope };

/** Append `count` tokens whose keys and values are derived from their index. */
function push(kernel: KvKernel, first: number, count: number): void {
  kernel.evictFor(count);
  for (let layer = 0; layer < kernel.layers; layer++) {
    const key = new Float32Array(2 * count * 8).map((_, i) => Math.sin(first * 31 + i + layer));
    const value = new Float32Array(2 * count * 8).map((_, i) => Math.cos(first * 17 + i - layer));
    kernel.append(layer, key, value, count);
  }
  kernel.commit(count);
}

describe("KvKernel state export", () => {
  test("import continues identically", async () => {
    const original = await KvKernel.create(kernelOptions);
    const resumed = await KvKernel.create(kernelOptions);
    try {
      push(original, 0, 4);
      push(original, 4, 5);
      resumed.importState(original.exportState());
      expect(resumed.length).toBe(original.length);
      expect(resumed.totalEvicted).toBe(original.totalEvicted);
      expect(resumed.totalCommitted).toBe(original.totalCommitted);
      for (let step = 0; step < 4; step++) {
        push(original, 9 + step * 3, 3);
        push(resumed, 9 + step * 3, 3);
        original.preparePast();
        resumed.preparePast();
        for (let layer = 0; layer < 2; layer++) {
          expect(Array.from(resumed.pastKey(layer))).toEqual(Array.from(original.pastKey(layer)));
          expect(Array.from(resumed.pastValue(layer))).toEqual(Array.from(original.pastValue(layer)));
        }
      }
    } finally {
      original.dispose();
      resumed.dispose();
    }
  });

  test("import rejects other sizes", async () => {
    const source = await KvKernel.create(kernelOptions);
    const sameBytes = await KvKernel.create({ ...kernelOptions, sinks: 3, window: 4 });
    const otherBytes = await KvKernel.create({ ...kernelOptions, window: 6 });
    try {
      push(source, 0, 3);
      const state = source.exportState();
      expect(() => sameBytes.importState(state)).toThrow(
        "Failed to import the KV cache state: its sizes, version or counters do not match this cache",
      );
      expect(sameBytes.length).toBe(0);
      expect(() => otherBytes.importState(state)).toThrow(
        `Failed to import the KV cache state: current length is ${state.length} bytes`,
      );
    } finally {
      source.dispose();
      sameBytes.dispose();
      otherBytes.dispose();
    }
  });
});

describe("state file", () => {
  const sample = () => ({
    model: "sha256:abc",
    sizes: { sinks: 2, window: 5, chunkSize: 4 },
    stats: { tokensIngested: 9, tokensGenerated: 0, evictions: 2, ingestSeconds: 0.5, generateSeconds: 0 },
    kernel: new Uint8Array([1, 2, 3, 4, 5]),
    pipeline: { command: "score", scorer: { lines: 3, started: true } },
    blobs: { lastLogits: new Uint8Array([9, 8, 7]) },
  });

  test("encode and decode round trip", () => {
    const decoded = decodeState(encodeState(sample()), "x.state");
    expect(decoded).toEqual(sample());
  });

  test("damaged byte fails the checksum", () => {
    const bytes = encodeState(sample());
    bytes[20] ^= 1;
    expect(() => decodeState(bytes, "x.state")).toThrow(
      "Cannot resume from x.state: its checksum does not match, so the file is damaged; delete the state file to start over",
    );
  });

  test("other file types and versions rejected", () => {
    expect(() => decodeState(new TextEncoder().encode("Dec 10 06:55:46 LabSZ sshd[24200]: x\n".repeat(3)), "log"))
      .toThrow("Cannot resume from log: it is not a sinkstream state file");
    const bytes = encodeState(sample());
    new DataView(bytes.buffer).setUint32(8, 7, true);
    expect(() => decodeState(bytes, "v7")).toThrow(
      `its format version is 7, this sinkstream reads version ${STATE_FILE_VERSION}`,
    );
  });

  test("write is atomic and readable", async () => {
    const path = join(scratch, "atomic.state");
    expect(await readStateFile(path)).toBeUndefined();
    await writeStateFile(path, sample());
    await writeStateFile(path, { ...sample(), model: "sha256:def" });
    expect((await readStateFile(path))?.model).toBe("sha256:def");
    // No temporary file is left behind.
    expect(existsSync(join(scratch, `.atomic.state.${process.pid}.tmp`))).toBe(false);
  });

  test("fingerprint is the tensor data hash", async () => {
    const v1 = await modelFingerprint(STORIES_V1);
    expect(v1).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(await modelFingerprint(STORIES_V3)).toBe(v1);
    const changed = join(scratch, "changed.gguf");
    copyFileSync(STORIES_V1, changed);
    const bytes = new Uint8Array(readFileSync(changed));
    bytes[parseGguf(bytes).dataOffset + 100] ^= 1;
    writeFileSync(changed, bytes);
    expect(await modelFingerprint(changed)).not.toBe(v1);
  });

  test("restore rejects other model and sizes", async () => {
    const { session } = await storiesSession({ sinks: 4, window: 60, chunkSize: 8 });
    const state = captureState(session, "sha256:one", { command: "score" });
    expect(() => restoreState(session, state, "sha256:two", "s.state")).toThrow(StateError);
    expect(() => restoreState(session, state, "sha256:two", "s.state")).toThrow(
      "Cannot resume from s.state: it was saved with another model (sha256:one, this one is sha256:two)",
    );
    const { session: wider } = await storiesSession({ sinks: 4, window: 61, chunkSize: 8 });
    expect(() => restoreState(wider, state, "sha256:one", "s.state")).toThrow(
      "Cannot resume from s.state: it was saved with --sinks 4 --window 60 --chunk 8, current values are 4, 61 and 8",
    );
  });
});

describe("resumed stream", () => {
  test("scorer state resumes identical scores", async () => {
    const lines = logLines(LOG, 0, 30).split(/(?<=\n)/);
    const { model, session } = await storiesSession({ sinks: 4, window: 100, chunkSize: 16 });
    const whole = new LineScorer(model, session);
    const expected = [];
    for (const line of lines) expected.push(await whole.addLine(line));

    const first = await storiesSession({ sinks: 4, window: 100, chunkSize: 16 });
    const before = new LineScorer(first.model, first.session);
    for (const line of lines.slice(0, 12)) await before.addLine(line);
    const saved = decodeState(
      encodeState(captureState(first.session, "m", { scorer: before.exportState().state }, {
        lastLogits: before.exportState().lastLogits!,
      })),
      "mem",
    );

    const second = await storiesSession({ sinks: 4, window: 100, chunkSize: 16 });
    restoreState(second.session, saved, "m", "mem");
    const after = new LineScorer(second.model, second.session);
    after.importState(saved.pipeline.scorer as { lines: number; started: boolean }, saved.blobs.lastLogits);
    const resumed = [];
    for (const line of lines.slice(12)) resumed.push(await after.addLine(line));
    expect(resumed).toEqual(expected.slice(12));
    expect(second.session.stats.tokensIngested).toBe(session.stats.tokensIngested);
  }, CLI_TIMEOUT_MS);

  test("CLI score resumes identically", async () => {
    const path = join(scratch, "score.state");
    const args = ["score", "--model", STORIES_V1, "--json", "--quiet", "--window", "60", "--chunk", "16", "--state", path];
    const whole = await runCli("bun", args.slice(0, -2), logLines(LOG, 0, 14));
    expect(whole.code).toBe(0);
    const first = await runCli("bun", args, logLines(LOG, 0, 8));
    expect(first.code).toBe(0);
    const second = await runCli("bun", args, logLines(LOG, 8, 14));
    expect(second.code).toBe(0);
    const lineRecords = (stdout: string) => records(stdout).filter((record) => record.type === "line");
    expect(lineRecords(second.stdout)).toEqual(lineRecords(whole.stdout).slice(8));
    expect(lineRecords(second.stdout)[0].line).toBe(9);
  }, CLI_TIMEOUT_MS);

  test("save-every survives a kill", async () => {
    const path = join(scratch, "killed.state");
    const base = ["score", "--model", STORIES_V1, "--json", "--quiet", "--window", "60"];
    const whole = await runCli("bun", base, logLines(LOG, 0, 14));
    const cli = startCli("bun", [...base, "--state", path, "--save-every", "4"]);
    cli.child.stdin.write(logLines(LOG, 0, 10));
    await waitFor(() => records(cli.stdout()).length >= 10, CLI_TIMEOUT_MS / 2, "10 scored lines");
    cli.child.kill("SIGKILL");
    await cli.done;
    const saved = await readStateFile(path);
    const done = (saved!.pipeline.scorer as { lines: number }).lines;
    expect([4, 8]).toContain(done);

    const resumed = await runCli("bun", [...base, "--state", path], logLines(LOG, done, 14));
    expect(resumed.code).toBe(0);
    const lineRecords = (stdout: string) => records(stdout).filter((record) => record.type === "line");
    expect(lineRecords(resumed.stdout)).toEqual(lineRecords(whole.stdout).slice(done));
  }, CLI_TIMEOUT_MS);

  test("CLI rejects state of other sizes and model", async () => {
    const path = join(scratch, "sizes.state");
    const made = await runCli("bun", ["score", "--model", STORIES_V1, "--quiet", "--window", "124", "--state", path], logLines(LOG, 0, 3));
    expect(made.code).toBe(0);
    const wider = await runCli("bun", ["score", "--model", STORIES_V1, "--window", "200", "--state", path], logLines(LOG, 3, 5));
    expect(wider.code).toBe(6);
    expect(wider.stderr).toMatch(/^sinkstream: Cannot resume from .*sizes.state: it was saved with --sinks 4 --window 124 --chunk 32, current values are 4, 200 and 32; /);
    expect(wider.stderr.trim().split("\n")).toHaveLength(1);

    const changed = join(scratch, "other-model.gguf");
    copyFileSync(STORIES_V1, changed);
    const bytes = new Uint8Array(readFileSync(changed));
    bytes[parseGguf(bytes).dataOffset + 100] ^= 1;
    writeFileSync(changed, bytes);
    const other = await runCli("bun", ["score", "--model", changed, "--window", "124", "--state", path], logLines(LOG, 3, 5));
    expect(other.code).toBe(6);
    expect(other.stderr).toMatch(/it was saved with another model \(sha256:[0-9a-f]+, this one is sha256:[0-9a-f]+\); use the same --model/);
    expect(other.stdout).toBe("");

    const watch = await runCli("bun", ["watch", "--model", STORIES_V1, "--window", "124", "--state", path], "");
    expect(watch.code).toBe(6);
    expect(watch.stderr).toContain('it was saved by the "score" command, not "watch"');
  }, CLI_TIMEOUT_MS);
});

describe("state path", () => {
  test("unwritable folder fails before reading input", async () => {
    const run = await runCli("bun", ["score", "--model", STORIES_V1, "--state", "/nonexistent-folder/x.state"], "one line\n");
    expect(run.code).toBe(4);
    expect(run.stderr).toContain("Cannot write the state file /nonexistent-folder/x.state: the folder /nonexistent-folder does not exist");
    expect(run.stdout).toBe("");
  }, 60_000);
});
