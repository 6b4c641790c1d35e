/**
 * Benchmark of the archive of evicted lines: ingest a long stream of real logs with and
 * without the archive, then time recall searches against the full archive.
 *
 * The two ingests run in one process on two sessions of the same model, taking turns every
 * {@linkcode BLOCK_LINES} lines, so that load from other processes slows both alike.
 *
 *   npx bun bench/recall.ts [--tokens 1000000] [--model PATH] [--window N] [--archive PATH]
 *
 * Prints one JSON object with the figures and a Markdown table for BENCHMARKS.md. The input
 * is the real logs in ../shared/data/logs/, repeated until the token count is reached, with
 * one unique needle line planted near the start for the recall timings.
 */

import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { LineArchive } from "../core/archive.ts";
import { createSession, type LoadedModel, loadModel } from "../core/model.ts";
import { renderPrompt } from "../core/prompt.ts";
import { LineIngestor } from "../pipelines/answer_stream.ts";
import { LineArchiver } from "../pipelines/line_archiver.ts";
import { promptTokenBudget, recallForPrompt } from "../pipelines/recall.ts";

const LOGS_DIR = new URL("../../shared/data/logs/", import.meta.url).pathname;
const DEFAULT_MODEL = new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname;
const NEEDLE_LINE_NUMBER = 100;
const NEEDLE = "Jun 14 15:20:44 combo kernel: raid controller zq7731 reported checksum mismatch on volume orchid\n";
const QUESTIONS = [
  "Which raid controller reported a checksum mismatch on volume orchid?",
  "when did the authentication failures for root start?",
  "Which block was deleted by the NameNode?",
  "error",
];
const SEARCH_REPEATS = 20;
const BLOCK_LINES = 200;
const RECALL_LINES = 8;

const { values: args } = parseArgs({
  options: {
    tokens: { type: "string", default: "1000000" },
    model: { type: "string", default: DEFAULT_MODEL },
    window: { type: "string" },
    archive: { type: "string", default: "/tmp/sinkstream-bench-recall.sqlite" },
  },
});
const targetTokens = Number(args.tokens);
const archivePath = args.archive!;

function realLogLines(): string[] {
  const names = readdirSync(LOGS_DIR).filter((name) => name.endsWith(".log")).sort();
  return names.flatMap((name) =>
    readFileSync(join(LOGS_DIR, name), "utf8").replaceAll("\r\n", "\n").split(/(?<=\n)/).filter((line) => line !== "")
  );
}

/** Returns the stream's line `lineNumber`: the needle at its place, else the logs in a loop. */
function streamLine(logLines: string[], lineNumber: number): string {
  return lineNumber === NEEDLE_LINE_NUMBER ? NEEDLE : logLines[(lineNumber - 1) % logLines.length];
}

interface IngestFigures {
  tokens: number;
  lines: number;
  wallSeconds: number;
  tokensPerSecond: number;
  archiveSeconds?: number;
  archivedLines?: number;
}

/** One ingest under measurement: its ingestor and the seconds spent in its turns. */
interface Contender {
  ingestor: LineIngestor;
  archiver?: LineArchiver;
  seconds: number;
}

async function createContender(model: LoadedModel, archiver?: LineArchiver): Promise<Contender> {
  const window = args.window === undefined ? undefined : Number(args.window);
  const { session } = await createSession(model, { window });
  return { ingestor: new LineIngestor(model, session, archiver), archiver, seconds: 0 };
}

/** Feeds the next block of lines to one contender and adds the time it took. */
async function ingestBlock(contender: Contender, logLines: string[]): Promise<void> {
  const { ingestor } = contender;
  const started = performance.now();
  for (let i = 0; i < BLOCK_LINES && ingestor.session.stats.tokensIngested < targetTokens; i++) {
    await ingestor.addLine(streamLine(logLines, ingestor.lines + 1));
  }
  if (ingestor.session.stats.tokensIngested >= targetTokens) {
    await ingestor.flush();
    contender.archiver?.flush();
  }
  contender.seconds += (performance.now() - started) / 1000;
}

function figuresOf(contender: Contender): IngestFigures {
  const { session } = contender.ingestor;
  return {
    tokens: session.stats.tokensIngested,
    lines: contender.ingestor.lines,
    wallSeconds: round(contender.seconds),
    tokensPerSecond: round(session.stats.tokensIngested / contender.seconds),
    archiveSeconds: contender.archiver === undefined ? undefined : round(contender.archiver.seconds),
    archivedLines: contender.archiver?.archivedLines,
  };
}

function round(value: number, digits = 3): number {
  return Number(value.toFixed(digits));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function fileBytes(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

const model = await loadModel(args.model!, { offline: true });
const logLines = realLogLines();
for (const suffix of ["", "-wal", "-shm"]) rmSync(archivePath + suffix, { force: true });

const archive = await LineArchive.open(archivePath);
const archiver = new LineArchiver(archive.createWriter(), { sinks: 4 });
const plain = await createContender(model);
const archived = await createContender(model, archiver);
let turn = 0;
while (
  plain.ingestor.session.stats.tokensIngested < targetTokens ||
  archived.ingestor.session.stats.tokensIngested < targetTokens
) {
  // Alternate which one goes first, so neither always follows the other's garbage.
  const order = turn++ % 2 === 0 ? [plain, archived] : [archived, plain];
  for (const contender of order) await ingestBlock(contender, logLines);
  if (turn % 10 === 0) {
    process.stderr.write(`${plain.ingestor.session.stats.tokensIngested} tokens: ${plain.seconds.toFixed(1)} s without, ${archived.seconds.toFixed(1)} s with the archive\n`);
  }
}
archiver.writer.close();
const without = figuresOf(plain);
const withArchive = figuresOf(archived);

// Recall latency: the raw search, and the whole prompt assembly that an answer runs.
const { session } = await createSession(model, { window: args.window === undefined ? undefined : Number(args.window) });
const searches = QUESTIONS.map((question) => {
  const searchMs: number[] = [];
  const promptMs: number[] = [];
  let firstLine = 0;
  let recalledLines = 0;
  for (let i = 0; i < SEARCH_REPEATS; i++) {
    let started = performance.now();
    const hits = archive.search(question, RECALL_LINES);
    searchMs.push(performance.now() - started);
    firstLine = hits[0]?.lineNumber ?? 0;

    started = performance.now();
    const request = { kind: "answer" as const, question };
    const result = recallForPrompt(
      { archive, limit: RECALL_LINES },
      request,
      promptTokenBudget(session.sizes.window, 128),
      (lines) => model.tokenizer.encode(renderPrompt(request, model.chatTemplate, {}, lines), { addBos: false, addSpacePrefix: false }),
      (text) => model.tokenizer.encode(text, { addBos: false, addSpacePrefix: false }).length,
    );
    promptMs.push(performance.now() - started);
    recalledLines = result.lines.length;
  }
  return {
    question,
    medianSearchMs: round(median(searchMs)),
    maxSearchMs: round(Math.max(...searchMs)),
    medianPromptMs: round(median(promptMs)),
    firstLine,
    recalledLines,
  };
});

const figures = {
  model: args.model,
  cache: `${session.sizes.sinks}+${session.sizes.window}`,
  chunk: session.sizes.chunkSize,
  runtime: typeof (globalThis as { Bun?: unknown }).Bun !== "undefined" ? "bun" : "deno",
  without,
  withArchive,
  slowdownPercent: round((withArchive.wallSeconds / without.wallSeconds - 1) * 100, 1),
  archiverShareOfIngestPercent: round(((withArchive.archiveSeconds ?? 0) / withArchive.wallSeconds) * 100, 2),
  archiveLines: archive.count(),
  archivePageBytes: archive.sizeBytes(),
  archiveFileBytes: fileBytes(archivePath),
  walFileBytes: fileBytes(archivePath + "-wal"),
  needleFoundFirst: searches[0].firstLine === NEEDLE_LINE_NUMBER,
  searches,
};
archive.close();
console.log(JSON.stringify(figures, null, 2));
