/**
 * Download of single files from the Hugging Face hub into a local cache.
 *
 * Files are fetched from `{endpoint}/{repo}/resolve/{revision}/{path}`, the hub's URL layout,
 * which mirrors also serve (`HF_ENDPOINT`). A download goes to `{file}.part` first and resumes
 * from its size with an HTTP range request after an interruption. When the hub states the
 * file's SHA-256 (the `X-Linked-Etag` or `ETag` of files stored with Git LFS or Xet) or its
 * size, the finished file is checked against them before it is moved into place.
 */

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, rename, stat, unlink } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { ModelError, NetworkError } from "./errors.ts";

/** The public hub, used unless `HF_ENDPOINT` names another. */
export const DEFAULT_ENDPOINT = "https://huggingface.co";

/** A file in a hub repository. */
export interface HubFile {
  /** Repository id, `org/name`. */
  repo: string;
  /** Path of the file inside the repository. */
  path: string;
  /** Branch, tag or commit. @default "main" */
  revision?: string;
  /** SHA-256 the file must have, as the hub's file listing states it; else the response headers are used. */
  sha256?: string;
  /** Size in bytes the file must have, as the hub's file listing states it. */
  size?: number;
}

/** Download progress, reported as bytes arrive. */
export interface DownloadProgress {
  file: string;
  receivedBytes: number;
  /** Total size when the server states it. */
  totalBytes?: number;
}

/** Options of {@linkcode downloadHubFile}. */
export interface DownloadOptions {
  /** @default `HF_ENDPOINT`, else the public hub */
  endpoint?: string;
  /** @default {@linkcode defaultCacheDir} */
  cacheDir?: string;
  /** Access token for gated or private repositories. @default `HF_TOKEN` */
  token?: string;
  /** Use only the cache; fail instead of downloading. @default false */
  offline?: boolean;
  onProgress?: (progress: DownloadProgress) => void;
}

/**
 * Return the cache directory: `SINKSTREAM_CACHE`, else the platform's user cache directory
 * (`XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS, `LOCALAPPDATA` on
 * Windows) with `sinkstream` appended.
 */
export function defaultCacheDir(): string {
  const env = process.env;
  if (env.SINKSTREAM_CACHE) return env.SINKSTREAM_CACHE;
  if (process.platform === "darwin") return join(homedir(), "Library", "Caches", "sinkstream");
  if (process.platform === "win32" && env.LOCALAPPDATA) return join(env.LOCALAPPDATA, "sinkstream");
  return join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "sinkstream");
}

/** Return the local path a hub file is cached at. */
export function cachedPath(file: HubFile, cacheDir: string = defaultCacheDir()): string {
  const revision = file.revision ?? "main";
  return join(cacheDir, "hub", ...file.repo.split("/"), revision, ...file.path.split("/"));
}

/**
 * Parse `org/name/path/in/repo[@revision]` into a hub file, or return undefined when the text
 * does not have that shape.
 */
export function parseHubFileId(text: string): HubFile | undefined {
  const match = /^([\w.-]+\/[\w.-]+)\/([^@]+?)(?:@([\w./-]+))?$/.exec(text);
  if (!match || match[2].split("/").some((part) => part === ".." || part === "")) return undefined;
  return { repo: match[1], path: match[2], revision: match[3] };
}

/** Download a hub file into the cache, or find it there, and return its local path. */
export async function downloadHubFile(file: HubFile, options: DownloadOptions = {}): Promise<string> {
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const destination = cachedPath(file, cacheDir);
  if (await fileSize(destination) !== undefined) return destination;

  const label = `${file.repo}/${file.path}`;
  if (options.offline) {
    throw new ModelError(
      `Model file ${label} is not in the cache ${cacheDir} and --offline forbids downloading it; ` +
        `run once without --offline or give a local path`,
    );
  }

  const endpoint = (options.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  const revision = encodeURIComponent(file.revision ?? "main");
  const url = `${endpoint}/${file.repo}/resolve/${revision}/${file.path.split("/").map(encodeURIComponent).join("/")}`;
  const token = options.token ?? process.env.HF_TOKEN;
  const partial = `${destination}.part`;
  await mkdir(dirname(destination), { recursive: true });

  const resumeFrom = (await fileSize(partial)) ?? 0;
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (resumeFrom > 0) headers.range = `bytes=${resumeFrom}-`;

  let response: Response;
  try {
    response = await fetch(url, { headers, redirect: "follow" });
  } catch (error) {
    throw new NetworkError(
      `Download of ${label} from ${endpoint} failed: ${(error as Error).message}; check the network ` +
        `or HF_ENDPOINT, or give a local model path`,
    );
  }
  if (response.status === 401 || response.status === 403) {
    throw new NetworkError(
      `Download of ${label} was refused (HTTP ${response.status}); set HF_TOKEN to a token with access to ${file.repo}`,
    );
  }
  if (response.status === 404) {
    throw new NetworkError(`Model file ${label} not found at ${endpoint} (HTTP 404); check the repository, path and revision`);
  }
  if (response.status === 416) {
    // The partial file is already complete or larger than the file: start over.
    await unlink(partial);
    return downloadHubFile(file, options);
  }
  if (response.status !== 200 && response.status !== 206) {
    throw new NetworkError(`Download of ${label} failed: HTTP ${response.status} from ${endpoint}`);
  }

  const append = response.status === 206;
  const expectedSha256 = file.sha256?.toLowerCase() ??
    parseSha256(response.headers.get("x-linked-etag") ?? response.headers.get("etag"));
  const totalBytes = file.size ?? parseTotalSize(response, append ? resumeFrom : 0);
  let received = append ? resumeFrom : 0;

  const handle = await open(partial, append ? "a" : "w");
  try {
    if (!response.body) throw new NetworkError(`Download of ${label} failed: the response has no body`);
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      await handle.write(chunk);
      received += chunk.length;
      options.onProgress?.({ file: label, receivedBytes: received, totalBytes });
    }
    await handle.sync();
  } catch (error) {
    if (error instanceof NetworkError) throw error;
    throw new NetworkError(
      `Download of ${label} was interrupted after ${received} bytes: ${(error as Error).message}; ` +
        `run the command again to resume`,
    );
  } finally {
    await handle.close();
  }

  if (totalBytes !== undefined && received !== totalBytes) {
    throw new NetworkError(
      `Download of ${label} is incomplete: received ${received} of ${totalBytes} bytes; run the command again to resume`,
    );
  }
  if (expectedSha256 !== undefined) {
    const actual = await sha256File(partial);
    if (actual !== expectedSha256) {
      await unlink(partial);
      throw new NetworkError(
        `Download of ${label} is corrupt: SHA-256 ${actual} differs from the hub's ${expectedSha256}; ` +
          `the partial file was removed, run the command again`,
      );
    }
  }
  await rename(partial, destination);
  return destination;
}

/** Return the SHA-256 of a file as lowercase hex. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Uint8Array);
  return hash.digest("hex");
}

async function fileSize(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch {
    return undefined;
  }
}

function parseSha256(etag: string | null): string | undefined {
  const value = etag?.replace(/^W\//, "").replace(/"/g, "").trim().toLowerCase();
  return value && /^[0-9a-f]{64}$/.test(value) ? value : undefined;
}

function parseTotalSize(response: Response, offset: number): number | undefined {
  const linked = response.headers.get("x-linked-size");
  if (linked && /^\d+$/.test(linked)) return Number(linked);
  const range = response.headers.get("content-range");
  const total = range ? /\/(\d+)$/.exec(range)?.[1] : undefined;
  if (total) return Number(total);
  const length = response.headers.get("content-length");
  if (length && /^\d+$/.test(length)) return offset + Number(length);
  return undefined;
}
