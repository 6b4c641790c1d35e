/**
 * A streaming session's whole state in one file, so a stream can stop and resume in another
 * process exactly where it was. The file contains the KV cache (sizes, positions, counters,
 * keys, values), the session's counters, and what the pipeline needs to continue, such as
 * line counts and the last logits row.
 *
 * File layout, integers little-endian:
 *
 * | bytes | content |
 * | --- | --- |
 * | 8 | magic `SNKSTATE` |
 * | 4 | format version (u32) |
 * | 4 | header length `H` (u32) |
 * | H | header, UTF-8 JSON: model fingerprint, cache sizes, session counters, pipeline state, blob list |
 * | … | blobs, concatenated in the order of the header's list (the first is the kernel state) |
 * | 32 | SHA-256 of every byte before it |
 *
 * Files are written atomically: a temporary file in the same directory is written, fsynced
 * and renamed over the target, then the directory is fsynced.
 */

import { createHash } from "node:crypto";
import { open, readdir, readFile, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import process from "node:process";
import { StateError } from "./errors.ts";
import { parseGguf } from "./gguf.ts";
import type { CacheSizes, SessionStats, StreamingSession } from "./session.ts";

/**
 * Version of the file layout above; bump it when the layout, the header or the kernel state
 * changes meaning. Version 2 added the input record of the pipeline state (the followed
 * file's position, or the lines read but not ingested) and contains kernel state version 2,
 * whose positions have a base.
 */
export const STATE_FILE_VERSION = 2;

const MAGIC = new TextEncoder().encode("SNKSTATE");
const DIGEST_BYTES = 32;

/** Everything a state file holds. */
export interface StreamState {
  /** Fingerprint of the model the state was made with (see {@linkcode modelFingerprint}). */
  model: string;
  sizes: CacheSizes;
  stats: SessionStats;
  /** Bytes of `KvKernel.exportState`. */
  kernel: Uint8Array;
  /** JSON-compatible state of the pipeline that drove the session. */
  pipeline: Record<string, unknown>;
  /** Binary parts of the pipeline state, such as a logits row. */
  blobs: Record<string, Uint8Array>;
}

interface Header {
  model: string;
  sizes: CacheSizes;
  stats: SessionStats;
  pipeline: Record<string, unknown>;
  blobs: { name: string; bytes: number }[];
}

/**
 * Return a fingerprint of a model: `sha256:` and the SHA-256 of a GGUF file's tensor data, so
 * two files with the same tensor bytes (a GGUF v1 file and its v3 re-encoding) share it. For
 * a model directory or another file type it hashes the metadata and sizes instead: every
 * file's relative name and size, and the contents of files under 1 MiB (configs, vocabularies).
 */
export async function modelFingerprint(path: string): Promise<string> {
  const hash = createHash("sha256");
  if ((await stat(path)).isDirectory()) {
    await hashDirectory(hash, path, "");
    return "sha256:" + hash.digest("hex");
  }
  const bytes = new Uint8Array(await readFile(path));
  let dataOffset: number;
  try {
    dataOffset = parseGguf(bytes).dataOffset;
  } catch {
    dataOffset = 0; // Not GGUF: hash the whole file.
  }
  return "sha256:" + hash.update(bytes.subarray(dataOffset)).digest("hex");
}

const SMALL_FILE_BYTES = 1 << 20;

async function hashDirectory(hash: ReturnType<typeof createHash>, root: string, relative: string): Promise<void> {
  const entries = (await readdir(join(root, relative), { withFileTypes: true }))
    .sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const entry of entries) {
    const name = relative === "" ? entry.name : `${relative}/${entry.name}`;
    if (entry.isDirectory()) {
      await hashDirectory(hash, root, name);
      continue;
    }
    const { size } = await stat(join(root, name));
    hash.update(`${name}\0${size}\0`);
    if (size < SMALL_FILE_BYTES) hash.update(await readFile(join(root, name)));
  }
}

/** Capture the state of a session and of the pipeline around it. */
export function captureState(
  session: StreamingSession,
  model: string,
  pipeline: Record<string, unknown>,
  blobs: Record<string, Uint8Array> = {},
): StreamState {
  return {
    model,
    sizes: { ...session.sizes },
    stats: { ...session.stats },
    kernel: session.kernel.exportState(),
    pipeline,
    blobs,
  };
}

/**
 * Load a saved state into a fresh session.
 *
 * @throws StateError when the state was made for another model or other cache sizes
 */
export function restoreState(session: StreamingSession, state: StreamState, model: string, path: string): void {
  if (state.model !== model) {
    throw new StateError(
      `Cannot resume from ${path}: it was saved with another model (${state.model}, this one is ${model}); ` +
        `use the same --model or delete the state file to start over`,
    );
  }
  const { sinks, window, chunkSize } = session.sizes;
  const saved = state.sizes;
  if (saved.sinks !== sinks || saved.window !== window || saved.chunkSize !== chunkSize) {
    throw new StateError(
      `Cannot resume from ${path}: it was saved with --sinks ${saved.sinks} --window ${saved.window} --chunk ${saved.chunkSize}, ` +
        `current values are ${sinks}, ${window} and ${chunkSize}; pass the saved values or delete the state file to start over`,
    );
  }
  try {
    session.kernel.importState(state.kernel);
  } catch (error) {
    throw new StateError(`Cannot resume from ${path}: ${(error as Error).message}; delete the state file to start over`);
  }
  Object.assign(session.stats, state.stats);
}

/** Serialize a state to the file layout in the module documentation. */
export function encodeState(state: StreamState): Uint8Array {
  const blobList = [["kernel", state.kernel] as const, ...Object.entries(state.blobs)];
  const header: Header = {
    model: state.model,
    sizes: state.sizes,
    stats: state.stats,
    pipeline: state.pipeline,
    blobs: blobList.map(([name, bytes]) => ({ name, bytes: bytes.length })),
  };
  const headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const bodyLength = blobList.reduce((sum, [, bytes]) => sum + bytes.length, 0);
  const out = new Uint8Array(MAGIC.length + 8 + headerBytes.length + bodyLength + DIGEST_BYTES);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  view.setUint32(MAGIC.length, STATE_FILE_VERSION, true);
  view.setUint32(MAGIC.length + 4, headerBytes.length, true);
  let offset = MAGIC.length + 8;
  out.set(headerBytes, offset);
  offset += headerBytes.length;
  for (const [, bytes] of blobList) {
    out.set(bytes, offset);
    offset += bytes.length;
  }
  out.set(createHash("sha256").update(out.subarray(0, offset)).digest(), offset);
  return out;
}

/**
 * Parse a state file's bytes.
 *
 * @throws StateError for a file that is not a state file, has another version or fails its checksum
 */
export function decodeState(bytes: Uint8Array, path: string): StreamState {
  const fail = (reason: string): never => {
    throw new StateError(`Cannot resume from ${path}: ${reason}; delete the state file to start over`);
  };
  const minimum = MAGIC.length + 8 + DIGEST_BYTES;
  if (bytes.length < minimum || !MAGIC.every((byte, i) => bytes[i] === byte)) {
    fail("it is not a sinkstream state file");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(MAGIC.length, true);
  if (version !== STATE_FILE_VERSION) {
    fail(`its format version is ${version}, this sinkstream reads version ${STATE_FILE_VERSION}`);
  }
  const digestAt = bytes.length - DIGEST_BYTES;
  const digest = createHash("sha256").update(bytes.subarray(0, digestAt)).digest();
  if (!digest.equals(bytes.subarray(digestAt))) fail("its checksum does not match, so the file is damaged");

  const headerLength = view.getUint32(MAGIC.length + 4, true);
  let offset = MAGIC.length + 8;
  if (offset + headerLength > digestAt) fail("its header length exceeds the file");
  let header: Header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(offset, offset + headerLength)));
  } catch {
    return fail("its header is not valid JSON");
  }
  offset += headerLength;
  const blobs: Record<string, Uint8Array> = {};
  for (const { name, bytes: length } of header.blobs) {
    if (offset + length > digestAt) fail(`its part ${JSON.stringify(name)} exceeds the file`);
    blobs[name] = bytes.slice(offset, offset + length);
    offset += length;
  }
  const { kernel, ...rest } = blobs;
  if (kernel === undefined) fail("it has no KV cache part");
  return {
    model: header.model,
    sizes: header.sizes,
    stats: header.stats,
    kernel,
    pipeline: header.pipeline,
    blobs: rest,
  };
}

/** Write a state file atomically: temporary file, fsync, rename, fsync of the directory. */
export async function writeStateFile(path: string, state: StreamState): Promise<void> {
  const bytes = encodeState(state);
  const directory = dirname(path);
  const temporary = join(directory, `.${basename(path)}.${process.pid}.tmp`);
  const file = await open(temporary, "w", 0o600);
  try {
    await file.writeFile(bytes);
    await file.sync();
  } finally {
    await file.close();
  }
  try {
    await rename(temporary, path);
  } catch (error) {
    await unlink(temporary).catch(() => {});
    throw error;
  }
  // Make the rename itself durable. Some platforms cannot open a directory; the rename has
  // happened either way.
  try {
    const dir = await open(directory, "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  } catch {
    // NOTE: without a directory fsync a crash right after the rename may bring back the old file.
  }
}

/** Read a state file; returns undefined when it does not exist yet. */
export async function readStateFile(path: string): Promise<StreamState | undefined> {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new StateError(`Cannot read the state file ${path}: ${(error as Error).message}`);
  }
  return decodeState(bytes, path);
}
