/**
 * Soak test of `watch`: feed the shared logs, concatenated over and over, into one `watch`
 * process and sample its resident memory and throughput as the stream runs.
 *
 *   bun bench/soak.ts [--lines 1000000] [--drop] [--every 20000] [--minutes M] [--sample-s 10]
 *                     [--window W] [--chunk C] [--backend wasm|native]
 *
 * Writes one JSON line per sample to standard output (lines written, lines/s since the last
 * sample, VmRSS and VmHWM of the `watch` process), then a summary line. `--minutes` stops the
 * feed after that long, for machines that cannot finish the run. Linux only (reads /proc).
 */

import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import process from "node:process";

const ROOT = new URL("..", import.meta.url).pathname;
const MODEL = new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname;
const LOGS_DIR = new URL("../../shared/data/logs/", import.meta.url).pathname;

function argument(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 ? process.argv[at + 1] : fallback;
}

const totalLines = Number(argument("lines", "1000000"));
const every = argument("every", "20000");
const minutes = Number(argument("minutes", "0"));
const sampleSeconds = Number(argument("sample-s", "10"));
const drop = process.argv.includes("--drop");
const windowSize = argument("window", "");
const chunkSize = argument("chunk", "");
const backend = argument("backend", "");

const logLines = readdirSync(LOGS_DIR)
  .filter((name) => name.endsWith(".log"))
  .sort()
  .flatMap((name) => readFileSync(LOGS_DIR + name, "latin1").split(/\r?\n/).filter((line) => line !== ""));

const args = ["cli/main.ts", "watch", "--model", MODEL, "--every", every, "--max-tokens", "16", "--json", "--quiet"];
if (drop) args.push("--drop");
if (windowSize !== "") args.push("--window", windowSize);
if (chunkSize !== "") args.push("--chunk", chunkSize);
if (backend !== "") args.push("--backend", backend);
const child = spawn(`${ROOT}node_modules/.bin/bun`, args, { cwd: ROOT, stdio: ["pipe", "pipe", "inherit"] });

let records = 0;
let stats: Record<string, unknown> | undefined;
let buffered = "";
child.stdout.on("data", (chunk: Buffer) => {
  buffered += chunk.toString("utf8");
  let newline: number;
  while ((newline = buffered.indexOf("\n")) >= 0) {
    const record = JSON.parse(buffered.slice(0, newline));
    buffered = buffered.slice(newline + 1);
    if (record.type === "stats") stats = record;
    else records++;
  }
});
const exited = new Promise<number | null>((resolve) => child.on("close", resolve));

function memoryKib(field: "VmRSS" | "VmHWM"): number {
  try {
    const status = readFileSync(`/proc/${child.pid}/status`, "utf8");
    return Number(new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? NaN);
  } catch {
    return NaN;
  }
}

const started = performance.now();
let written = 0;
let lastSample = { ms: started, lines: 0 };
const samples: { lines: number; rssMib: number; hwmMib: number; linesPerS: number }[] = [];
const sampler = setInterval(() => {
  const now = performance.now();
  const sample = {
    elapsed_s: Math.round((now - started) / 1000),
    lines_written: written,
    lines_per_s: Math.round(((written - lastSample.lines) / (now - lastSample.ms)) * 1000),
    rss_mib: Math.round(memoryKib("VmRSS") / 102.4) / 10,
    hwm_mib: Math.round(memoryKib("VmHWM") / 102.4) / 10,
    records,
  };
  lastSample = { ms: now, lines: written };
  samples.push({ lines: written, rssMib: sample.rss_mib, hwmMib: sample.hwm_mib, linesPerS: sample.lines_per_s });
  console.log(JSON.stringify(sample));
}, sampleSeconds * 1000);

// Feed lines, waiting for the pipe to drain so the child's own backpressure is what limits us.
const deadline = minutes > 0 ? started + minutes * 60_000 : Infinity;
for (let i = 0; i < totalLines && performance.now() < deadline; i++) {
  const ok = child.stdin.write(logLines[i % logLines.length] + "\n");
  written++;
  if (!ok) await new Promise((resolve) => child.stdin.once("drain", resolve));
}
child.stdin.end();
const code = await exited;
clearInterval(sampler);

const quarter = Math.max(1, Math.floor(samples.length / 4));
const first = samples.slice(0, quarter);
const last = samples.slice(-quarter);
const mean = (values: number[]) => Math.round((values.reduce((a, b) => a + b, 0) / values.length) * 10) / 10;
console.log(JSON.stringify({
  summary: true,
  exit_code: code,
  lines_written: written,
  drop,
  wall_s: Math.round((performance.now() - started) / 1000),
  answers: records,
  stats,
  rss_mib_first_quarter: mean(first.map((s) => s.rssMib)),
  rss_mib_last_quarter: mean(last.map((s) => s.rssMib)),
  lines_per_s_first_quarter: mean(first.map((s) => s.linesPerS)),
  lines_per_s_last_quarter: mean(last.map((s) => s.linesPerS)),
}));
