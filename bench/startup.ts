/**
 * Measures the start-up time of sinkstream commands: from process start to the first byte of
 * generated text on standard output, and to process exit, over repeated runs.
 *
 *     bun bench/startup.ts MODEL RUNS -- COMMAND [ARGS...]
 *
 * The command is run RUNS times with `--version` appended, then RUNS times with `generate
 * --model MODEL --prompt "Once upon a time" --max-tokens 8 --quiet`, from a new empty temporary
 * folder. One Markdown table row gives the medians and ranges in milliseconds: `--version` to
 * exit, then `generate` to its first output byte and to exit. A first run of each that is not
 * counted warms the page cache.
 *
 * @module
 */

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";

interface Timing {
  /** Milliseconds from spawn to the first stdout byte. */
  firstOutput: number;
  /** Milliseconds from spawn to exit. */
  exit: number;
}

function runOnce(command: string[], cwd: string): Promise<Timing> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let firstOutput: number | undefined;
    const child = spawn(command[0], command.slice(1), { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stdout.on("data", () => (firstOutput ??= performance.now() - started));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => {
      const exit = performance.now() - started;
      if (code !== 0) {
        reject(new Error(`${command.join(" ")} failed with exit code ${code}: ${stderr}`));
      } else if (firstOutput === undefined) {
        reject(new Error(`${command.join(" ")} printed nothing on standard output: ${stderr}`));
      } else {
        resolve({ firstOutput, exit });
      }
    });
  });
}

/** Runs `command` once to warm up, then `runs` times, and returns the timed runs. */
async function timeRuns(command: string[], cwd: string, runs: number): Promise<Timing[]> {
  await runOnce(command, cwd);
  const timings: Timing[] = [];
  for (let run = 0; run < runs; run++) timings.push(await runOnce(command, cwd));
  return timings;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function describe(values: number[]): string {
  return `${median(values).toFixed(0)} (${Math.min(...values).toFixed(0)}–${Math.max(...values).toFixed(0)})`;
}

const separator = process.argv.indexOf("--");
const [model, runsText] = process.argv.slice(2, separator);
const command = process.argv.slice(separator + 1);
const runs = Number(runsText);
if (separator < 0 || model === undefined || command.length === 0 || !Number.isInteger(runs) || runs < 1) {
  process.stderr.write("usage: bun bench/startup.ts MODEL RUNS -- COMMAND [ARGS...]\n");
  process.exit(2);
}

const cwd = mkdtempSync(join(tmpdir(), "sinkstream-startup-"));
try {
  const version = await timeRuns([...command, "--version"], cwd, runs);
  const generate = await timeRuns(
    [...command, "generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "8", "--quiet"],
    cwd,
    runs,
  );
  const label = command.map((part) => part.split("/").pop()).join(" ");
  const cells = [
    describe(version.map((t) => t.exit)),
    describe(generate.map((t) => t.firstOutput)),
    describe(generate.map((t) => t.exit)),
  ];
  process.stdout.write(`| \`${label}\` | ${cells.join(" | ")} |\n`);
} finally {
  rmSync(cwd, { recursive: true, force: true });
}
