#!/usr/bin/env node
// Launcher for `npx sinkstream` and npm's bin link: runs cli/main.ts with Bun, or with Deno,
// whichever is found first in this package's node_modules or on PATH, and passes the exit code on.

import { spawnSync } from "node:child_process";
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

for (const [command, commandArgs] of candidates) {
  if (command.includes("/") && !existsSync(command)) continue;
  const result = spawnSync(command, commandArgs, { stdio: "inherit" });
  if (result.error && result.error.code === "ENOENT") continue;
  if (result.error) {
    process.stderr.write(`sinkstream: failed to start ${command}: ${result.error.message}\n`);
    process.exit(1);
  }
  process.exit(result.status ?? 1);
}
process.stderr.write("sinkstream: neither Bun nor Deno was found; install one of them (npm install bun) and try again\n");
process.exit(1);
