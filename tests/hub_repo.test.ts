/**
 * The hub repository client and `sinkstream models` against a local stand-in for the hub that
 * serves repositories written by the tests: the stories model converted to Hugging Face
 * layout, and a tiny random qwen2 model.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { ModelError, NetworkError } from "../core/errors.ts";
import { downloadHubRepo, parseHubRepoId, REPO_MARKER, repoCacheDir, selectModelFiles } from "../core/hf/hub_repo.ts";
import { cachedPath } from "../core/hub.ts";
import { loadLlamaGguf } from "../core/llama_gguf.ts";
import { randomHfModel, storiesToHf, writeHfLayout } from "./support/hf_layout.ts";
import { HubServer } from "./support/hub_server.ts";
import { STORIES_V1 } from "./support/stories.ts";

const CLI_TIMEOUT_MS = 120_000;
const ROOT = new URL("..", import.meta.url).pathname;

const hub = new HubServer();
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sinkstream-hubrepo-"));
  await writeHfLayout(join(root, "stories"), storiesToHf(await loadLlamaGguf(STORIES_V1)));
  await writeHfLayout(join(root, "qwen2"), randomHfModel("qwen2"));
  await writeFile(join(root, "qwen2", "README.md"), "not needed by the model\n");
  await hub.addRepo("test/stories-onnx", join(root, "stories"));
  await hub.addRepo("test/qwen2-tiny", join(root, "qwen2"));
  await hub.addRepo("test/qwen2-tiny", join(root, "qwen2"), "v1");
  await hub.start();
});

afterAll(async () => {
  await hub.stop();
  await rm(root, { recursive: true, force: true });
});

async function freshCache(): Promise<string> {
  return await mkdtemp(join(root, "cache-"));
}

describe("parseHubRepoId", () => {
  test("reads repository and revision", () => {
    expect(parseHubRepoId("HuggingFaceTB/SmolLM2-135M-Instruct")).toEqual({ repo: "HuggingFaceTB/SmolLM2-135M-Instruct", revision: undefined });
    expect(parseHubRepoId("org/name@v1.0")).toEqual({ repo: "org/name", revision: "v1.0" });
  });

  test("rejects file ids and bad names", () => {
    expect(parseHubRepoId("org/name/file.gguf")).toBeUndefined();
    expect(parseHubRepoId("org/..")).toBeUndefined();
    expect(parseHubRepoId("name")).toBeUndefined();
  });
});

describe("selectModelFiles", () => {
  test("picks the Hugging Face files and one ONNX variant with its data", () => {
    const listing = ["config.json", "tokenizer.json", "tokenizer_config.json", "README.md", "onnx/model.onnx", "onnx/model.onnx_data", "onnx/model_q4.onnx"]
      .map((path) => ({ path }));
    expect(selectModelFiles({ repo: "a/b" }, listing).map((f) => f.path)).toEqual([
      "config.json",
      "tokenizer.json",
      "tokenizer_config.json",
      "onnx/model.onnx",
      "onnx/model.onnx_data",
    ]);
    expect(selectModelFiles({ repo: "a/b" }, listing, "model_q4.onnx").map((f) => f.path)).toContain("onnx/model_q4.onnx");
  });

  test("names what a repository lacks", () => {
    const listing = [{ path: "config.json" }, { path: "model-q8_0.gguf" }];
    expect(() => selectModelFiles({ repo: "a/b" }, listing)).toThrow(
      "Model repository a/b has no usable ONNX export: missing tokenizer.json, tokenizer_config.json, onnx/model.onnx or",
    );
    expect(() => selectModelFiles({ repo: "a/b" }, listing)).toThrow("give one as a/b/model-q8_0.gguf");
  });
});

describe("downloadHubRepo", () => {
  test("downloads the model files once", async () => {
    const cacheDir = await freshCache();
    hub.requests.length = 0;
    const dir = await downloadHubRepo({ repo: "test/qwen2-tiny" }, { endpoint: hub.endpoint, cacheDir, token: "secret" });
    expect(dir).toBe(repoCacheDir({ repo: "test/qwen2-tiny" }, cacheDir));
    for (const name of ["config.json", "tokenizer.json", "onnx/model.onnx", "onnx/model.onnx_data"]) {
      expect(await readFile(join(dir, name))).toEqual(await readFile(join(root, "qwen2", name)));
    }
    await expect(stat(join(dir, "README.md"))).rejects.toThrow();
    expect(hub.requests[0].url).toBe("/api/models/test/qwen2-tiny/revision/main");
    expect(hub.requests.every((r) => r.authorization === "Bearer secret")).toBe(true);

    const count = hub.requests.length;
    await downloadHubRepo({ repo: "test/qwen2-tiny" }, { endpoint: hub.endpoint, cacheDir });
    expect(hub.requests.length).toBe(count);
  });

  test("sends HF_TOKEN from the environment", async () => {
    const saved = process.env.HF_TOKEN;
    process.env.HF_TOKEN = "from-env";
    try {
      hub.requests.length = 0;
      await downloadHubRepo({ repo: "test/qwen2-tiny" }, { endpoint: hub.endpoint, cacheDir: await freshCache() });
      expect(hub.requests.length).toBeGreaterThan(1);
      expect(hub.requests.every((r) => r.authorization === "Bearer from-env")).toBe(true);
    } finally {
      if (saved === undefined) delete process.env.HF_TOKEN;
      else process.env.HF_TOKEN = saved;
    }
  });

  test("keeps revisions apart", async () => {
    const cacheDir = await freshCache();
    const dir = await downloadHubRepo({ repo: "test/qwen2-tiny", revision: "v1" }, { endpoint: hub.endpoint, cacheDir });
    expect(dir).toEndWith(join("test", "qwen2-tiny", "v1"));
  });

  test("resumes after a cut connection", async () => {
    const cacheDir = await freshCache();
    hub.cutAfter.set("onnx/model.onnx_data", 50_000);
    const first = await downloadHubRepo({ repo: "test/qwen2-tiny" }, { endpoint: hub.endpoint, cacheDir }).catch((e) => e);
    expect(first).toBeInstanceOf(NetworkError);
    const partial = `${cachedPath({ repo: "test/qwen2-tiny", path: "onnx/model.onnx_data" }, cacheDir)}.part`;
    expect((await stat(partial)).size).toBe(50_000);
    await expect(stat(join(repoCacheDir({ repo: "test/qwen2-tiny" }, cacheDir), REPO_MARKER))).rejects.toThrow();

    hub.requests.length = 0;
    const dir = await downloadHubRepo({ repo: "test/qwen2-tiny" }, { endpoint: hub.endpoint, cacheDir });
    expect(hub.requests.find((r) => r.url.endsWith("model.onnx_data"))?.range).toBe("bytes=50000-");
    expect(await readFile(join(dir, "onnx/model.onnx_data"))).toEqual(await readFile(join(root, "qwen2", "onnx/model.onnx_data")));
  });

  test("rejects a file whose SHA-256 differs from the listing", async () => {
    const cacheDir = await freshCache();
    hub.wrongSha.add("onnx/model.onnx");
    try {
      const error = await downloadHubRepo({ repo: "test/qwen2-tiny" }, { endpoint: hub.endpoint, cacheDir }).catch((e) => e);
      expect(error).toBeInstanceOf(NetworkError);
      expect(error.message).toContain("Download of test/qwen2-tiny/onnx/model.onnx is corrupt: SHA-256");
      expect(error.message).toContain(`differs from the hub's ${"0".repeat(64)}`);
    } finally {
      hub.wrongSha.delete("onnx/model.onnx");
    }
  });

  test("names a missing repository", async () => {
    const error = await downloadHubRepo({ repo: "test/nope" }, { endpoint: hub.endpoint, cacheDir: await freshCache() }).catch((e) => e);
    expect(error).toBeInstanceOf(NetworkError);
    expect(error.message).toBe(
      `Model repository test/nope at revision main not found at ${hub.endpoint} (HTTP 404); check the id and revision`,
    );
  });

  test("offline mode uses only a complete download", async () => {
    const cacheDir = await freshCache();
    hub.requests.length = 0;
    const error = await downloadHubRepo({ repo: "test/qwen2-tiny" }, { endpoint: hub.endpoint, cacheDir, offline: true }).catch((e) => e);
    expect(error).toBeInstanceOf(ModelError);
    expect(error.message).toContain("--offline forbids downloading it");
    expect(hub.requests).toHaveLength(0);

    await downloadHubRepo({ repo: "test/qwen2-tiny" }, { endpoint: hub.endpoint, cacheDir });
    hub.requests.length = 0;
    const dir = await downloadHubRepo({ repo: "test/qwen2-tiny" }, { cacheDir, offline: true });
    expect(dir).toBe(repoCacheDir({ repo: "test/qwen2-tiny" }, cacheDir));
    expect(hub.requests).toHaveLength(0);
  });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], env: Record<string, string>, input = ""): Promise<Run> {
  const child = spawn(`${ROOT}node_modules/.bin/bun`, ["cli/main.ts", ...args], { cwd: ROOT, env: { ...process.env, ...env } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => (stdout += chunk));
  child.stderr.on("data", (chunk) => (stderr += chunk));
  child.stdin.end(input);
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

describe("sinkstream models and --model with a hub id", () => {
  test("pull, list, inspect and generate like the GGUF file", async () => {
    const env = { SINKSTREAM_CACHE: await freshCache(), HF_ENDPOINT: hub.endpoint, NO_COLOR: "1" };
    const pull = await runCli(["models", "pull", "test/stories-onnx"], env);
    expect(pull.stderr).toBe("");
    expect(pull.code).toBe(0);
    expect(pull.stdout.trim()).toBe(repoCacheDir({ repo: "test/stories-onnx" }, env.SINKSTREAM_CACHE));

    const list = await runCli(["models", "list", "--json"], env);
    const listed = list.stdout.trim().split("\n").map((line) => JSON.parse(line));
    expect(listed.map((m) => [m.id, m.complete])).toEqual([["test/stories-onnx", true]]);
    expect(listed[0].bytes).toBeGreaterThan(1_000_000);

    const inspect = await runCli(["models", "inspect", "test/stories-onnx", "--offline", "--json"], env);
    const description = JSON.parse(inspect.stdout);
    expect(description.architecture).toBe("llama");
    expect(description.sinkStreaming).toBe(true);
    expect(description.onnxFile).toBe("onnx/model.onnx");
    expect(description.config.contextLength).toBe(512);
    expect(description.config.rope.layout).toBe("halves");
    expect(description.ropeScaling).toBe("none");

    const args = ["generate", "--prompt", "Once upon a time", "--max-tokens", "40", "--json", "--quiet", "--window", "60"];
    const fromHub = await runCli([...args, "--model", "test/stories-onnx", "--offline"], env);
    const fromGguf = await runCli([...args, "--model", STORIES_V1], env);
    expect(fromHub.code).toBe(0);
    const generation = (run: Run) => JSON.parse(run.stdout.split("\n")[0]);
    expect(generation(fromHub).token_ids).toEqual(generation(fromGguf).token_ids);
    expect(generation(fromHub).token_ids.length).toBeGreaterThan(20);
  }, CLI_TIMEOUT_MS);

  test("inspect explains a rejected architecture", async () => {
    const dir = join(root, "gpt2");
    await writeHfLayout(dir, randomHfModel("llama"));
    const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
    await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, model_type: "gpt2" }));
    const inspect = await runCli(["models", "inspect", dir], {});
    expect(inspect.code).toBe(0);
    expect(inspect.stdout).toContain("sink streaming: no");
    expect(inspect.stdout).toContain("gpt2 uses absolute position embeddings");
    expect(inspect.stdout).not.toContain("layers:");

    const run = await runCli(["generate", "--model", dir, "--prompt", "hi"], {});
    expect(run.code).toBe(3);
    expect(run.stderr).toContain("Unsupported architecture gpt2: it uses absolute position embeddings");
  }, CLI_TIMEOUT_MS);
});
