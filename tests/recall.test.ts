import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LineArchive } from "../core/archive.ts";
import { openConnection } from "../core/archive_sqlite.ts";
import type { LoadedModel } from "../core/model.ts";
import { formatRecalledLine, renderPrompt } from "../core/prompt.ts";
import { Sampler } from "../core/sampler.ts";
import type { StreamingSession } from "../core/session.ts";
import { parseAge, parseByteSize } from "../cli/archive_options.ts";
import { type Answer, runAnswerStream } from "../pipelines/answer_stream.ts";
import { LineArchiver, utf8Length } from "../pipelines/line_archiver.ts";
import { promptTokenBudget, recallForPrompt, recallQueryFor, SUMMARY_RECALL_QUERY } from "../pipelines/recall.ts";
import { Watcher } from "../pipelines/watch.ts";
import { LOG_NAMES, LOGS_DIR, STORIES_V1, storiesSession } from "./support/stories.ts";

const STREAM_TIMEOUT_MS = 120_000;
const CLI_TIMEOUT_MS = 120_000;
const ROOT = new URL("..", import.meta.url).pathname;
const BUN = [`${ROOT}node_modules/.bin/bun`, "cli/main.ts"];
const DENO = [`${ROOT}node_modules/.bin/deno`, "run", "-A", "cli/main.ts"];

const SINKS = 4;
const WINDOW = 252;
/** The needle must be followed by at least this many windows of stream tokens. */
const WINDOWS_AFTER_NEEDLE = 100;
const NEEDLE_LINE_NUMBER = 21;
const NEEDLE = "Jun 14 15:20:44 combo kernel: raid controller zq7731 reported checksum mismatch on volume orchid\n";
const QUESTION = "Which raid controller reported a checksum mismatch on volume orchid?";
const MAX_TOKENS = 4;

/** Reads every line of the real logs in file order, with CRLF turned into LF as the command line does. */
function realLogLines(): string[] {
  return LOG_NAMES.flatMap((name) =>
    readFileSync(LOGS_DIR + name, "utf8").replaceAll("\r\n", "\n").split(/(?<=\n)/).filter((line) => line !== "")
  );
}

/**
 * Returns real log lines with the needle planted as line {@linkcode NEEDLE_LINE_NUMBER}, followed by
 * lines until at least `tokensAfter` tokens come after the needle.
 */
function needleStream(model: LoadedModel, tokensAfter: number): string[] {
  const logLines = realLogLines();
  const lines = [...logLines.slice(0, NEEDLE_LINE_NUMBER - 1), NEEDLE];
  let tokens = 0;
  for (let i = NEEDLE_LINE_NUMBER - 1; tokens < tokensAfter; i++) {
    const line = logLines[i % logLines.length];
    lines.push(line);
    tokens += model.tokenizer.encode(line, { addBos: false, addSpacePrefix: false }).length;
  }
  return lines;
}

async function* iterate(lines: string[]): AsyncGenerator<string> {
  yield* lines;
}

/** Reads every archived row in append order through a second connection. */
async function archivedRows(path: string) {
  const connection = await openConnection(path, { readOnly: true });
  try {
    return connection
      .prepare("SELECT line_number, arrival_time, stream_offset, text FROM archived_lines ORDER BY id")
      .all()
      .map((row) => ({
        lineNumber: Number(row.line_number),
        arrivalTime: Number(row.arrival_time),
        streamOffset: Number(row.stream_offset),
        text: String(row.text),
      }));
  } finally {
    connection.close();
  }
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the command line with `input` on stdin, written in `chunks` pieces `delayMs` apart. */
function runCli(command: string[], args: string[], input = "", chunks = 1, delayMs = 0): Promise<Run> {
  const [program, ...prefix] = command;
  const child = spawn(program, [...prefix, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => (stdout += chunk));
  child.stderr.on("data", (chunk) => (stderr += chunk));
  child.stdin.on("error", () => {});
  const closed = new Promise<Run>((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
  void (async () => {
    const size = Math.ceil(input.length / chunks);
    for (let start = 0; start < input.length; start += size) {
      child.stdin.write(input.slice(start, start + size));
      if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
    child.stdin.end();
  })();
  return closed;
}

function records(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split("\n").filter((line) => line !== "").map((line) => JSON.parse(line));
}

const scratch = mkdtempSync(join(tmpdir(), "sinkstream-recall-test-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe("recall in an answer stream", () => {
  let model: LoadedModel;
  let session: StreamingSession;
  let lines: string[];
  let answer: Answer;
  const archivePath = join(scratch, "stream.sqlite");

  beforeAll(async () => {
    ({ model, session } = await storiesSession({ sinks: SINKS, window: WINDOW }));
    lines = needleStream(model, WINDOWS_AFTER_NEEDLE * WINDOW);
    const archive = await LineArchive.open(archivePath);
    const archiver = new LineArchiver(archive.createWriter(), { sinks: SINKS });
    try {
      [answer] = await runAnswerStream(model, session, iterate(lines), {
        request: { kind: "answer", question: QUESTION },
        maxTokens: MAX_TOKENS,
        sampler: new Sampler({ temperature: 0 }),
        archiver,
        recall: { archive, limit: 5 },
      });
      archiver.writer.close();
    } finally {
      archive.close();
    }
  }, STREAM_TIMEOUT_MS);

  test("needle comes 100 windows before the question", () => {
    const needleEnd = lines.slice(0, NEEDLE_LINE_NUMBER).reduce(
      (sum, line, i) => sum + model.tokenizer.encode(line, { addBos: i === 0, addSpacePrefix: i === 0 }).length,
      0,
    );
    expect(session.stats.tokensIngested - needleEnd).toBeGreaterThanOrEqual(WINDOWS_AFTER_NEEDLE * WINDOW);
    expect(session.cacheLength).toBe(SINKS + WINDOW);
  });

  test("needle is recalled and ranked first", () => {
    expect(answer.recalled.length).toBeGreaterThan(0);
    expect(answer.recalled[0].rank).toBe(1);
    expect(answer.recalled[0].lineNumber).toBe(NEEDLE_LINE_NUMBER);
    expect(answer.recalled[0].text).toBe(NEEDLE);
    expect(answer.recalled[0].streamOffset).toBe(lines.slice(0, NEEDLE_LINE_NUMBER - 1).reduce((sum, line) => sum + utf8Length(line), 0));
  });

  test("recalled lines are ranked best first", () => {
    const ranks = answer.recalled.map((hit) => hit.rank);
    expect(ranks).toEqual([...ranks].sort((a, b) => a - b));
    for (let i = 1; i < answer.recalled.length; i++) {
      expect(answer.recalled[i].score).toBeLessThanOrEqual(answer.recalled[i - 1].score);
    }
  });

  test("prompt holds the needle within the budget", () => {
    const prompt = renderPrompt({ kind: "answer", question: QUESTION }, model.chatTemplate, {}, answer.recalled);
    expect(prompt).toContain(formatRecalledLine(answer.recalled[0]));
    expect(prompt).toContain(`[line ${NEEDLE_LINE_NUMBER}, `);
    expect(prompt.indexOf("raid controller zq7731")).toBeLessThan(prompt.indexOf(QUESTION));
    expect(answer.promptTokens).toBeLessThanOrEqual(promptTokenBudget(WINDOW, MAX_TOKENS));
    expect(answer.promptTokens + MAX_TOKENS - 1).toBeLessThanOrEqual(WINDOW);
  });

  test("cache is rolled back after the answer", () => {
    expect(session.cacheLength).toBe(SINKS + WINDOW);
    expect(session.stats.tokensGenerated).toBeGreaterThan(0);
  });

  test("evicted lines are archived once, in order", async () => {
    const rows = await archivedRows(archivePath);

    // Independently: a line has left the window once its last token index is below sinks + evictions.
    const horizon = SINKS + session.stats.evictions;
    let end = 0;
    let expectedCount = 0;
    let offset = 0;
    const offsets: number[] = [];
    lines.forEach((line, i) => {
      end += model.tokenizer.encode(line, { addBos: i === 0, addSpacePrefix: i === 0 }).length;
      offsets.push(offset);
      offset += utf8Length(line);
      if (end <= horizon) expectedCount = i + 1;
    });

    expect(rows.length).toBe(expectedCount);
    expect(rows.length).toBeLessThan(lines.length);
    expect(rows.map((row) => row.lineNumber)).toEqual(Array.from({ length: expectedCount }, (_, i) => i + 1));
    expect(rows.map((row) => row.text)).toEqual(lines.slice(0, expectedCount));
    expect(rows.map((row) => row.streamOffset)).toEqual(offsets.slice(0, expectedCount));
    for (let i = 1; i < rows.length; i++) expect(rows[i].arrivalTime).toBeGreaterThanOrEqual(rows[i - 1].arrivalTime);
  });
});

describe("recall in watch", () => {
  test("watcher recalls the needle in its answers", async () => {
    const { model, session } = await storiesSession({ sinks: SINKS, window: WINDOW });
    const lines = needleStream(model, WINDOWS_AFTER_NEEDLE * WINDOW);
    const archive = await LineArchive.open(undefined);
    try {
      const archiver = new LineArchiver(archive.createWriter(), { sinks: SINKS });
      const watcher = new Watcher(model, session, {
        request: { kind: "answer", question: QUESTION },
        maxTokens: MAX_TOKENS,
        sampler: new Sampler({ temperature: 0 }),
        every: Math.floor(lines.length / 2),
        archiver,
        recall: { archive, limit: 3 },
      });
      const events = [];
      for (const line of lines) {
        await watcher.addLine(line);
      }
      events.push(await watcher.finish());
      expect(events[0]?.answer.recalled[0]).toMatchObject({ rank: 1, lineNumber: NEEDLE_LINE_NUMBER, text: NEEDLE });

      // Every line whose tokens all left the window is archived once, in order, under its own number.
      archiver.flush();
      const rows = await archivedRows(archive.path);
      expect(rows.length).toBeGreaterThan(lines.length / 2);
      expect(rows.length).toBeLessThan(lines.length);
      expect(rows.map((row) => row.lineNumber)).toEqual(Array.from({ length: rows.length }, (_, i) => i + 1));
      expect(rows.map((row) => row.text)).toEqual(lines.slice(0, rows.length));
    } finally {
      archive.close();
    }
  }, STREAM_TIMEOUT_MS);
});

describe("renderPrompt with recalled lines", () => {
  const recalled = [
    { lineNumber: 7, arrivalTime: Date.UTC(2026, 0, 31, 12, 0, 0, 250), text: "disk sda1 failed\n" },
    { lineNumber: 3, arrivalTime: Date.UTC(2026, 0, 31, 11, 59, 0), text: "disk sda1 slow" },
  ];

  test("plain framing lists lines before the question", () => {
    const prompt = renderPrompt({ kind: "answer", question: "Which disk failed?" }, undefined, {}, recalled);
    expect(prompt).toBe(
      "\n\nRecalled earlier lines:\n[line 7, 2026-01-31T12:00:00Z] disk sda1 failed\n[line 3, 2026-01-31T11:59:00Z] disk sda1 slow\n" +
        "\nQuestion about the text above: Which disk failed?\nAnswer:",
    );
  });

  test("no lines keeps the plain prompt", () => {
    expect(renderPrompt({ kind: "summary" }, undefined, {}, [])).toBe("\n\nSummary of the text above:\n");
  });

  test("chat template gets lines in the user turn", () => {
    const template = "{{ bos_token }}{% for message in messages %}<|user|>{{ message.content }}<|end|>{% endfor %}<|assistant|>";
    const prompt = renderPrompt({ kind: "answer", question: "Which disk failed?" }, template, { bos: "<s>" }, recalled);
    expect(prompt).toBe(
      "\n<|user|>Recalled earlier lines:\n[line 7, 2026-01-31T12:00:00Z] disk sda1 failed\n[line 3, 2026-01-31T11:59:00Z] disk sda1 slow\n\n" +
        "Answer this question about the text above: Which disk failed?<|end|><|assistant|>",
    );
  });
});

describe("recallForPrompt", () => {
  /** A prompt encoder that counts one token per character, with a 10-character frame. */
  const encode = (lines: readonly { text: string }[]) =>
    Array.from({ length: 10 + lines.reduce((sum, line) => sum + line.text.length + 5, 0) }, () => 0);
  const count = (text: string) => text.length;

  async function archiveOf(texts: string[]) {
    const archive = await LineArchive.open(undefined);
    archive.append(texts.map((text, i) => ({ lineNumber: i + 1, text, arrivalTime: 0, streamOffset: 0 })));
    return archive;
  }

  test("skips a line that does not fit", async () => {
    const archive = await archiveOf(["disk disk disk failure " + "x".repeat(200), "disk failure", "disk ok"]);
    try {
      const result = recallForPrompt({ archive, limit: 3 }, { kind: "answer", question: "disk failure" }, 120, encode, count);
      expect(result.lines.map((hit) => hit.lineNumber)).toEqual([2, 3]);
      expect(result.lines.map((hit) => hit.rank)).toEqual([1, 3]);
      expect(result.droppedForBudget).toBe(1);
      expect(result.promptIds.length).toBeLessThanOrEqual(120);
    } finally {
      archive.close();
    }
  });

  test("no room returns the bare prompt", async () => {
    const archive = await archiveOf(["disk failure"]);
    try {
      const result = recallForPrompt({ archive, limit: 3 }, { kind: "answer", question: "disk failure" }, 10, encode, count);
      expect(result.lines).toEqual([]);
      expect(result.promptIds.length).toBe(10);
      expect(result.droppedForBudget).toBe(1);
    } finally {
      archive.close();
    }
  });

  test("budget leaves room for the answer", () => {
    expect(promptTokenBudget(252, 4)).toBe(249);
    expect(promptTokenBudget(252, 1)).toBe(252);
    expect(promptTokenBudget(100, 128)).toBe(-27);
  });
});

describe("LineArchiver", () => {
  async function archiverWith(options: { maxBytes?: number; maxAgeSeconds?: number; now?: () => number }) {
    const archive = await LineArchive.open(undefined, options);
    const archiver = new LineArchiver(archive.createWriter({ maxLines: 50 }), { sinks: 4, now: options.now });
    return { archive, archiver };
  }

  test("lines inside the sinks are never archived", async () => {
    const { archive, archiver } = await archiverWith({});
    try {
      archiver.track("a\n", 2); // tokens 0-1, inside the sinks
      archiver.track("b\n", 2); // tokens 2-3, inside the sinks
      archiver.track("c\n", 3); // tokens 4-6
      archiver.track("d\n", 3); // tokens 7-9
      expect(archiver.release(0)).toBe(0);
      expect(archiver.release(2)).toBe(0); // token 6 is still cached
      expect(archiver.release(3)).toBe(1);
      expect(archiver.sinkLines).toBe(2);
      archiver.flush();
      expect(archive.search("c", 10).map((hit) => hit.lineNumber)).toEqual([3]);
      expect(archive.count()).toBe(1);
    } finally {
      archive.close();
    }
  });

  test("line straddling the sinks is archived when its window part leaves", async () => {
    const { archive, archiver } = await archiverWith({});
    try {
      archiver.track("first line\n", 10); // tokens 0-9: 0-3 are sinks
      expect(archiver.release(5)).toBe(0);
      expect(archiver.release(6)).toBe(1);
      expect(archiver.release(60)).toBe(0);
      expect(archiver.archivedLines).toBe(1);
    } finally {
      archive.close();
    }
  });

  test("busy stream flushes after the delay without a timer", async () => {
    const archive = await LineArchive.open(undefined);
    try {
      const writer = archive.createWriter({ maxLines: 1000, maxDelayMs: 20 });
      const line = { lineNumber: 1, text: "first\n", arrivalTime: Date.now(), streamOffset: 0 };
      writer.add(line);
      const started = performance.now();
      while (performance.now() - started < 30) {
        // Busy, as an ingest loop is: the event loop cannot run the writer's timer.
      }
      expect(archive.count()).toBe(0);
      writer.add({ ...line, lineNumber: 2, streamOffset: 6 });
      expect(archive.count()).toBe(2);
      expect(writer.pendingLines).toBe(0);
    } finally {
      archive.close();
    }
  });

  test("releaseAll archives the lines still cached", async () => {
    const { archive, archiver } = await archiverWith({});
    try {
      archiver.track("alpha\n", 2);
      archiver.track("beta\n", 5);
      expect(archiver.releaseAll()).toBe(2);
      expect(archive.count()).toBe(2);
      expect(archiver.pendingLines).toBe(0);
    } finally {
      archive.close();
    }
  });

  test("size bound evicts oldest lines first", async () => {
    const logLines = realLogLines().slice(0, 4000);
    const maxBytes = 256 * 1024;
    const { archive, archiver } = await archiverWith({ maxBytes });
    try {
      for (const line of logLines) archiver.track(line, 10);
      archiver.release(logLines.length * 10);
      archiver.flush();
      const rows = await archivedRows(archive.path);
      expect(archive.sizeBytes()).toBeLessThanOrEqual(maxBytes);
      expect(rows.length).toBeGreaterThan(0);
      expect(rows.length).toBeLessThan(logLines.length);
      // What is left is the newest lines, without gaps.
      const first = rows[0].lineNumber;
      expect(first).toBeGreaterThan(1);
      expect(rows.map((row) => row.lineNumber)).toEqual(Array.from({ length: rows.length }, (_, i) => first + i));
      expect(rows.at(-1)!.lineNumber).toBe(logLines.length);
      expect(rows.at(-1)!.text).toBe(logLines.at(-1)!);
    } finally {
      archive.close();
    }
  });

  test("age bound evicts oldest lines first", async () => {
    let clock = Date.UTC(2026, 0, 1);
    const now = () => clock;
    const { archive, archiver } = await archiverWith({ maxAgeSeconds: 100, now });
    try {
      const logLines = realLogLines().slice(0, 500);
      for (const line of logLines) {
        archiver.track(line, 10);
        archiver.release(logLines.length * 10);
        clock += 1000;
      }
      archiver.flush();
      clock -= 1000; // the time of the last line
      archive.prune();
      const rows = await archivedRows(archive.path);
      expect(rows.length).toBe(101);
      expect(rows[0].lineNumber).toBe(logLines.length - 100);
      expect(rows.at(-1)!.lineNumber).toBe(logLines.length);
      for (const row of rows) expect(clock - row.arrivalTime).toBeLessThanOrEqual(100_000);
    } finally {
      archive.close();
    }
  });
});

describe("recall options", () => {
  test("byte sizes accept binary suffixes", () => {
    expect(parseByteSize("500000")).toBe(500_000);
    expect(parseByteSize("64k")).toBe(65_536);
    expect(parseByteSize("16M")).toBe(16 * 2 ** 20);
    expect(parseByteSize("2GiB")).toBe(2 * 2 ** 30);
    expect(() => parseByteSize("0")).toThrow('Invalid archive size limit: current value is "0"');
    expect(() => parseByteSize("ten")).toThrow('Invalid archive size limit: current value is "ten"');
  });

  test("ages accept time units", () => {
    expect(parseAge("90")).toBe(90);
    expect(parseAge("15m")).toBe(900);
    expect(parseAge("12h")).toBe(43_200);
    expect(parseAge("7d")).toBe(604_800);
    expect(() => parseAge("-1")).toThrow('Invalid archive age limit: current value is "-1"');
  });

  test("summary searches for trouble words", () => {
    expect(recallQueryFor({ kind: "summary" })).toBe(SUMMARY_RECALL_QUERY);
    expect(recallQueryFor({ kind: "answer", question: QUESTION })).toBe(QUESTION);
  });
});

describe("recall on the command line", () => {
  const archivePath = join(scratch, "restart.sqlite");
  let firstRunLines: string[];

  test("needle is recalled after a restart", async () => {
    const { model } = await storiesSession({ sinks: SINKS, window: WINDOW });
    firstRunLines = needleStream(model, WINDOWS_AFTER_NEEDLE * WINDOW);
    const common = ["--model", STORIES_V1, "--sinks", String(SINKS), "--window", String(WINDOW), "--max-tokens", String(MAX_TOKENS), "--archive", archivePath];

    const first = await runCli(BUN, ["ask", QUESTION, ...common, "--recall", "0", "--json"], firstRunLines.join(""));
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(records(first.stdout)[0].recalled).toBeUndefined();
    // At exit the archive also receives the lines still in the cache.
    expect((await archivedRows(archivePath)).length).toBe(firstRunLines.length);

    const secondRunLines = realLogLines().slice(-40);
    const second = await runCli(BUN, ["ask", QUESTION, ...common, "--recall", "3", "--json"], secondRunLines.join(""));
    expect(second.code).toBe(0);
    const [reply, stats] = records(second.stdout);
    const recalled = reply.recalled as Record<string, unknown>[];
    expect(recalled[0]).toMatchObject({ rank: 1, line: NEEDLE_LINE_NUMBER, text: NEEDLE.trimEnd() });
    expect(typeof recalled[0].time).toBe("string");
    expect(stats.archived_lines).toBe(secondRunLines.length);
  }, CLI_TIMEOUT_MS);

  test("watch recalls and archives every line", async () => {
    const path = join(scratch, "watch.sqlite");
    const lines = [...realLogLines().slice(0, NEEDLE_LINE_NUMBER - 1), NEEDLE, ...realLogLines().slice(3000, 3100)];
    const run = await runCli(
      BUN,
      ["watch", "--ask", QUESTION, "--model", STORIES_V1, "--sinks", String(SINKS), "--window", String(WINDOW), "--max-tokens", "2", "--archive", path, "--recall", "2", "--json", "--quiet"],
      lines.join(""),
    );
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    const [final] = records(run.stdout).filter((record) => record.reason === "final");
    expect((final.recalled as Record<string, unknown>[])[0]).toMatchObject({ rank: 1, line: NEEDLE_LINE_NUMBER, text: NEEDLE.trimEnd() });
    expect(typeof final.recall_dropped).toBe("number");

    const rows = await archivedRows(path);
    expect(rows.map((row) => row.lineNumber)).toEqual(Array.from({ length: lines.length }, (_, i) => i + 1));
    expect(rows.map((row) => row.text)).toEqual(lines);
  }, CLI_TIMEOUT_MS);

  test("recall command ranks the needle first", async () => {
    const json = await runCli(BUN, ["recall", "checksum mismatch zq7731", "--archive", archivePath, "--json", "-k", "3"]);
    expect(json.stderr).toBe("");
    expect(json.code).toBe(0);
    const hits = records(json.stdout);
    expect(hits.length).toBeGreaterThan(0);
    expect(hits[0]).toMatchObject({ rank: 1, line: NEEDLE_LINE_NUMBER, text: NEEDLE.trimEnd() });

    const text = await runCli(DENO, ["recall", "raid controller on volume orchid", "--archive", archivePath, "-k", "1"]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^${NEEDLE_LINE_NUMBER}\\t\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z\\t${NEEDLE.trimEnd()}\\n$`));
  }, CLI_TIMEOUT_MS);

  test("recall command reports a missing archive", async () => {
    const run = await runCli(BUN, ["recall", "disk", "--archive", join(scratch, "missing.sqlite")]);
    expect(run.code).toBe(4);
    expect(run.stderr).toMatch(/^sinkstream: Line archive not found: current path is .*missing\.sqlite\n$/);
    const usage = await runCli(BUN, ["recall", "disk"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^sinkstream: Missing archive: pass --archive PATH/);
  }, CLI_TIMEOUT_MS);

  test("recall while a writer writes sees whole batches", async () => {
    const path = join(scratch, "concurrent.sqlite");
    // Create the schema first, so every read finds an archive.
    (await LineArchive.open(path)).close();
    // Lines arrive more slowly than they are ingested, so the writer goes idle between
    // chunks and its timer commits batches smaller than its size limit.
    const input = readFileSync(LOGS_DIR + "Linux_2k.log", "utf8").replaceAll("\r\n", "\n").split(/(?<=\n)/).slice(0, 200);

    const writer = runCli(
      BUN,
      ["summarize", "--model", STORIES_V1, "--sinks", String(SINKS), "--window", String(WINDOW), "--max-tokens", "1", "--archive", path, "--recall", "0", "--quiet"],
      input.join(""),
      20,
      400,
    );
    let writerDone = false;
    void writer.then(() => (writerDone = true));

    const counts: number[] = [];
    const check = (run: Run) => {
      expect(run.stderr).toBe("");
      expect(run.code).toBe(0);
      const lineNumbers = records(run.stdout).map((hit) => hit.line as number).sort((a, b) => a - b);
      // Batches are appended in line order, so a consistent read is lines 1..n without gaps.
      expect(lineNumbers).toEqual(Array.from({ length: lineNumbers.length }, (_, i) => i + 1));
      for (const hit of records(run.stdout)) expect(hit.text).toBe(input[(hit.line as number) - 1].replace(/\n$/, ""));
      counts.push(lineNumbers.length);
    };
    while (!writerDone) check(await runCli(BUN, ["recall", "combo", "--archive", path, "--json", "-k", "100000"]));
    expect((await writer).code).toBe(0);
    check(await runCli(BUN, ["recall", "combo", "--archive", path, "--json", "-k", "100000"]));

    expect(counts.at(-1)).toBe(input.length);
    expect(counts).toEqual([...counts].sort((a, b) => a - b));
    // At least one read happened between the first and the last batch.
    expect(counts.some((count) => count > 0 && count < input.length)).toBe(true);
    expect(existsSync(path)).toBe(true);
  }, CLI_TIMEOUT_MS);
});
