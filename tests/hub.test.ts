import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import { mkdtemp, readFile, rm, writeFile, mkdir } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { cachedPath, downloadHubFile, parseHubFileId } from "../core/hub.ts";
import { ModelError, NetworkError } from "../core/errors.ts";

// A stand-in for the hub on 127.0.0.1 that serves /{org}/{name}/resolve/{revision}/{path}
// with range requests and the hub's X-Linked-Etag / X-Linked-Size headers.
const FILE = new Uint8Array(100_000).map((_, i) => (i * 7919) % 251);
const FILE_SHA256 = createHash("sha256").update(FILE).digest("hex");
const requests: { url: string; range?: string; authorization?: string }[] = [];
let corruptNext = false;
let server: Server;
let endpoint: string;
let cacheDir: string;

beforeAll(async () => {
  server = createServer((request, response) => {
    requests.push({ url: request.url!, range: request.headers.range, authorization: request.headers.authorization });
    if (request.url !== "/org/model/resolve/main/dir/weights.gguf") {
      response.writeHead(404).end("not found");
      return;
    }
    const body = corruptNext ? FILE.map((b) => b ^ 1) : FILE;
    corruptNext = false;
    const headers = { "x-linked-etag": `"${FILE_SHA256}"`, "x-linked-size": String(FILE.length) };
    const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? "");
    if (range) {
      const start = Number(range[1]);
      response.writeHead(206, { ...headers, "content-range": `bytes ${start}-${FILE.length - 1}/${FILE.length}` });
      response.end(body.subarray(start));
    } else {
      response.writeHead(200, headers).end(body);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cacheDir = await mkdtemp(join(tmpdir(), "sinkstream-hub-"));
});

afterAll(async () => {
  server.close();
  await rm(cacheDir, { recursive: true, force: true });
});

const file = { repo: "org/model", path: "dir/weights.gguf" };

describe("parseHubFileId", () => {
  test("reads repo, path and revision", () => {
    expect(parseHubFileId("ggml-org/models/tinyllamas/stories260K.gguf")).toEqual({
      repo: "ggml-org/models",
      path: "tinyllamas/stories260K.gguf",
      revision: undefined,
    });
    expect(parseHubFileId("org/name/file.gguf@v1.0")?.revision).toBe("v1.0");
  });

  test("rejects ids without a file path", () => {
    expect(parseHubFileId("org/name")).toBeUndefined();
    expect(parseHubFileId("org/name/../x.gguf")).toBeUndefined();
  });
});

describe("downloadHubFile", () => {
  test("downloads, verifies and caches", async () => {
    requests.length = 0;
    const path = await downloadHubFile(file, { endpoint, cacheDir, token: "secret" });
    expect(path).toBe(cachedPath(file, cacheDir));
    expect(new Uint8Array(await readFile(path))).toEqual(FILE);
    expect(requests).toHaveLength(1);
    expect(requests[0].authorization).toBe("Bearer secret");

    await downloadHubFile(file, { endpoint, cacheDir });
    expect(requests).toHaveLength(1);
  });

  test("resumes a partial download with a range request", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sinkstream-hub-"));
    const partial = `${cachedPath(file, dir)}.part`;
    await mkdir(dirname(partial), { recursive: true });
    await writeFile(partial, FILE.subarray(0, 40_000));
    requests.length = 0;
    const path = await downloadHubFile(file, { endpoint, cacheDir: dir });
    expect(requests[0].range).toBe("bytes=40000-");
    expect(new Uint8Array(await readFile(path))).toEqual(FILE);
    await rm(dir, { recursive: true, force: true });
  });

  test("rejects a file whose SHA-256 differs", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sinkstream-hub-"));
    corruptNext = true;
    const error = await downloadHubFile(file, { endpoint, cacheDir: dir }).catch((e) => e);
    expect(error).toBeInstanceOf(NetworkError);
    expect(error.message).toContain("is corrupt: SHA-256");
    await rm(dir, { recursive: true, force: true });
  });

  test("names a missing file", async () => {
    const error = await downloadHubFile({ repo: "org/model", path: "nope.gguf" }, { endpoint, cacheDir }).catch((e) => e);
    expect(error.message).toBe(
      `Model file org/model/nope.gguf not found at ${endpoint} (HTTP 404); check the repository, path and revision`,
    );
  });

  test("offline mode never downloads", async () => {
    requests.length = 0;
    const error = await downloadHubFile({ repo: "org/model", path: "other.gguf" }, { endpoint, cacheDir, offline: true })
      .catch((e) => e);
    expect(error).toBeInstanceOf(ModelError);
    expect(error.message).toContain("--offline forbids downloading it");
    expect(requests).toHaveLength(0);
  });
});
