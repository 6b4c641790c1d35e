/**
 * StreamingLLM KV cache backed by the wasm ring kernel in `wasm/` (built by
 * `scripts/build-wasm.sh` into `wasm/pkg/sinkstream_kv.wasm`).
 *
 * Per layer the cache keeps `sinks` slots for the first tokens of the stream, never evicted,
 * and a circular window of the `window` most recent tokens. Capacity is their sum.
 *
 * Positions are virtual: the i-th cached token (sinks first, then the window from oldest to
 * newest) sits at position `base + i`, and every eviction advances `base` by one. RoPE
 * attention depends only on the distance between positions, so this equals placing each token
 * at its index within the cache, and a window key keeps its position, and its rotation, for
 * its whole life. Only the sink keys are rotated again before each forward pass. When the next
 * chunk would reach `maxPositions`, the kernel moves every position down by `base` once. Every
 * rotation starts from the key the model emitted, so no rounding error builds up over a long
 * stream.
 *
 * One step of a stream, for a chunk of `n` new tokens:
 * 1. `evictFor(n)` before the forward pass drops the oldest window entries so that the chunk
 *    fits. Evicting once before a chunk, not after each token, lets a prefill chunk attend to
 *    the whole cache that will hold it.
 * 2. `prepareHandoff(n)` returns the position of the chunk's first token, and
 *    `handoff()` gives the `past_key_values.{layer}.key/value` inputs, `[kvHeads, length,
 *    headDim]` (batch 1), as views of the kernel's own buffers. Their rows are in no
 *    particular order, the same for keys and values, which attention does not mind. While
 *    the length before each step stays the same, as in decoding, nothing is copied.
 * 3. After the forward pass, `append(layer, …)` for every layer copies the new entries out of
 *    the `present` outputs, and `commit(n)` makes them part of the cache.
 *
 * `preparePast()` with `pastKey` / `pastValue` writes the past in cache order instead, each
 * key rotated to its index, into buffers of its own. It exists for inspection and tests.
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { embeddedFiles } from "./embedded_files.ts";
import type { RopeConfig } from "./types.ts";

/** Sizes of a KV cache. */
export interface KvKernelOptions {
  /** Number of transformer layers. */
  layers: number;
  /** Number of key/value heads per layer. */
  kvHeads: number;
  /** Elements per head. */
  headDim: number;
  /** Number of sink slots, the first tokens of the stream kept for good (may be 0). */
  sinks: number;
  /** Number of window slots for the most recent tokens (at least 1). */
  window: number;
  /** RoPE settings of the model; the kernel uses `dim`, `layout` and `invFreq`. */
  rope: RopeConfig;
  /**
   * Position ids handed out stay below this; at least the capacity. The runtime's
   * `maxPositions` lets window keys keep their rotation for `maxPositions - capacity` tokens.
   * @default sinks + window, which rotates every window key on every eviction
   */
  maxPositions?: number;
}

/** The past of one layer as a runtime takes it, each `[kvHeads, length, headDim]`. */
export interface HandoffLayer {
  key: Float32Array;
  value: Float32Array;
}

/**
 * Raw exports of `sinkstream_kv.wasm`. A handle is a pointer into its memory. Pointers come
 * back as i32, so the wrapper reads them with `>>> 0` to keep addresses past 2 GiB positive.
 */
interface KernelExports {
  memory: WebAssembly.Memory;
  kv_alloc(bytes: number): number;
  kv_dealloc(pointer: number, bytes: number): void;
  kv_create(
    layers: number,
    kvHeads: number,
    headDim: number,
    sinks: number,
    window: number,
    ropeDim: number,
    layout: number,
    invFreq: number,
    outHandle: number,
  ): number;
  kv_create_positioned(
    layers: number,
    kvHeads: number,
    headDim: number,
    sinks: number,
    window: number,
    ropeDim: number,
    layout: number,
    invFreq: number,
    maxPositions: number,
    outHandle: number,
  ): number;
  kv_free(handle: number): void;
  kv_evict_for(handle: number, incoming: number): number;
  kv_staging_keys(handle: number): number;
  kv_staging_values(handle: number): number;
  kv_append(handle: number, layer: number, count: number): number;
  kv_commit(handle: number, count: number): number;
  kv_prepare_handoff(handle: number, incoming: number): number;
  kv_handoff_keys(handle: number, layer: number): number;
  kv_handoff_values(handle: number, layer: number): number;
  kv_prepare_past(handle: number): number;
  kv_past_keys(handle: number, layer: number): number;
  kv_past_values(handle: number, layer: number): number;
  kv_snapshot(handle: number): number;
  kv_restore(handle: number): number;
  kv_set_simd(handle: number, enabled: number): number;
  kv_query(handle: number, query: number): number;
  kv_entered_at(handle: number, index: number): number;
  kv_export_state(handle: number, out: number, bytes: number): number;
  kv_import_state(handle: number, input: number, bytes: number): number;
}

/** Status codes of the kernel (`Status` in `wasm/src/lib.rs`). */
const Status = {
  ok: 0,
  nullPointer: 1,
  invalidLayers: 2,
  invalidKvHeads: 3,
  invalidHeadDim: 4,
  invalidWindow: 5,
  invalidRopeDim: 6,
  invalidLayout: 7,
  invalidInvFreq: 8,
  tooLarge: 9,
  outOfMemory: 10,
  chunkTooLarge: 11,
  noRoom: 12,
  invalidLayer: 13,
  notStaged: 14,
  noSnapshot: 15,
  corrupted: 16,
  invalidState: 17,
  invalidPositions: 18,
  positionLimit: 19,
} as const;

/** Selectors of `kv_query` (`Query` in `wasm/src/lib.rs`). */
const Query = {
  length: 0,
  sinksFilled: 1,
  windowLength: 2,
  capacity: 3,
  totalEvicted: 4,
  totalCommitted: 5,
  maxIncoming: 6,
  stateBytes: 7,
  maxPositions: 8,
  base: 9,
  preparedBytes: 10,
} as const;

const LAYOUT_CODES = { adjacent: 0, halves: 1 } as const;

/** Largest value of a u32 argument of the kernel. */
const MAX_U32 = 0xffff_ffff;

/** Largest capacity the kernel accepts, so positions and counts fit in i32. */
const MAX_CAPACITY = 0x7fff_ffff;

/** Default location of the kernel: `wasm/pkg/` of the project that contains this module. */
const DEFAULT_WASM_URL = new URL("../wasm/pkg/sinkstream_kv.wasm", import.meta.url);

/** Returns the kernel embedded in a single binary, or {@linkcode DEFAULT_WASM_URL} from source. */
function defaultKernelUrl(): URL {
  const embedded = embeddedFiles().kvKernel;
  return embedded === undefined ? DEFAULT_WASM_URL : pathToFileURL(embedded);
}

/** Returns a description of the kernel's status code, for error messages. */
function describeStatus(status: number): string {
  const name = Object.entries(Status).find(([, code]) => code === status)?.[0];
  return name === undefined ? `unknown status ${status}` : `status ${status} (${name})`;
}

/** Throws a RangeError unless `value` is a whole number in `minimum..=maximum`. */
function checkWhole(
  value: number,
  minimum: number,
  maximum: number,
  what: string,
  rule: string,
): void {
  if (!Number.isInteger(value) || value < minimum || value > maximum) {
    throw new RangeError(`Invalid ${what}: current value is ${value}; ${rule}`);
  }
}

/**
 * StreamingLLM sink + window KV cache of one stream, in its own wasm instance.
 *
 * Call `await KvKernel.load()` once to compile the kernel, then construct caches
 * synchronously. Call `dispose()` when done.
 *
 * @example
 * ```ts
 * import { KvKernel } from "./kv_kernel.ts";
 * import { ropeInvFreq } from "./types.ts";
 *
 * await KvKernel.load();
 * const rope = { dim: 8, base: 10000, layout: "adjacent" as const, invFreq: ropeInvFreq(8, 10000) };
 * const cache = new KvKernel({ layers: 1, kvHeads: 1, headDim: 8, sinks: 1, window: 2, rope });
 * try {
 *   for (let token = 0; token < 5; token++) {
 *     cache.evictFor(1);
 *     const key = new Float32Array(8).fill(token);
 *     cache.append(0, key, key, 1);
 *     cache.commit(1);
 *   }
 *   cache.preparePast();
 *   if (cache.length !== 3 || cache.pastValue(0)[8] !== 3) throw new Error("unexpected cache");
 * } finally {
 *   cache.dispose();
 * }
 * ```
 */
export class KvKernel {
  static #module: WebAssembly.Module | undefined;

  /** Sizes the cache was created with. */
  readonly options: Readonly<KvKernelOptions>;
  #exports: KernelExports;
  #handle: number;
  /** Views from the last `handoff()`, reused while the length and the wasm memory stay the same. */
  #handoff: HandoffLayer[] = [];
  #handoffLength = -1;
  #handoffBuffer: ArrayBufferLike | undefined;

  /**
   * Compiles the kernel once; later calls return at once. Reads the file with
   * `node:fs/promises`, which Bun and Deno both provide, because `fetch` of a `file:` URL
   * does not work in every runtime.
   *
   * @param url Location of `sinkstream_kv.wasm`.
   * @default url the file embedded in a Bun binary, else `../wasm/pkg/sinkstream_kv.wasm` relative to this module
   */
  static async load(url: URL = defaultKernelUrl()): Promise<void> {
    if (KvKernel.#module !== undefined) return;
    const path = fileURLToPath(url);
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      // The copy gives a plain ArrayBuffer-backed array, the type WebAssembly.compile takes.
      bytes = new Uint8Array(await readFile(path));
    } catch (error) {
      throw new Error(
        `Failed to read the KV kernel at ${path}: ${error}; run scripts/build-wasm.sh to build it`,
      );
    }
    KvKernel.#module = await WebAssembly.compile(bytes);
  }

  /** Loads the kernel if needed and creates a cache. */
  static async create(options: KvKernelOptions): Promise<KvKernel> {
    await KvKernel.load();
    return new KvKernel(options);
  }

  /**
   * Creates a cache and allocates all of its buffers. Requires `KvKernel.load()` first.
   *
   * @throws RangeError when a size is invalid or the buffers do not fit in wasm memory
   */
  constructor(options: KvKernelOptions) {
    const module = KvKernel.#module;
    if (module === undefined) {
      throw new Error("Failed to create a KV cache: the kernel is not loaded; await KvKernel.load() first");
    }
    const { layers, kvHeads, headDim, sinks, window, rope } = options;
    const maxPositions = options.maxPositions ?? sinks + window;
    checkWhole(layers, 1, MAX_U32, "layer count", "the layer count must be a whole number ≥ 1");
    checkWhole(kvHeads, 1, MAX_U32, "KV head count", "the KV head count must be a whole number ≥ 1");
    checkWhole(headDim, 1, MAX_U32, "head size", "the head size must be a whole number ≥ 1");
    checkWhole(sinks, 0, MAX_U32, "sink count", "the sink count must be a whole number ≥ 0");
    checkWhole(window, 1, MAX_U32, "window size", "the window must be a whole number ≥ 1");
    if (sinks + window > MAX_CAPACITY) {
      throw new RangeError(
        `Invalid capacity: current value is ${sinks + window}; sinks plus window must be at most ${MAX_CAPACITY}`,
      );
    }
    if (!Number.isInteger(rope.dim) || rope.dim < 0 || rope.dim % 2 !== 0 || rope.dim > headDim) {
      throw new RangeError(
        `Invalid rotary dim: current value is ${rope.dim}; it must be an even whole number from 0 to the head size ${headDim}`,
      );
    }
    if (!Number.isInteger(maxPositions) || maxPositions < sinks + window || maxPositions > MAX_CAPACITY) {
      throw new RangeError(
        `Invalid position limit: current value is ${maxPositions}; it must be a whole number from the capacity ${sinks + window} to ${MAX_CAPACITY}`,
      );
    }
    const layout = LAYOUT_CODES[rope.layout];
    if (layout === undefined) {
      throw new RangeError(
        `Invalid RoPE layout: current value is ${JSON.stringify(rope.layout)}; it must be "adjacent" or "halves"`,
      );
    }
    const pairs = rope.dim / 2;
    if (rope.invFreq.length !== pairs) {
      const count = rope.invFreq.length;
      throw new RangeError(
        `Invalid inverse frequency count: current value is ${count}; it must be half the rotary dim, ${pairs}`,
      );
    }
    const bad = rope.invFreq.findIndex((frequency) => !Number.isFinite(frequency));
    if (bad >= 0) {
      const frequency = rope.invFreq[bad];
      throw new RangeError(
        `Invalid inverse frequency at index ${bad}: current value is ${frequency}; every frequency must be finite`,
      );
    }

    const instance = new WebAssembly.Instance(module, {});
    this.#exports = instance.exports as unknown as KernelExports;
    this.options = Object.freeze({ ...options, maxPositions });
    this.#handle = this.#createRing(layout);
  }

  /** Copies the inverse frequencies into wasm memory and creates the ring; returns its handle. */
  #createRing(layout: number): number {
    const { layers, kvHeads, headDim, sinks, window, rope, maxPositions } = this.options;
    const exports = this.#exports;
    // 8 bytes for the handle, then the f64 frequencies; kv_alloc aligns to 8.
    const bytes = 8 + rope.invFreq.length * 8;
    const scratch = exports.kv_alloc(bytes) >>> 0;
    if (scratch === 0) {
      throw new RangeError(`Failed to allocate ${bytes} bytes of wasm memory for the KV cache setup`);
    }
    try {
      new Float64Array(exports.memory.buffer, scratch + 8, rope.invFreq.length).set(rope.invFreq);
      const status = exports.kv_create_positioned(
        layers,
        kvHeads,
        headDim,
        sinks,
        window,
        rope.dim,
        layout,
        scratch + 8,
        maxPositions ?? 0,
        scratch,
      );
      if (status !== Status.ok) {
        const reason = status === Status.tooLarge || status === Status.outOfMemory
          ? "the buffers do not fit in 4 GiB of wasm memory; reduce the layers, heads, head size or capacity"
          : `the kernel returned ${describeStatus(status)}`;
        const shape = `${layers} layers × ${kvHeads} heads × ${headDim} dims × ${sinks + window} slots`;
        throw new RangeError(`Failed to create a KV cache of ${shape}: ${reason}`);
      }
      return new Uint32Array(exports.memory.buffer, scratch, 1)[0];
    } finally {
      exports.kv_dealloc(scratch, bytes);
    }
  }

  /** Returns the live handle, or throws once the cache is disposed. */
  #live(): number {
    if (this.#handle === 0) {
      throw new Error("Failed to use the KV cache: it was disposed");
    }
    return this.#handle;
  }

  #query(query: number): number {
    return this.#exports.kv_query(this.#live(), query);
  }

  /** Number of transformer layers. */
  get layers(): number {
    return this.options.layers;
  }

  /** Number of cached entries. */
  get length(): number {
    return this.#query(Query.length);
  }

  /** Number of sink slots in use. */
  get sinksFilled(): number {
    return this.#query(Query.sinksFilled);
  }

  /** Number of window entries. */
  get windowLength(): number {
    return this.#query(Query.windowLength);
  }

  /** Number of slots: sinks plus window. */
  get capacity(): number {
    return this.#query(Query.capacity);
  }

  /** Number of entries evicted since creation. */
  get totalEvicted(): number {
    return this.#query(Query.totalEvicted);
  }

  /** Number of entries committed since creation. */
  get totalCommitted(): number {
    return this.#query(Query.totalCommitted);
  }

  /**
   * Largest chunk `evictFor` can make room for: the free sinks plus the whole window, because
   * sinks fill first and every later token goes to the window.
   */
  get maxIncoming(): number {
    return this.#query(Query.maxIncoming);
  }

  /** Position ids handed out stay below this. */
  get maxPositions(): number {
    return this.#query(Query.maxPositions);
  }

  /** Position of the first cached entry; the i-th entry sits at `base + i`. */
  get base(): number {
    return this.#query(Query.base);
  }

  /**
   * Bytes the kernel has written to ready the past since creation: relayouts of the handoff
   * buffers, sink rotations, rebases and rows moved by evictions.
   */
  get preparedBytes(): number {
    return this.#query(Query.preparedBytes);
  }

  /**
   * Returns the position the `index`-th cached entry entered the cache with, the one the model
   * rotated its key to.
   */
  enteredAt(index: number): number {
    const length = this.length;
    checkWhole(index, 0, length - 1, "entry index", `the index must be a whole number below the length ${length}`);
    return this.#exports.kv_entered_at(this.#live(), index);
  }

  /**
   * Selects the SIMD128 loops or the scalar loops, which return identical results; returns
   * whether the SIMD loops are in use afterwards. SIMD is on by default when the build has it.
   */
  setSimd(enabled: boolean): boolean {
    return this.#exports.kv_set_simd(this.#live(), enabled ? 1 : 0) === 1;
  }

  /**
   * Evicts the oldest window entries so that `incoming` new entries fit; returns how many
   * were evicted.
   *
   * @throws RangeError when `incoming` exceeds `maxIncoming`
   */
  evictFor(incoming: number): number {
    const maxIncoming = this.maxIncoming;
    checkWhole(
      incoming,
      0,
      maxIncoming,
      "chunk size",
      `a chunk can hold at most ${maxIncoming} entries (the free sinks plus the window), so split it`,
    );
    const evicted = this.#exports.kv_evict_for(this.#live(), incoming);
    if (evicted < 0) {
      throw new Error(`Failed to evict for ${incoming} entries: the kernel returned ${describeStatus(-evicted)}`);
    }
    return evicted;
  }

  /**
   * Copies the new entries of one layer into the cache's free slots. `key` and `value` are
   * `[kvHeads, sequenceLength, headDim]` (a `present` output of batch 1, or only the new
   * entries), and the new entries are tokens `start..start + count` of each head. Call it for
   * every layer with the same `count`, then `commit(count)`.
   *
   * Each head's run is copied once into a staging buffer in wasm memory and once from there
   * into the ring.
   *
   * @param start First new token within `sequenceLength`.
   * @param sequenceLength Tokens per head in `key` and `value`.
   * @default start 0
   * @default sequenceLength `start + count`, so a `present` output needs only `start` = past length
   * @throws RangeError on a layer out of range, a wrong tensor length or too little room
   */
  append(
    layer: number,
    key: Float32Array,
    value: Float32Array,
    count: number,
    start = 0,
    sequenceLength: number = start + count,
  ): void {
    const handle = this.#live();
    const { layers, kvHeads, headDim } = this.options;
    checkWhole(layer, 0, layers - 1, "layer index", `the index must be a whole number below ${layers}`);
    const free = this.capacity - this.length;
    checkWhole(count, 0, free, "entry count", `only ${free} slots are free; call evictFor(${count}) first`);
    checkWhole(start, 0, MAX_U32, "start token", "the start must be a whole number ≥ 0");
    checkWhole(
      sequenceLength,
      start + count,
      MAX_U32,
      "sequence length",
      `the sequence must hold tokens ${start} to ${start + count - 1}, so it needs at least ${start + count}`,
    );
    const elements = kvHeads * sequenceLength * headDim;
    for (const [name, tensor] of [["key", key], ["value", value]] as const) {
      if (tensor.length !== elements) {
        throw new RangeError(
          `Invalid ${name} tensor length: current value is ${tensor.length}; a [${kvHeads}, ${sequenceLength}, ${headDim}] tensor has ${elements} elements`,
        );
      }
    }

    const exports = this.#exports;
    const run = count * headDim;
    const stagedKeys = new Float32Array(exports.memory.buffer, exports.kv_staging_keys(handle) >>> 0, kvHeads * run);
    const stagedValues = new Float32Array(
      exports.memory.buffer,
      exports.kv_staging_values(handle) >>> 0,
      kvHeads * run,
    );
    for (let head = 0; head < kvHeads; head++) {
      const from = (head * sequenceLength + start) * headDim;
      stagedKeys.set(key.subarray(from, from + run), head * run);
      stagedValues.set(value.subarray(from, from + run), head * run);
    }
    const status = exports.kv_append(handle, layer, count);
    if (status !== Status.ok) {
      throw new Error(
        `Failed to append ${count} entries to layer ${layer}: the kernel returned ${describeStatus(status)}`,
      );
    }
  }

  /**
   * Copies the last `count` tokens of a `present` output `[kvHeads, pastLength + count, headDim]`
   * (batch 1) of one layer into the cache; the same as `append(layer, key, value, count, pastLength)`.
   */
  appendPresent(layer: number, key: Float32Array, value: Float32Array, pastLength: number, count: number): void {
    this.append(layer, key, value, count, pastLength, pastLength + count);
  }

  /**
   * Makes the `count` entries appended to every layer part of the cache, at positions
   * `length..length + count`.
   *
   * @throws RangeError when `count` exceeds the free slots
   * @throws Error when some layer was not appended with `count` entries
   */
  commit(count: number): void {
    const handle = this.#live();
    const free = this.capacity - this.length;
    checkWhole(count, 0, free, "entry count", `only ${free} slots are free; call evictFor(${count}) first`);
    const status = this.#exports.kv_commit(handle, count);
    if (status === Status.notStaged) {
      throw new Error(
        `Failed to commit ${count} entries: not every layer was appended with ${count} entries; call append for each of the ${this.options.layers} layers first`,
      );
    }
    if (status !== Status.ok) {
      throw new Error(`Failed to commit ${count} entries: the kernel returned ${describeStatus(status)}`);
    }
  }

  /**
   * Ready the past of every layer for a forward pass of `incoming` new entries, after
   * `evictFor(incoming)`, and return the position id of the first new entry, `base + length`.
   * The new entries take positions from there, and `commit` records them so.
   *
   * @throws RangeError when `incoming` exceeds the free slots
   */
  prepareHandoff(incoming: number): number {
    const free = this.capacity - this.length;
    checkWhole(incoming, 0, free, "entry count", `only ${free} slots are free; call evictFor(${incoming}) first`);
    const position = this.#exports.kv_prepare_handoff(this.#live(), incoming);
    if (position < 0) {
      throw new Error(`Failed to prepare the past keys and values: the kernel returned ${describeStatus(-position)}`);
    }
    return position;
  }

  /**
   * Returns the past of every layer from the last `prepareHandoff`, views of wasm memory
   * `[kvHeads, length, headDim]` whose rows are in the same order for keys and values. The
   * array and its views are reused while the length stays the same: `append` overwrites rows,
   * and the first `snapshot` may grow the memory and detach them.
   */
  handoff(): readonly HandoffLayer[] {
    const handle = this.#live();
    const exports = this.#exports;
    const length = this.length;
    const buffer = exports.memory.buffer;
    if (length !== this.#handoffLength || buffer !== this.#handoffBuffer) {
      const { layers, kvHeads, headDim } = this.options;
      const elements = kvHeads * length * headDim;
      this.#handoff = [];
      for (let layer = 0; layer < layers; layer++) {
        this.#handoff.push({
          key: new Float32Array(buffer, exports.kv_handoff_keys(handle, layer) >>> 0, elements),
          value: new Float32Array(buffer, exports.kv_handoff_values(handle, layer) >>> 0, elements),
        });
      }
      this.#handoffLength = length;
      this.#handoffBuffer = buffer;
    }
    return this.#handoff;
  }

  /**
   * Writes every layer's keys, each rotated to its index within the cache, and values in
   * cache order into buffers that `pastKey` and `pastValue` view, for inspection. The first
   * call allocates them. Costs O(capacity), whatever the length of the stream.
   */
  preparePast(): void {
    const status = this.#exports.kv_prepare_past(this.#live());
    if (status !== Status.ok) {
      throw new Error(`Failed to write the cache-order past: the kernel returned ${describeStatus(status)}`);
    }
  }

  /**
   * Returns a view of the keys of `layer` from the last `preparePast`, `[kvHeads, length, headDim]`
   * in cache order.
   *
   * The view aliases wasm memory: the next `preparePast` overwrites it, and the first
   * `snapshot` may grow the memory and detach it (its length becomes 0). Copy it to keep it.
   *
   * @throws Error before the first `preparePast`
   */
  pastKey(layer: number): Float32Array {
    return this.#pastView(layer, this.#exports.kv_past_keys);
  }

  /** Returns a view of the values of `layer`, laid out and aliased like `pastKey`. */
  pastValue(layer: number): Float32Array {
    return this.#pastView(layer, this.#exports.kv_past_values);
  }

  #pastView(layer: number, pointerOf: (handle: number, layer: number) => number): Float32Array {
    const handle = this.#live();
    const { layers, kvHeads, headDim } = this.options;
    checkWhole(layer, 0, layers - 1, "layer index", `the index must be a whole number below ${layers}`);
    const elements = kvHeads * this.length * headDim;
    const pointer = pointerOf(handle, layer) >>> 0;
    if (pointer === 0) {
      throw new Error("Failed to view the cache-order past: it was never written; call preparePast() first");
    }
    return new Float32Array(this.#exports.memory.buffer, pointer, elements);
  }

  /**
   * Saves the cache state, replacing any earlier snapshot. The first call allocates as much
   * as the cache itself, which may grow wasm memory and detach earlier `pastKey` views.
   */
  snapshot(): void {
    const status = this.#exports.kv_snapshot(this.#live());
    if (status !== Status.ok) {
      throw new RangeError(`Failed to snapshot the KV cache: the kernel returned ${describeStatus(status)}`);
    }
  }

  /**
   * Brings back the state of the last snapshot and drops appends not yet committed. The
   * snapshot is kept, so it can be restored again.
   *
   * @throws Error when no snapshot was taken
   */
  restore(): void {
    const status = this.#exports.kv_restore(this.#live());
    if (status === Status.noSnapshot) {
      throw new Error("Failed to restore the KV cache: no snapshot was taken; call snapshot() first");
    }
    if (status !== Status.ok) {
      throw new Error(`Failed to restore the KV cache: the kernel returned ${describeStatus(status)}`);
    }
  }

  /**
   * Returns the whole cache state as bytes: sizes, counters, positions, keys and values (the
   * layout is documented in `wasm/src/state.rs`). The snapshot of `snapshot()` is not included.
   */
  exportState(): Uint8Array {
    const handle = this.#live();
    const exports = this.#exports;
    const bytes = this.#query(Query.stateBytes);
    const buffer = exports.kv_alloc(bytes) >>> 0;
    if (buffer === 0) {
      throw new RangeError(`Failed to allocate ${bytes} bytes of wasm memory to export the KV cache state`);
    }
    try {
      const status = exports.kv_export_state(handle, buffer, bytes);
      if (status !== Status.ok) {
        throw new Error(`Failed to export the KV cache state: the kernel returned ${describeStatus(status)}`);
      }
      return new Uint8Array(exports.memory.buffer, buffer, bytes).slice();
    } finally {
      exports.kv_dealloc(buffer, bytes);
    }
  }

  /**
   * Replaces the cache state with bytes from `exportState` of a cache with the same sizes,
   * RoPE settings and `maxPositions`, and drops appends not yet committed. On failure the cache is unchanged.
   *
   * @throws RangeError when the bytes were exported by a cache of other sizes, or are damaged
   */
  importState(state: Uint8Array): void {
    const handle = this.#live();
    const exports = this.#exports;
    const expected = this.#query(Query.stateBytes);
    if (state.length !== expected) {
      throw new RangeError(
        `Failed to import the KV cache state: current length is ${state.length} bytes; a cache of these sizes needs ${expected}`,
      );
    }
    const buffer = exports.kv_alloc(state.length) >>> 0;
    if (buffer === 0) {
      throw new RangeError(`Failed to allocate ${state.length} bytes of wasm memory to import the KV cache state`);
    }
    try {
      new Uint8Array(exports.memory.buffer, buffer, state.length).set(state);
      const status = exports.kv_import_state(handle, buffer, state.length);
      if (status === Status.invalidState) {
        throw new RangeError(
          "Failed to import the KV cache state: its sizes, version or counters do not match this cache; export it from a cache created with the same options, maxPositions included",
        );
      }
      if (status !== Status.ok) {
        throw new Error(`Failed to import the KV cache state: the kernel returned ${describeStatus(status)}`);
      }
    } finally {
      exports.kv_dealloc(buffer, state.length);
    }
  }

  /** Frees the cache's wasm memory. Later calls, except `dispose`, throw. */
  dispose(): void {
    if (this.#handle !== 0) {
      this.#exports.kv_free(this.#handle);
      this.#handle = 0;
    }
  }
}
