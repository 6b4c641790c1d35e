import { afterEach, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ARCHIVE_SCHEMA_VERSION, type ArchivedLine, LineArchive, toMatchExpression } from "../core/archive.ts";
import { openConnection } from "../core/archive_sqlite.ts";
import { SinkstreamError } from "../core/errors.ts";

const LOG_DIRECTORY = new URL("../../shared/data/logs/", import.meta.url).pathname;
const ARCHIVE_MODULE = new URL("../core/archive.ts", import.meta.url).pathname;
const SECOND_PROCESS_TIMEOUT_MS = 30_000;
const START_TIME = Date.UTC(2024, 5, 1);

/** Reads every non-empty line of the real logs, without CRLF, in file order. */
function readRealLogLines(): string[] {
  const names = readdirSync(LOG_DIRECTORY).filter((name) => name.endsWith(".log")).sort();
  return names.flatMap((name) => readFileSync(join(LOG_DIRECTORY, name), "utf8").split(/\r?\n/).filter((line) => line !== ""));
}

/** Builds archive lines for `texts`, one second apart, with offsets of a stream of "text\n" lines. */
function toArchivedLines(texts: string[], firstLineNumber = 1): ArchivedLine[] {
  let offset = 0;
  return texts.map((text, i) => {
    const line = { lineNumber: firstLineNumber + i, text, arrivalTime: START_TIME + i * 1000, streamOffset: offset };
    offset += new TextEncoder().encode(text).length + 1;
    return line;
  });
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

async function openTemporary(options = {}): Promise<LineArchive> {
  const archive = await LineArchive.open(undefined, options);
  cleanups.push(() => archive.close());
  return archive;
}

function makeScratchDirectory(): string {
  const directory = mkdtempSync(join(tmpdir(), "sinkstream-archive-test-"));
  cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
  return directory;
}

describe("toMatchExpression", () => {
  test("no words gives empty expression", () => {
    expect(toMatchExpression("")).toBe("");
    expect(toMatchExpression("   \n\t")).toBe("");
    expect(toMatchExpression('"*:()-^+ ?!')).toBe("");
  });

  test("quotes terms and joins them with OR", () => {
    expect(toMatchExpression("disk errors")).toBe('"disk" OR "errors"');
  });

  test("drops stop words and single letters", () => {
    expect(toMatchExpression("when did the disk errors start? a x")).toBe('"disk" OR "errors" OR "start"');
  });

  test("keeps stop words when nothing else is left", () => {
    expect(toMatchExpression("what is it")).toBe('"what" OR "is" OR "it"');
  });

  test("adds identifiers as phrases", () => {
    expect(toMatchExpression("/dev/sda1 failed")).toBe('"dev sda1" OR "dev" OR "sda1" OR "failed"');
  });

  test("turns FTS operators into plain terms", () => {
    const expression = toMatchExpression('NEAR(kernel panic) AND text:oops NOT "x*"');
    // "and" and "not" are stop words, and "x" is a single letter.
    expect(expression).toBe('"near kernel" OR "near" OR "kernel" OR "panic" OR "text oops" OR "text" OR "oops"');
  });

  test("deduplicates case-insensitively", () => {
    expect(toMatchExpression("Error error ERROR")).toBe('"error"');
  });

  test("caps the number of terms", () => {
    const words = Array.from({ length: 100 }, (_, i) => `word${i}`);
    expect(toMatchExpression(words.join(" ")).split(" OR ").length).toBe(32);
  });
});

describe("LineArchive search", () => {
  test("planted line ranks first among real logs", async () => {
    const logLines = readRealLogLines();
    expect(logLines.length).toBeGreaterThan(10_000);
    const texts = Array.from({ length: 20_000 }, (_, i) => logLines[i % logLines.length]);
    const needleIndex = 12_345;
    texts[needleIndex] = "Jun  1 03:12:44 storage-7 kernel: [sdb] disk I/O error, sector 81920; RAID controller reports a failing drive";
    const archive = await openTemporary();
    archive.append(toArchivedLines(texts));

    const hits = archive.search("When did the disk I/O errors on the RAID controller start?", 5);

    expect(hits.length).toBe(5);
    expect(hits[0].lineNumber).toBe(needleIndex + 1);
    expect(hits[0].text).toBe(texts[needleIndex]);
    expect(hits[0].score).toBeGreaterThan(hits[1].score);
  });

  test("identifier query finds its lines first", async () => {
    const logLines = readRealLogLines();
    const blockId = logLines.join("\n").match(/blk_-\d+/)![0];
    const holders = logLines.filter((line) => line.includes(blockId));
    const archive = await openTemporary();
    archive.append(toArchivedLines(logLines));

    const hits = archive.search(`what happened to block ${blockId}?`, holders.length);

    expect(hits.length).toBe(holders.length);
    for (const hit of hits) expect(hit.text).toContain(blockId);
  });

  test("metadata round-trips and ties keep append order", async () => {
    const archive = await openTemporary();
    const lines: ArchivedLine[] = [
      { lineNumber: 7, text: "fan speed low\n", arrivalTime: 1_700_000_000_123, streamOffset: 0 },
      { lineNumber: 8, text: "unrelated line\n", arrivalTime: 1_700_000_000_456, streamOffset: 15 },
      { lineNumber: 9, text: "fan speed low\n", arrivalTime: 1_700_000_001_000, streamOffset: 31 },
      { lineNumber: 10, text: "café température élevée ⚠\n", arrivalTime: 1_700_000_002_000, streamOffset: 9_000_000_000 },
    ];
    archive.append(lines);

    expect(archive.count()).toBe(4);
    const fanHits = archive.search("fan", 10);
    expect(fanHits.map((hit) => hit.lineNumber)).toEqual([7, 9]);
    expect(fanHits[0].score).toBe(fanHits[1].score);
    const { score, ...fields } = fanHits[1];
    expect(fields).toEqual(lines[2]);
    expect(score).toBeGreaterThan(0);

    // remove_diacritics 2 folds accents in both the line and the question.
    const [accented] = archive.search("temperature elevee", 10);
    expect(accented).toEqual({ ...lines[3], score: accented.score });
  });

  test("stemming matches other word forms", async () => {
    const archive = await openTemporary();
    archive.append(toArchivedLines(["connection failed", "connecting to peer", "all good"]));

    const lineNumbers = archive.search("failures connect", 10).map((hit) => hit.lineNumber).sort();

    expect(lineNumbers).toEqual([1, 2]);
  });

  test("limit caps results and empty question returns none", async () => {
    const archive = await openTemporary();
    archive.append(toArchivedLines(Array.from({ length: 50 }, (_, i) => `worker ${i} started`)));

    expect(archive.search("worker", 3).length).toBe(3);
    expect(archive.search("worker", 0)).toEqual([]);
    expect(archive.search("", 10)).toEqual([]);
    expect(archive.search("?!", 10)).toEqual([]);
    expect(() => archive.search("worker", -1)).toThrow(
      "Invalid search limit: current value is -1; pass a whole number of at least 0",
    );
  });

  test("FTS syntax in questions never throws", async () => {
    const archive = await openTemporary();
    archive.append(toArchivedLines(readRealLogLines().slice(0, 500)));
    const questions = [
      '"',
      '""',
      '"unterminated',
      "*",
      "error*",
      "NEAR",
      "NEAR(error warning, 2)",
      "AND",
      "error AND",
      "OR OR OR",
      "NOT error",
      "(",
      "((error)",
      ")",
      "-",
      "-error",
      ":",
      "text:error",
      "{text}: error",
      "^error",
      "+error",
      "error + warning",
      "\u0000",
      "e\u0301",
      "😀 🔥",
      "' OR 1=1; DROP TABLE archived_lines; --",
      "[sdb]",
      "a".repeat(10_000),
    ];
    for (const question of questions) {
      expect(() => archive.search(question, 5)).not.toThrow();
    }

    // Random strings over FTS5 syntax characters, words and odd Unicode, with a fixed seed.
    const alphabet = ['"', "*", ":", "(", ")", "-", "+", "^", "{", "}", " ", "NEAR", "AND", "OR", "NOT", "error", "\u0301", "é", "_", ".", "/", "0"];
    let seed = 12345;
    const nextRandom = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 500; i++) {
      const length = 1 + Math.floor(nextRandom() * 12);
      const question = Array.from({ length }, () => alphabet[Math.floor(nextRandom() * alphabet.length)]).join("");
      expect(() => archive.search(question, 5)).not.toThrow();
    }
    expect(archive.count()).toBe(500);
  });
});

describe("LineArchive append", () => {
  test("invalid line rejects the whole batch", async () => {
    const archive = await openTemporary();
    const lines = toArchivedLines(["first", "second"]);
    const bad = { ...lines[1], streamOffset: -1 };

    expect(() => archive.append([lines[0], bad])).toThrow(
      "Invalid archived line stream offset: current value is -1; pass a byte offset of at least 0",
    );
    expect(archive.count()).toBe(0);
  });

  test("empty batch does nothing", async () => {
    const archive = await openTemporary();
    archive.append([]);
    expect(archive.count()).toBe(0);
  });
});

describe("LineArchive prune", () => {
  test("age limit deletes oldest lines", async () => {
    let now = START_TIME + 10_000;
    const archive = await openTemporary({ maxAgeSeconds: 5, now: () => now });
    archive.append(toArchivedLines(["l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "l10"]));

    // Lines arrived at START_TIME + 0 s … + 9 s, so the cutoff START_TIME + 5 s keeps lines 6 to 10.
    expect(archive.prune()).toBe(5);
    expect(archive.count()).toBe(5);
    expect(archive.search("l5", 10)).toEqual([]);
    expect(archive.search("l6", 10).map((hit) => hit.lineNumber)).toEqual([6]);

    expect(archive.prune()).toBe(0);

    now += 60_000;
    expect(archive.prune()).toBe(5);
    expect(archive.count()).toBe(0);
  });

  test("size limit deletes oldest lines and shrinks the file", async () => {
    const directory = makeScratchDirectory();
    const path = join(directory, "archive.sqlite");
    const texts = readRealLogLines().slice(0, 5_000);
    const writer = await LineArchive.open(path);
    writer.append(toArchivedLines(texts));
    const fullSize = writer.sizeBytes();
    writer.close();
    const fullFileSize = statSync(path).size;

    const maxBytes = Math.floor(fullSize / 2);
    const archive = await LineArchive.open(path, { maxBytes });
    const deleted = archive.prune();
    const remaining = archive.count();
    const sizeAfter = archive.sizeBytes();
    const oldest = archive.search(texts[deleted], 100).map((hit) => hit.lineNumber);
    archive.close();

    expect(deleted).toBeGreaterThan(0);
    expect(remaining).toBe(texts.length - deleted);
    expect(sizeAfter).toBeLessThanOrEqual(maxBytes);
    // The deleted lines are exactly the first `deleted` ones, so line `deleted + 1` survives.
    expect(oldest).toContain(deleted + 1);
    for (const lineNumber of oldest) expect(lineNumber).toBeGreaterThan(deleted);
    expect(statSync(path).size).toBeLessThan(fullFileSize);
  });

  test("size limit not reached deletes nothing", async () => {
    const archive = await openTemporary({ maxBytes: 100 * 1024 * 1024 });
    archive.append(toArchivedLines(["a line", "another line"]));
    expect(archive.prune()).toBe(0);
    expect(archive.count()).toBe(2);
  });

  test("invalid limits are rejected", async () => {
    await expect(LineArchive.open(undefined, { maxBytes: 0 })).rejects.toThrow(
      "Invalid archive size limit: current value is 0 bytes; pass a positive number",
    );
    await expect(LineArchive.open(undefined, { maxAgeSeconds: Number.NaN })).rejects.toThrow(
      "Invalid archive age limit: current value is NaN s; pass a positive number",
    );
  });
});

describe("LineArchive files", () => {
  test("temporary archive disappears on close", async () => {
    const archive = await LineArchive.open(undefined);
    archive.append(toArchivedLines(["temporary"]));
    const directory = join(archive.path, "..");
    expect(existsSync(archive.path)).toBe(true);

    archive.close();

    expect(existsSync(directory)).toBe(false);
    expect(() => archive.count()).toThrow("the archive is closed");
  });

  test("reopened archive keeps lines", async () => {
    const path = join(makeScratchDirectory(), "archive.sqlite");
    const first = await LineArchive.open(path);
    first.append(toArchivedLines(["zookeeper session expired", "sshd accepted key"]));
    first.close();

    const second = await LineArchive.open(path);
    second.append(toArchivedLines(["zookeeper leader elected"], 3));
    const hits = second.search("zookeeper", 10).map((hit) => hit.lineNumber);
    const count = second.count();
    second.close();

    expect(count).toBe(3);
    expect(hits.sort()).toEqual([1, 3]);
    expect(existsSync(path)).toBe(true);
  });

  test("schema version is stored", async () => {
    const path = join(makeScratchDirectory(), "archive.sqlite");
    (await LineArchive.open(path)).close();
    const connection = await openConnection(path, { readOnly: true });
    const row = connection.prepare("PRAGMA user_version").get();
    connection.close();
    expect(row?.user_version).toBe(ARCHIVE_SCHEMA_VERSION);
  });

  test("other schema version is rejected", async () => {
    const path = join(makeScratchDirectory(), "archive.sqlite");
    (await LineArchive.open(path)).close();
    const connection = await openConnection(path, { readOnly: false });
    connection.exec(`PRAGMA user_version = ${ARCHIVE_SCHEMA_VERSION + 1}`);
    connection.close();

    const opening = LineArchive.open(path);

    await expect(opening).rejects.toBeInstanceOf(SinkstreamError);
    await expect(opening).rejects.toThrow(
      `Unsupported line archive schema version in ${path}: current value is ${ARCHIVE_SCHEMA_VERSION + 1}, and this version of sinkstream reads version ${ARCHIVE_SCHEMA_VERSION}; delete the file or pass another path`,
    );
  });

  test("other database is rejected", async () => {
    const path = join(makeScratchDirectory(), "other.sqlite");
    const connection = await openConnection(path, { readOnly: false });
    connection.exec("CREATE TABLE notes (body TEXT)");
    connection.close();

    await expect(LineArchive.open(path)).rejects.toThrow(
      `Invalid line archive ${path}: the file is a database without a sinkstream archive schema; pass the path of an archive or of a new file`,
    );
  });

  test("non-database file is rejected", async () => {
    const path = join(makeScratchDirectory(), "notes.txt");
    writeFileSync(path, "just some text, long enough to fill a SQLite header of one hundred bytes. ".repeat(4));

    await expect(LineArchive.open(path)).rejects.toThrow(`Failed to open line archive ${path}:`);
  });

  test("read-only open needs an existing file", async () => {
    const path = join(makeScratchDirectory(), "missing.sqlite");
    await expect(LineArchive.open(path, { readOnly: true })).rejects.toThrow(
      `Line archive not found: current path is ${path}`,
    );
    expect(existsSync(path)).toBe(false);
  });
});

describe("LineArchive concurrent reader", () => {
  test("second connection sees only committed batches", async () => {
    const path = join(makeScratchDirectory(), "archive.sqlite");
    const writer = await LineArchive.open(path);
    cleanups.push(() => writer.close());
    const reader = await LineArchive.open(path, { readOnly: true });
    cleanups.push(() => reader.close());
    writer.append(toArchivedLines(["first batch line"]));
    expect(reader.count()).toBe(1);

    // The generator runs inside the writer's transaction, so the reader is checked mid-batch.
    const countsDuringBatch: number[] = [];
    function* batch(): Generator<ArchivedLine> {
      for (const line of toArchivedLines(["second batch alpha", "second batch beta", "second batch gamma"], 2)) {
        yield line;
        countsDuringBatch.push(reader.count());
        countsDuringBatch.push(reader.search("second", 10).length);
      }
    }
    writer.append(batch());

    expect(countsDuringBatch).toEqual([1, 0, 1, 0, 1, 0]);
    expect(reader.count()).toBe(4);
    expect(reader.search("second", 10).length).toBe(3);
    expect(() => reader.append(toArchivedLines(["x"]))).toThrow(
      `Failed to write line archive ${path}: it was opened read-only`,
    );
  });

  test(
    "second process sees only committed batches",
    async () => {
      const directory = makeScratchDirectory();
      const path = join(directory, "archive.sqlite");
      const batchSize = 1000;
      const batches = 20;
      const writer = await LineArchive.open(path);
      cleanups.push(() => writer.close());

      // The child polls count() until it reads the final count, then prints every distinct count it read.
      const childScript = join(directory, "reader.ts");
      writeFileSync(
        childScript,
        `import { LineArchive } from ${JSON.stringify(ARCHIVE_MODULE)};
const archive = await LineArchive.open(${JSON.stringify(path)}, { readOnly: true });
const seen = new Set<number>();
console.log("ready");
const deadline = Date.now() + ${SECOND_PROCESS_TIMEOUT_MS / 2};
while (Date.now() < deadline) {
  const count = archive.count();
  seen.add(count);
  if (count === ${batchSize * batches}) break;
}
archive.close();
console.log(JSON.stringify([...seen]));
`,
      );
      const child = spawn(process.execPath, [childScript], { stdio: ["ignore", "pipe", "inherit"] });
      let output = "";
      const ready = new Promise<void>((resolve) => {
        child.stdout.on("data", (chunk: Buffer) => {
          output += chunk.toString();
          if (output.includes("ready\n")) resolve();
        });
      });
      const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
      await ready;

      const logLines = readRealLogLines();
      for (let b = 0; b < batches; b++) {
        const texts = Array.from({ length: batchSize }, (_, i) => logLines[(b * batchSize + i) % logLines.length]);
        writer.append(toArchivedLines(texts, b * batchSize + 1));
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      expect(await exited).toBe(0);

      const seen = JSON.parse(output.split("\n").filter((line) => line.startsWith("["))[0]) as number[];
      expect(seen.at(-1)).toBe(batchSize * batches);
      for (const count of seen) expect(count % batchSize).toBe(0);
    },
    SECOND_PROCESS_TIMEOUT_MS,
  );
});

describe("ArchiveWriter", () => {
  test("flushes when the batch is full", async () => {
    const archive = await openTemporary();
    const writer = archive.createWriter({ maxLines: 3, maxDelayMs: 60_000 });
    const lines = toArchivedLines(["one", "two", "three", "four"]);

    writer.add(lines[0]);
    writer.add(lines[1]);
    expect(archive.count()).toBe(0);
    expect(writer.pendingLines).toBe(2);
    writer.add(lines[2]);
    expect(archive.count()).toBe(3);
    writer.add(lines[3]);
    expect(writer.pendingLines).toBe(1);

    writer.close();
    expect(archive.count()).toBe(4);
    expect(() => writer.add(lines[0])).toThrow("Failed to add a line: the archive writer is closed");
  });

  test("flushes after the delay", async () => {
    const archive = await openTemporary();
    const writer = archive.createWriter({ maxLines: 1000, maxDelayMs: 20 });
    writer.add(toArchivedLines(["late line"])[0]);
    expect(archive.count()).toBe(0);

    await new Promise((resolve) => setTimeout(resolve, 200));

    expect(archive.count()).toBe(1);
    expect(writer.pendingLines).toBe(0);
    writer.close();
  });

  test("copies lines when buffering", async () => {
    const archive = await openTemporary();
    const writer = archive.createWriter({ maxLines: 10 });
    const line = toArchivedLines(["original text"])[0];
    writer.add(line);
    line.text = "changed text";
    writer.close();

    expect(archive.search("original", 10).length).toBe(1);
    expect(archive.search("changed", 10).length).toBe(0);
  });

  test("prunes after each flush", async () => {
    let now = START_TIME;
    const archive = await openTemporary({ maxAgeSeconds: 10, now: () => now });
    const writer = archive.createWriter({ maxLines: 5 });
    const lines = toArchivedLines(Array.from({ length: 30 }, (_, i) => `tick ${i}`));

    for (const line of lines) {
      now = line.arrivalTime;
      writer.add(line);
    }
    writer.close();

    // At the last flush the clock reads START_TIME + 29 s, so lines before + 19 s are gone.
    expect(archive.count()).toBe(11);
    expect(archive.search("tick", 100).map((hit) => hit.lineNumber).sort((a, b) => a - b)[0]).toBe(20);
  });

  test("rejects invalid sizes", async () => {
    const archive = await openTemporary();
    expect(() => archive.createWriter({ maxLines: 0 })).toThrow(
      "Invalid writer batch size: current value is 0; pass a whole number of at least 1",
    );
  });
});
