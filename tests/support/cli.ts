/** Spawning of the command line under Bun or Deno, for tests of whole commands. */

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { LOGS_DIR } from "./stories.ts";

export const ROOT = new URL("../..", import.meta.url).pathname;
export const RUNTIMES: Record<string, string[]> = {
  bun: [`${ROOT}node_modules/.bin/bun`, "cli/main.ts"],
  deno: [`${ROOT}node_modules/.bin/deno`, "run", "-A", "cli/main.ts"],
};

/** Exit code, signal and output of a finished CLI process. */
export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A running CLI process with its output collected so far. */
export interface CliProcess {
  child: ChildProcessWithoutNullStreams;
  stdout(): string;
  stderr(): string;
  done: Promise<CliRun>;
}

/** Start the CLI; standard input stays open until the caller ends it. */
export function startCli(runtime: string, args: string[]): CliProcess {
  const [command, ...prefix] = RUNTIMES[runtime];
  const child = spawn(command, [...prefix, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => (stdout += chunk));
  child.stderr.on("data", (chunk) => (stderr += chunk));
  child.stdin.on("error", () => {});
  const done = new Promise<CliRun>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }))
  );
  return { child, stdout: () => stdout, stderr: () => stderr, done };
}

/** Run the CLI with `input` on standard input and wait for it to exit. */
export function runCli(runtime: string, args: string[], input: string | Uint8Array = ""): Promise<CliRun> {
  const cli = startCli(runtime, args);
  cli.child.stdin.end(input);
  return cli.done;
}

/** Wait until `condition` holds, polling every 50 ms, or throw after `timeoutMs`. */
export async function waitFor(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Return lines `from..to` (0-based, end exclusive) of a shared log, each ending with "\n". */
export function logLines(name: string, from: number, to: number): string {
  const lines = readFileSync(LOGS_DIR + name, "latin1").split("\r\n").slice(from, to);
  return lines.map((line) => line + "\n").join("");
}

/** Return the raw bytes of lines `from..to` (0-based, end exclusive) of a shared log, CRLF included. */
export function logBytes(name: string, from: number, to: number): Uint8Array {
  const bytes = new Uint8Array(readFileSync(LOGS_DIR + name));
  const starts = [0];
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === 0x0a) starts.push(i + 1);
  return bytes.subarray(starts[Math.min(from, starts.length - 1)], starts[Math.min(to, starts.length - 1)]);
}

/** Parse NDJSON output. */
export function records(stdout: string): Record<string, unknown>[] {
  return stdout.trim() === "" ? [] : stdout.trim().split("\n").map((line) => JSON.parse(line));
}
