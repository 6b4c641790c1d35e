/**
 * A stand-in for the Hugging Face hub on 127.0.0.1, serving repositories that tests build:
 * `GET /api/models/{org}/{name}/revision/{revision}` lists files with sizes and SHA-256 (as the
 * hub does with `?blobs=true`), and `GET /{org}/{name}/resolve/{revision}/{path}` serves a file
 * with range requests. Tests can cut a transfer short, corrupt a listed checksum, and read the
 * request log.
 */

import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join, relative } from "node:path";

/** One request the server saw. */
export interface HubRequest {
  url: string;
  range?: string;
  authorization?: string;
}

/** A running hub stand-in. */
export class HubServer {
  readonly requests: HubRequest[] = [];
  /** `repo@revision` → path → bytes. */
  readonly repos = new Map<string, Map<string, Uint8Array>>();
  /** Paths whose next transfer is cut after this many bytes of body. */
  readonly cutAfter = new Map<string, number>();
  /** Paths whose listed SHA-256 is wrong. */
  readonly wrongSha = new Set<string>();
  #server: Server | undefined;
  endpoint = "";

  /** Add every file under `dir` as repository `repo` at `revision`. */
  async addRepo(repo: string, dir: string, revision = "main"): Promise<void> {
    const files = new Map<string, Uint8Array>();
    const walk = async (at: string) => {
      for (const entry of await readdir(at, { withFileTypes: true })) {
        const path = join(at, entry.name);
        if (entry.isDirectory()) await walk(path);
        else files.set(relative(dir, path), new Uint8Array(await readFile(path)));
      }
    };
    await walk(dir);
    this.repos.set(`${repo}@${revision}`, files);
  }

  async start(): Promise<void> {
    this.#server = createServer((request, response) => {
      const url = new URL(request.url!, "http://127.0.0.1");
      this.requests.push({ url: url.pathname, range: request.headers.range, authorization: request.headers.authorization });

      const listing = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
      if (listing) {
        const files = this.repos.get(`${listing[1]}@${decodeURIComponent(listing[2])}`);
        if (!files) return void response.writeHead(404).end(JSON.stringify({ error: "Repository not found" }));
        const siblings = [...files].map(([path, bytes]) => {
          let sha256 = createHash("sha256").update(bytes).digest("hex");
          if (this.wrongSha.has(path)) sha256 = "0".repeat(64);
          return { rfilename: path, size: bytes.length, lfs: { sha256, size: bytes.length } };
        });
        return void response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ id: listing[1], siblings }));
      }

      const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
      const files = resolve && this.repos.get(`${resolve[1]}@${decodeURIComponent(resolve[2])}`);
      const path = resolve && decodeURIComponent(resolve[3]);
      const body = path ? files?.get(path) : undefined;
      if (!body || !path) return void response.writeHead(404).end("Entry not found");

      const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? "");
      const start = range ? Number(range[1]) : 0;
      const headers: Record<string, string> = { "content-length": String(body.length - start) };
      if (range) headers["content-range"] = `bytes ${start}-${body.length - 1}/${body.length}`;
      response.writeHead(range ? 206 : 200, headers);
      const cut = this.cutAfter.get(path);
      if (cut !== undefined) {
        this.cutAfter.delete(path);
        // Give the client time to read the bytes before the reset, which would discard them.
        response.write(body.subarray(start, start + cut), () => setTimeout(() => response.destroy(), 50));
        return;
      }
      response.end(body.subarray(start));
    });
    await new Promise<void>((resolve) => this.#server!.listen(0, "127.0.0.1", resolve));
    this.endpoint = `http://127.0.0.1:${(this.#server!.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.#server?.close(() => resolve()));
  }
}
