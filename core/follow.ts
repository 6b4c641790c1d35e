/**
 * Reading a growing file like `tail -F`: the bytes already in the file, then whatever is
 * appended, for as long as the reader runs.
 *
 * The file is polled. When the path comes to name another file (rotation: the old file was
 * renamed and a new one created), the rest of the old file is read first and then the new one
 * from its start. When the file shrinks below the offset read so far (truncation, as with
 * `> app.log` or logrotate's `copytruncate`), reading restarts at its start. A path that does
 * not exist yet, or disappears for a while, is waited for.
 *
 * A follower can start where an earlier one stopped (`resumeAt`). It starts at the saved offset
 * when the path still names the same file and that file is at least that long. Otherwise it
 * starts at the start of the file the path names now, as `tail -F` would.
 */

import { type FileHandle, open, stat } from "node:fs/promises";

/** Options of {@linkcode followFile}. */
export interface FollowOptions {
  /** Milliseconds between checks for new bytes, rotation and truncation. @default 250 */
  pollMs?: number;
  /** Ends the iteration at the next check. */
  signal?: AbortSignal;
  /** Bytes per read. @default 65536 */
  readBytes?: number;
  /** Position where an earlier follower of the same path stopped; see {@linkcode FollowStart}. */
  resumeAt?: FollowPosition;
  /** Called once with where reading starts, when the first file is opened; only with `resumeAt`. */
  onStart?: (start: FollowStart) => void;
}

/**
 * Start of a follower given `resumeAt`. `continued` starts at the saved offset. `replaced`
 * starts at the start of another file that the path names now (rotated while no one followed
 * it). `truncated` starts at the start of the same file, now shorter than the offset.
 */
export type FollowStart =
  | { kind: "continued"; file: string; offset: number }
  | { kind: "replaced"; file: string; previous: string }
  | { kind: "truncated"; file: string; size: number; offset: number };

/** Bytes of a followed file, with the file's identity and the offset of their first byte. */
export interface FollowChunk {
  /** Device and inode of the file, `dev:ino`. */
  file: string;
  offset: number;
  bytes: Uint8Array;
}

/** Position of a follower: the file's identity and the offset read so far. */
export interface FollowPosition {
  /** Device and inode of the file, `dev:ino`. */
  file: string;
  offset: number;
}

/** A follower of one path; iterate `bytes()` and read `position` to remember where it is. */
export class FileFollower {
  readonly path: string;
  readonly #pollMs: number;
  readonly #readBytes: number;
  readonly #signal: AbortSignal | undefined;
  #resumeAt: FollowPosition | undefined;
  readonly #onStart: ((start: FollowStart) => void) | undefined;
  #position: FollowPosition | undefined;

  constructor(path: string, options: FollowOptions = {}) {
    this.path = path;
    this.#pollMs = options.pollMs ?? 250;
    this.#readBytes = options.readBytes ?? 65536;
    this.#signal = options.signal;
    this.#resumeAt = options.resumeAt;
    this.#onStart = options.onStart;
  }

  /** The file followed now and the bytes read from it; undefined before it is opened. */
  get position(): FollowPosition | undefined {
    return this.#position === undefined ? undefined : { ...this.#position };
  }

  /** Yield the file's bytes as they arrive; ends only when the signal aborts. */
  async *bytes(): AsyncGenerator<Uint8Array> {
    for await (const chunk of this.chunks()) yield chunk.bytes;
  }

  /**
   * Yield the file's bytes as they arrive, each read with the file it came from and its
   * offset there; ends only when the signal aborts. After rotation or truncation the offset
   * starts again at 0.
   */
  async *chunks(): AsyncGenerator<FollowChunk> {
    let handle: FileHandle | undefined;
    let identity = "";
    let offset = 0;
    try {
      while (!this.#signal?.aborted) {
        if (handle === undefined) {
          const opened = await this.#open();
          if (opened === undefined) {
            await this.#sleep();
            continue;
          }
          ({ handle, identity } = opened);
          offset = await this.#startOffset(handle, identity);
          this.#position = { file: identity, offset };
        }

        // Read everything that is there now.
        const bytes = await this.#read(handle, offset);
        if (bytes.length > 0) {
          const chunk = { file: identity, offset, bytes };
          offset += bytes.length;
          this.#position = { file: identity, offset };
          yield chunk;
          continue;
        }

        // At the end: has the path been rotated to a new file, or this file truncated?
        const current = await this.#identityAtPath();
        if (current !== undefined && current.identity !== identity) {
          // Rotation. The read above found nothing more in the old file, so switch.
          await handle.close();
          handle = undefined;
          continue;
        }
        // NOTE: a file truncated and refilled past the old offset between two polls looks
        // like a file that grew, so its first bytes are missed (tail -F has the same limit).
        const { size } = await handle.stat();
        if (size < offset) {
          offset = 0;
          this.#position = { file: identity, offset };
          continue;
        }
        await this.#sleep();
      }
    } finally {
      await handle?.close();
    }
  }

  /** Return where to start reading the first file opened: 0, or the offset of `resumeAt`. */
  async #startOffset(handle: FileHandle, identity: string): Promise<number> {
    const resumeAt = this.#resumeAt;
    this.#resumeAt = undefined;
    if (resumeAt === undefined) return 0;
    if (resumeAt.file !== identity) {
      this.#onStart?.({ kind: "replaced", file: identity, previous: resumeAt.file });
      return 0;
    }
    const { size } = await handle.stat();
    if (size < resumeAt.offset) {
      this.#onStart?.({ kind: "truncated", file: identity, size, offset: resumeAt.offset });
      return 0;
    }
    this.#onStart?.({ kind: "continued", file: identity, offset: resumeAt.offset });
    return resumeAt.offset;
  }

  async #open(): Promise<{ handle: FileHandle; identity: string } | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(this.path, "r");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    const info = await handle.stat();
    return { handle, identity: `${info.dev}:${info.ino}` };
  }

  async #identityAtPath(): Promise<{ identity: string } | undefined> {
    try {
      const info = await stat(this.path);
      return { identity: `${info.dev}:${info.ino}` };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
  }

  async #read(handle: FileHandle, offset: number): Promise<Uint8Array> {
    const buffer = new Uint8Array(this.#readBytes);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
    return buffer.subarray(0, bytesRead);
  }

  #sleep(): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, this.#pollMs);
      const signal = this.#signal;
      function done() {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      }
      signal?.addEventListener("abort", done, { once: true });
    });
  }
}

/** Follow `path` like `tail -F`, from its first byte; see {@linkcode FileFollower}. */
export function followFile(path: string, options: FollowOptions = {}): AsyncGenerator<Uint8Array> {
  return new FileFollower(path, options).bytes();
}
