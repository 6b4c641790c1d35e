/**
 * Download of a whole model repository from the Hugging Face hub: the files of a Hugging Face
 * layout with one ONNX variant, listed by the hub API and fetched one by one with
 * {@link downloadHubFile} (resume, checksums).
 *
 * The listing comes from `GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true`,
 * whose `siblings` give each file's `rfilename`, `size` and, for files stored with Git LFS,
 * `lfs.sha256`. After every file is in place the listing is saved beside them as
 * `.sinkstream-repo.json`, which marks the download complete and lets `--offline` find it.
 */

import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { ModelError, NetworkError } from "../errors.ts";
import { DEFAULT_ENDPOINT, type DownloadOptions, defaultCacheDir, downloadHubFile } from "../hub.ts";
import { HF_OPTIONAL_FILES, HF_REQUIRED_FILES, ONNX_VARIANTS } from "./hf_model.ts";

/** A hub model repository at a revision. */
export interface HubRepo {
  /** Repository id, `org/name`. */
  repo: string;
  /** Branch, tag or commit. @default "main" */
  revision?: string;
}

/** One file of a repository listing. */
export interface HubRepoFile {
  path: string;
  size?: number;
  sha256?: string;
}

/** Options of {@link downloadHubRepo}. */
export interface RepoDownloadOptions extends DownloadOptions {
  /** ONNX file under `onnx/` to fetch. @default the first of {@link ONNX_VARIANTS} the repository has */
  onnxFile?: string;
}

/** Name of the saved listing that marks a complete download. */
export const REPO_MARKER = ".sinkstream-repo.json";

/** Parse `org/name[@revision]`, or return undefined when the text does not have that shape. */
export function parseHubRepoId(text: string): HubRepo | undefined {
  const match = /^([\w.-]+\/[\w.-]+)(?:@([\w./-]+))?$/.exec(text);
  if (!match || match[1].split("/").some((part) => part === "." || part === "..")) return undefined;
  return { repo: match[1], revision: match[2] };
}

/** Return the cache directory of a repository revision. */
export function repoCacheDir(repo: HubRepo, cacheDir: string = defaultCacheDir()): string {
  return join(cacheDir, "hub", ...repo.repo.split("/"), repo.revision ?? "main");
}

/** Fetch the file listing of a repository revision from the hub API. */
export async function listHubRepo(repo: HubRepo, options: DownloadOptions = {}): Promise<HubRepoFile[]> {
  const endpoint = (options.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  const revision = encodeURIComponent(repo.revision ?? "main");
  const url = `${endpoint}/api/models/${repo.repo}/revision/${revision}?blobs=true`;
  const token = options.token ?? process.env.HF_TOKEN;
  let response: Response;
  try {
    response = await fetch(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  } catch (error) {
    throw new NetworkError(
      `Listing of ${repo.repo} at ${endpoint} failed: ${(error as Error).message}; check the network or HF_ENDPOINT, ` +
        `or use --offline with a cached model`,
    );
  }
  if (response.status === 401 || response.status === 403) {
    throw new NetworkError(`Listing of ${repo.repo} was denied (HTTP ${response.status}); set HF_TOKEN to a token with access to it`);
  }
  if (response.status === 404) {
    throw new NetworkError(
      `Model repository ${repo.repo} at revision ${repo.revision ?? "main"} not found at ${endpoint} (HTTP 404); check the id and revision`,
    );
  }
  if (!response.ok) throw new NetworkError(`Listing of ${repo.repo} failed: HTTP ${response.status} from ${endpoint}`);
  const body = await response.json() as { siblings?: { rfilename?: string; size?: number; lfs?: { sha256?: string; size?: number } }[] };
  if (!Array.isArray(body.siblings)) {
    throw new NetworkError(`Listing of ${repo.repo} from ${endpoint} has no siblings list; is HF_ENDPOINT a hub mirror?`);
  }
  return body.siblings
    .filter((s) => typeof s.rfilename === "string")
    .map((s) => ({ path: s.rfilename!, size: s.lfs?.size ?? s.size, sha256: s.lfs?.sha256 }));
}

/**
 * Select the files a model needs from a listing: the required and optional Hugging Face files
 * present, one ONNX variant and its external data files. Throws naming what is missing.
 */
export function selectModelFiles(repo: HubRepo, listing: HubRepoFile[], onnxFile?: string): HubRepoFile[] {
  const byPath = new Map(listing.map((f) => [f.path, f]));
  const missing = HF_REQUIRED_FILES.filter((name) => !byPath.has(name));
  const candidates = onnxFile ? [onnxFile] : ONNX_VARIANTS;
  const onnx = candidates.find((name) => byPath.has(`onnx/${name}`));
  if (missing.length > 0 || !onnx) {
    const onnxFound = listing.filter((f) => f.path.endsWith(".onnx")).map((f) => f.path);
    const ggufFound = listing.filter((f) => f.path.endsWith(".gguf")).map((f) => f.path);
    const hint = ggufFound.length > 0 ? `; it has GGUF files, give one as ${repo.repo}/${ggufFound[0]}` : "";
    throw new NetworkError(
      `Model repository ${repo.repo} has no usable ONNX export: missing ${[...missing, ...(onnx ? [] : [`onnx/${candidates.join(" or onnx/")}`])].join(", ")}` +
        ` (ONNX files found: ${onnxFound.join(", ") || "none"})${hint}`,
    );
  }
  const selected = [...HF_REQUIRED_FILES, ...HF_OPTIONAL_FILES.filter((name) => byPath.has(name)), `onnx/${onnx}`];
  for (const file of listing) {
    if (file.path.startsWith(`onnx/${onnx}_data`) || file.path === `onnx/${onnx}.data`) selected.push(file.path);
  }
  return selected.map((path) => byPath.get(path)!);
}

/**
 * Download a model repository into the cache, or find it there, and return its local
 * directory. With `offline`, only a complete earlier download is used.
 */
export async function downloadHubRepo(repo: HubRepo, options: RepoDownloadOptions = {}): Promise<string> {
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const dir = repoCacheDir(repo, cacheDir);
  const marker = join(dir, REPO_MARKER);
  try {
    await readFile(marker, "utf8");
    return dir;
  } catch {
    // Not downloaded completely yet.
  }
  if (options.offline) {
    throw new ModelError(
      `Model ${repo.repo} is not in the cache ${cacheDir} and --offline forbids downloading it; ` +
        `run once without --offline or give a local path`,
    );
  }

  const listing = await listHubRepo(repo, options);
  const files = selectModelFiles(repo, listing, options.onnxFile);
  for (const file of files) {
    await downloadHubFile({ repo: repo.repo, revision: repo.revision, path: file.path, sha256: file.sha256, size: file.size }, options);
  }
  await mkdir(dir, { recursive: true });
  await writeFile(marker, JSON.stringify({ repo: repo.repo, revision: repo.revision ?? "main", files }, null, 2));
  return dir;
}
