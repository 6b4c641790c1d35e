#!/usr/bin/env node
// Launcher for `npx sinkstream` and npm's bin link: runs cli/main.ts with Bun, or with Deno,
// whichever is found first in this package's node_modules or on PATH. It waits for the child,
// forwards SIGTERM and SIGHUP to it, lets the child handle SIGINT (a terminal sends Ctrl-C to
// the whole process group), and exits with the child's exit code.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const entry = join(root, "cli", "main.ts");
const args = process.argv.slice(2);

const candidates = [
  [join(root, "node_modules", ".bin", "bun"), [entry, ...args]],
  [join(root, "node_modules", ".bin", "deno"), ["run", "-A", entry, ...args]],
  ["bun", [entry, ...args]],
  ["deno", ["run", "-A", entry, ...args]],
];

function run(index) {
  if (index >= candidates.length) {
    process.stderr.write("sinkstream: neither Bun nor Deno was found; install one of them (npm install bun) and try again\n");
    process.exit(1);
  }
  const [command, commandArgs] = candidates[index];
  if (command.includes("/") && !existsSync(command)) return run(index + 1);

  const child = spawn(command, commandArgs, { stdio: "inherit" });
  const forward = (signal) => child.kill(signal);
  const ignore = () => {};
  child.on("error", (error) => {
    if (error.code === "ENOENT") return run(index + 1);
    process.stderr.write(`sinkstream: failed to start ${command}: ${error.message}\n`);
    process.exit(1);
  });
  child.on("spawn", () => {
    process.on("SIGINT", ignore);
    process.on("SIGTERM", forward);
    process.on("SIGHUP", forward);
  });
  child.on("exit", (code, signal) => {
    if (signal) {
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
      return;
    }
    process.exit(code ?? 1);
  });
}

run(0);
