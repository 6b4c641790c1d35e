/**
 * Checks the line archive under Deno, whose driver is `node:sqlite`, and that an archive
 * written by Deno is readable by Bun (`bun:sqlite`) while Deno keeps it open.
 *
 * Run with `npx deno run -A tests/deno_archive_check.ts`. It runs every check, then exits with 1
 * if any failed.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ArchivedLine, LineArchive } from "../core/archive.ts";
import { openConnection } from "../core/archive_sqlite.ts";

const LOG_DIRECTORY = new URL("../../shared/data/logs/", import.meta.url).pathname;
const ARCHIVE_MODULE = new URL("../core/archive.ts", import.meta.url).pathname;
const BUN_EXECUTABLE = new URL("../node_modules/.bin/bun", import.meta.url).pathname;
const START_TIME = Date.UTC(2024, 5, 1);

function readRealLogLines(): string[] {
  const names = readdirSync(LOG_DIRECTORY).filter((name) => name.endsWith(".log")).sort();
  return names.flatMap((name) => readFileSync(join(LOG_DIRECTORY, name), "utf8").split(/\r?\n/).filter((line) => line !== ""));
}

function toArchivedLines(texts: string[], firstLineNumber = 1): ArchivedLine[] {
  return texts.map((text, i) => ({
    lineNumber: firstLineNumber + i,
    text,
    arrivalTime: START_TIME + i * 1000,
    streamOffset: i * 100,
  }));
}

const checks: [string, () => Promise<void>][] = [];
function check(name: string, body: () => Promise<void>): void {
  checks.push([name, body]);
}

check("planted line ranks first among real logs", async () => {
  const logLines = readRealLogLines();
  const texts = Array.from({ length: 20_000 }, (_, i) => logLines[i % logLines.length]);
  texts[4321] = "Jun  1 03:12:44 storage-7 kernel: [sdb] disk I/O error, sector 81920; RAID controller reports a failing drive";
  const archive = await LineArchive.open(undefined);
  try {
    archive.append(toArchivedLines(texts));
    const hits = archive.search("When did the disk I/O errors on the RAID controller start?", 3);
    assert.equal(hits[0].lineNumber, 4322);
    assert.equal(hits[0].text, texts[4321]);
    assert.ok(hits[0].score > hits[1].score);
  } finally {
    archive.close();
  }
});

check("FTS syntax in questions never throws", async () => {
  const archive = await LineArchive.open(undefined);
  try {
    archive.append(toArchivedLines(readRealLogLines().slice(0, 200)));
    for (const question of ['"', "*", "NEAR(a b, 2)", "AND", "OR OR", "(", "-x", "col:y", "^start", "\u0000", "e\u0301"]) {
      archive.search(question, 5);
    }
    assert.deepEqual(archive.search("?!", 5), []);
  } finally {
    archive.close();
  }
});

check("second connection sees only committed batches", async () => {
  const directory = mkdtempSync(join(tmpdir(), "sinkstream-deno-check-"));
  try {
    const path = join(directory, "archive.sqlite");
    const writer = await LineArchive.open(path);
    const reader = await LineArchive.open(path, { readOnly: true });
    writer.append(toArchivedLines(["first batch line"]));
    const countsDuringBatch: number[] = [];
    function* batch(): Generator<ArchivedLine> {
      for (const line of toArchivedLines(["second alpha", "second beta"], 2)) {
        yield line;
        countsDuringBatch.push(reader.count());
      }
    }
    writer.append(batch());
    assert.deepEqual(countsDuringBatch, [1, 1]);
    assert.equal(reader.count(), 3);
    reader.close();
    writer.close();
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

check("Bun reads an archive Deno writes", async () => {
  const directory = mkdtempSync(join(tmpdir(), "sinkstream-deno-check-"));
  try {
    const path = join(directory, "archive.sqlite");
    const writer = await LineArchive.open(path);
    writer.append(toArchivedLines(["zookeeper session expired", "sshd accepted key", "zookeeper leader elected"]));

    const script = join(directory, "reader.ts");
    writeFileSync(
      script,
      `import { LineArchive } from ${JSON.stringify(ARCHIVE_MODULE)};
const archive = await LineArchive.open(${JSON.stringify(path)}, { readOnly: true });
console.log(JSON.stringify(archive.search("zookeeper", 10).map((hit) => hit.lineNumber)));
archive.close();
`,
    );
    // The writer stays open, as a running `watch` would.
    const result = spawnSync(BUN_EXECUTABLE, [script], { encoding: "utf8" });
    writer.close();
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout), [1, 3]);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

check("reopen, schema version and prune", async () => {
  const directory = mkdtempSync(join(tmpdir(), "sinkstream-deno-check-"));
  try {
    const path = join(directory, "archive.sqlite");
    const first = await LineArchive.open(path);
    first.append(toArchivedLines(readRealLogLines().slice(0, 3000)));
    const fullSize = first.sizeBytes();
    first.close();

    let now = START_TIME + 3000 * 1000;
    const second = await LineArchive.open(path, { maxAgeSeconds: 2000, now: () => now });
    assert.equal(second.count(), 3000);
    assert.equal(second.prune(), 1000);
    now += 500 * 1000;
    assert.equal(second.prune(), 500);
    second.close();

    const third = await LineArchive.open(path, { maxBytes: fullSize / 4 });
    const deleted = third.prune();
    assert.ok(deleted > 0);
    assert.ok(third.sizeBytes() <= fullSize / 4);
    third.close();

    const connection = await openConnection(path, { readOnly: false });
    connection.exec("PRAGMA user_version = 99");
    connection.close();
    await assert.rejects(LineArchive.open(path), /current value is 99/);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

check("temporary archive disappears on close", async () => {
  const archive = await LineArchive.open(undefined);
  archive.append(toArchivedLines(["temporary"]));
  assert.ok(existsSync(archive.path));
  archive.close();
  assert.ok(!existsSync(join(archive.path, "..")));
});

check("writer flushes after the delay", async () => {
  const archive = await LineArchive.open(undefined);
  try {
    const writer = archive.createWriter({ maxLines: 100, maxDelayMs: 10 });
    writer.add(toArchivedLines(["late line"])[0]);
    assert.equal(archive.count(), 0);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(archive.count(), 1);
    writer.close();
  } finally {
    archive.close();
  }
});

let failures = 0;
for (const [name, body] of checks) {
  try {
    await body();
    console.log(`ok   ${name}`);
  } catch (error) {
    failures++;
    console.log(`FAIL ${name}`);
    console.log(error);
  }
}
console.log(`${checks.length - failures} passed, ${failures} failed`);
if (failures > 0) Deno.exit(1);
