/**
 * Builds sinkstream into one executable file.
 *
 *     deno run -A scripts/compile.ts deno   # dist/sinkstream, with `deno compile`
 *     deno run -A scripts/compile.ts bun    # dist/sinkstream-bun, with `bun build --compile`
 *     deno run -A scripts/compile.ts deno --stage-only DIR   # only the input of deno compile
 *
 * Each binary embeds the KV kernel (`wasm/pkg/sinkstream_kv.wasm`), ONNX Runtime's
 * `ort-wasm-simd-threaded.wasm` and its `.mjs` loader, and the git commit for `--version`. It
 * reads nothing from `node_modules` or the source tree at run time. The other ONNX Runtime
 * variants (JSEP, JSPI, asyncify; 72 MB together) are left out because the runtime uses only
 * the plain WebAssembly backend.
 *
 * Runs under Deno or Bun. Each compiler is taken from the running process when it is that
 * runtime, else from `node_modules/.bin`, else from PATH.
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { describeGitCommit } from "../cli/version.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DIST = join(ROOT, "dist");

/** Files of onnxruntime-web that the WebAssembly backend loads under Bun and Deno. */
const ORT_PACKAGE_FILES = [
  "package.json",
  "dist/ort.node.min.mjs",
  "dist/ort-wasm-simd-threaded.mjs",
  "dist/ort-wasm-simd-threaded.wasm",
];

/**
 * The packages that {@linkcode ORT_PACKAGE_FILES} import. The other dependencies of
 * onnxruntime-web (protobufjs, flatbuffers and more, 3.5 MB) serve only its unbundled sources.
 */
const ORT_PACKAGE_DEPENDENCIES = ["onnxruntime-common"];

/** Source folders of the command line, copied for `deno compile`. */
const SOURCE_FOLDERS = ["cli", "core", "pipelines"];

const KERNEL = "wasm/pkg/sinkstream_kv.wasm";

const DENORT_HINT = "; deno compile needs the denort runtime of its own version, which it downloads once from " +
  "dl.deno.land into DENO_DIR, or takes from the path in DENORT_BIN";

/** Exits with `message` on standard error. */
function fail(message: string): never {
  process.stderr.write(`compile: ${message}\n`);
  process.exit(1);
}

/** Global object that only each runtime defines. */
const RUNTIME_GLOBALS = { bun: "Bun", deno: "Deno" } as const;

/** Returns the command that runs `name`: this process if it is that runtime, else the package's or PATH's. */
function findRuntime(name: "bun" | "deno"): string {
  if (RUNTIME_GLOBALS[name] in globalThis) return process.execPath;
  const local = join(ROOT, "node_modules", ".bin", name);
  return existsSync(local) ? local : name;
}

/** Runs a command with inherited output and throws, adding `hint`, if it fails. */
function run(command: string, args: string[], cwd: string, hint = ""): void {
  const result = spawnSync(command, args, { cwd, stdio: "inherit" });
  if (result.error) throw new Error(`failed to start ${command}: ${result.error.message}`);
  if (result.status !== 0) throw new Error(`${command} ${args[0]} failed with exit code ${result.status}${hint}`);
}

/**
 * Returns the package names of `dependencies` in `package.json` and everything they depend on,
 * except type declarations (`@types/*`) and the onnxruntime-web dependencies that
 * {@linkcode ORT_PACKAGE_FILES} do not import.
 */
function runtimeDependencies(): string[] {
  const seen = new Set<string>();
  const pending = Object.keys(readPackageJson(ROOT).dependencies ?? {});
  while (pending.length > 0) {
    const name = pending.pop()!;
    if (seen.has(name) || name.startsWith("@types/")) continue;
    seen.add(name);
    const directory = join(ROOT, "node_modules", name);
    if (!existsSync(directory)) fail(`missing dependency ${name} in node_modules; run npm ci first`);
    if (name === "onnxruntime-web") {
      pending.push(...ORT_PACKAGE_DEPENDENCIES);
      continue;
    }
    const manifest = readPackageJson(directory);
    pending.push(
      ...Object.keys(manifest.dependencies ?? {}),
      ...Object.keys(manifest.optionalDependencies ?? {}).filter(
        (optional) => existsSync(join(ROOT, "node_modules", optional)),
      ),
    );
  }
  return [...seen].sort();
}

interface PackageJson {
  version?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

function readPackageJson(directory: string): PackageJson {
  return JSON.parse(readFileSync(join(directory, "package.json"), "utf8"));
}

/**
 * Writes `dist/sinkstream-bun`. Bun bundles the code; the three wasm files are imported
 * `with { type: "file" }`, which embeds them and yields their `/$bunfs/` paths at run time.
 */
function compileBun(commit: string): string {
  const buildDirectory = join(DIST, ".build");
  mkdirSync(buildDirectory, { recursive: true });
  const entry = join(buildDirectory, "bun_entry.ts");
  const fromBuild = (path: string) => relative(buildDirectory, join(ROOT, path));
  writeFileSync(
    entry,
    `// Entry module of dist/sinkstream-bun, written by scripts/compile.ts.
import process from "node:process";
import kvKernel from "${fromBuild(KERNEL)}" with { type: "file" };
import ortWasm from "onnxruntime-web/ort-wasm-simd-threaded.wasm" with { type: "file" };
import ortModule from "onnxruntime-web/ort-wasm-simd-threaded.mjs" with { type: "file" };
import { main } from "${fromBuild("cli/main.ts")}";
import { setBuildCommit } from "${fromBuild("cli/version.ts")}";
import { setEmbeddedFiles } from "${fromBuild("core/embedded_files.ts")}";

setEmbeddedFiles({ kvKernel, ortWasm, ortModule });
setBuildCommit(${JSON.stringify(commit)});
process.exitCode = await main(process.argv.slice(2));
`,
  );
  const output = join(DIST, "sinkstream-bun");
  run(findRuntime("bun"), [
    "build",
    "--compile",
    "--minify",
    // A .env or bunfig.toml in the user's working directory must not change the binary.
    "--no-compile-autoload-dotenv",
    "--no-compile-autoload-bunfig",
    // The native backend loads libonnxruntime.so from beside its addon, which a binary cannot
    // embed, so binaries run the WebAssembly backend only.
    "--external",
    "onnxruntime-node",
    "--outfile",
    output,
    entry,
  ], ROOT);
  return output;
}

/**
 * Writes `dist/sinkstream`. `deno compile` embeds the whole `node_modules` folder of a project
 * that has one, development tools included (Bun and Deno, 200 MB), so it runs on a copy of the
 * sources in a temporary folder whose `node_modules` holds only the runtime dependencies,
 * with onnxruntime-web cut down to {@linkcode ORT_PACKAGE_FILES}.
 *
 * NOTE: no binary built here has been run yet, because `denort` could not be downloaded where
 * this was written. `--stage-only` and `deno run` check the same files instead.
 */
function compileDeno(commit: string): string {
  const stage = mkdtempSync(join(tmpdir(), "sinkstream-deno-"));
  try {
    stageDenoSources(stage, commit);
    const output = join(DIST, "sinkstream");
    run(findRuntime("deno"), [
      "compile",
      "--allow-all",
      // The bun test suite is the gate; a type error alone must not block a build.
      "--no-check",
      // Read at run time by paths relative to their modules, which resolve inside the binary.
      "--include",
      KERNEL,
      "--include",
      "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
      "--include",
      "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
      "--output",
      output,
      "deno_entry.ts",
    ], stage, DENORT_HINT);
    return output;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

/** Returns false for source maps and type declarations, which nothing reads at run time. */
function isRuntimeFile(path: string): boolean {
  return !/\.(map|d\.ts|d\.mts|d\.cts)$/.test(path);
}

/**
 * Copies into `stage` what `deno compile` embeds: the sources, the kernel, the runtime
 * dependencies and `deno_entry.ts`. `deno run -A <stage>/deno_entry.ts` runs the same code
 * and files as the binary, which checks the file set where `deno compile` cannot run.
 */
function stageDenoSources(stage: string, commit: string): void {
  for (const folder of SOURCE_FOLDERS) cpSync(join(ROOT, folder), join(stage, folder), { recursive: true });
  for (const file of ["package.json", "deno.json", KERNEL]) {
    mkdirSync(dirname(join(stage, file)), { recursive: true });
    cpSync(join(ROOT, file), join(stage, file));
  }
  for (const name of runtimeDependencies()) {
    const source = join(ROOT, "node_modules", name);
    const target = join(stage, "node_modules", name);
    if (name !== "onnxruntime-web") {
      cpSync(source, target, { recursive: true, dereference: true, filter: isRuntimeFile });
      continue;
    }
    for (const file of ORT_PACKAGE_FILES) {
      mkdirSync(dirname(join(target, file)), { recursive: true });
      cpSync(join(source, file), join(target, file));
    }
  }

  writeFileSync(
    join(stage, "deno_entry.ts"),
    `// Entry module of dist/sinkstream, written by scripts/compile.ts.
import process from "node:process";
import { main } from "./cli/main.ts";
import { setBuildCommit } from "./cli/version.ts";

setBuildCommit(${JSON.stringify(commit)});
process.exitCode = await main(Deno.args);
`,
  );
}

const [target, flag, stageDirectory] = process.argv.slice(2);
if (target !== "deno" && target !== "bun") {
  fail(`Invalid target: current value is ${JSON.stringify(target)}; use deno or bun`);
}
if (!existsSync(join(ROOT, KERNEL))) fail(`missing ${KERNEL}; run npm run build:wasm first`);
const commit = describeGitCommit(ROOT) ?? "unknown";

if (flag !== undefined) {
  if (target !== "deno" || flag !== "--stage-only" || stageDirectory === undefined) {
    fail(
      `Invalid arguments: current value is ${
        JSON.stringify(process.argv.slice(3))
      }; the only option is deno --stage-only DIR`,
    );
  }
  mkdirSync(stageDirectory, { recursive: true });
  stageDenoSources(stageDirectory, commit);
  process.stderr.write(`compile: staged the deno compile input in ${stageDirectory}\n`);
  process.exit(0);
}

mkdirSync(DIST, { recursive: true });
const started = performance.now();
let output: string;
try {
  output = target === "deno" ? compileDeno(commit) : compileBun(commit);
} catch (error) {
  fail((error as Error).message);
}
const mebibytes = (statSync(output).size / 2 ** 20).toFixed(1);
const seconds = ((performance.now() - started) / 1000).toFixed(1);
process.stderr.write(`compile: wrote ${relative(ROOT, output)} (${mebibytes} MiB, commit ${commit}) in ${seconds} s\n`);
