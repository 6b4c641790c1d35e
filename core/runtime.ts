/**
 * Runs a llama decoder ONNX graph with onnxruntime-web's WebAssembly backend, or with
 * onnxruntime-node's CPU execution provider (`backend: "native"`).
 *
 * Needs no `ort.env.wasm.wasmPaths` setting under Bun or Deno (`deno run -A`): both load the
 * .wasm file next to onnxruntime-web's bundle in node_modules (checked with onnxruntime-web
 * 1.30.0, Bun 1.4.4 and Deno 2.9). A `bun build --compile` binary bundles that code, so the
 * relative lookup fails there. Its entry module records the embedded files instead (see
 * `embedded_files.ts`), and they are passed as `wasmPaths`.
 */

import * as ort from "onnxruntime-web";
import { embeddedFiles } from "./embedded_files.ts";
import { UsageError } from "./errors.ts";
import { buildLlamaOnnxWithExternalData, type GraphOperators, pastName, presentName } from "./onnx/llama_graph.ts";
import type { LlamaConfig, LlamaWeights } from "./types.ts";

/** Options of {@link DecoderRuntime.create} and {@link DecoderRuntime.fromOnnx}. */
export interface DecoderRuntimeOptions {
  /**
   * Rows of the RoPE table, so position ids must be below this value. For an ONNX file
   * from elsewhere, the largest position id the file supports.
   * @default config.contextLength
   */
  maxPositions?: number;
  /**
   * Threads of the WebAssembly backend. ONNX Runtime reads this once per process, when the
   * first session starts, so every wasm runtime in a process must use the same value. The
   * native backend takes it per session as its intra-op thread count.
   * @default 1
   */
  numThreads?: number;
  /**
   * Files holding initializers stored outside the ONNX file, each under the `location` the
   * model names (Hugging Face exports write `model.onnx_data` next to `model.onnx`).
   */
  externalData?: { path: string; data: Uint8Array }[];
  /**
   * ONNX Runtime build that runs the graph: `wasm` is onnxruntime-web's WebAssembly backend,
   * `native` is onnxruntime-node's CPU execution provider (an optional dependency).
   * @default "wasm"
   */
  backend?: Backend;
  /**
   * Build the graph (in {@link DecoderRuntime.create}) so that `present` carries only the new
   * entries, for callers that keep their own cache. `fromOnnx` takes it as a statement about
   * the bytes it is given.
   * @default false
   */
  presentNewOnly?: boolean;
  /**
   * Operators {@link DecoderRuntime.create} builds the graph from; see `LlamaGraphOptions.operators`.
   * With `fused` on the native backend, Q4_0 weights also run as `MatMulNBits`. `fromOnnx`
   * ignores it.
   * @default "fused"
   */
  operators?: GraphOperators;
}

/** ONNX Runtime builds a {@link DecoderRuntime} can run on. */
export const BACKENDS = ["wasm", "native"] as const;
export type Backend = (typeof BACKENDS)[number];

/** The API both onnxruntime-web and onnxruntime-node export (from onnxruntime-common). */
type OrtApi = Pick<typeof ort, "InferenceSession" | "Tensor">;

/** Keys and values of one layer, each `[kvHeads, length, headDim]` float32 row-major. */
export interface LayerKv {
  key: Float32Array;
  value: Float32Array;
}

/** One forward step over a batch of one sequence. */
export interface DecoderRunInput {
  /** Token ids of the new tokens, `[seq]`. */
  inputIds: ArrayLike<number>;
  /** Position of each new token, `[seq]`; each must be below `maxPositions`. */
  positionIds: ArrayLike<number>;
  /** Cached keys and values per layer, each `[kvHeads, pastLength, headDim]`. */
  past: LayerKv[];
  pastLength: number;
  /**
   * 1 for keys that may be attended to and 0 for masked ones, `[pastLength + seq]`.
   * @default all ones
   */
  attentionMask?: ArrayLike<number>;
  /**
   * Number of last positions that get logits, from 1 to `seq`. Graphs without a
   * `num_logits_to_keep` input ignore it and return every row.
   * @default seq
   */
  logitsToKeep?: number;
  /**
   * Let the runtime write `logits` and `present` into buffers it reuses, so the output has its
   * values only until the next `run`. Only the native backend takes output buffers, and only
   * for one token with one logits row; other calls return new buffers as without it.
   * @default false
   */
  reuseOutputs?: boolean;
}

export interface DecoderRunOutput {
  /**
   * `[rows, vocab]`: the last `logitsToKeep` positions when the graph takes `num_logits_to_keep`,
   * else every position.
   */
  logits: Float32Array;
  /**
   * Per layer, `[kvHeads, presentStart + seq, headDim]`: the past concatenated with the new
   * entries, or only the new entries for a runtime created with `presentNewOnly`.
   */
  present: LayerKv[];
  /** Entries before the new ones in each `present` tensor: `pastLength`, or 0 with `presentNewOnly`. */
  presentStart: number;
}

/** Objects a {@link DecoderRuntime} has created for its inputs and outputs. */
export interface RuntimeAllocations {
  /** `ort.Tensor` objects made for feeds and fetches. */
  tensors: number;
  /** Typed arrays made for int64 inputs and for output buffers. */
  buffers: number;
}

/** Sequence lengths whose input buffers are kept; beyond it the cache starts over. */
const MAX_CACHED_LENGTHS = 8;

/** Whether this platform stores integers little-endian, so int64 inputs can be written as int32 pairs. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Listed problems per input error; the rest are counted. */
const MAX_LISTED_PROBLEMS = 10;

/** Thread count the WebAssembly backend was started with, once a session exists. */
let startedThreads: number | undefined;

/**
 * A decoder session with the input and output names of Hugging Face ONNX decoder exports,
 * for batch size 1.
 *
 * @example
 * ```ts
 * const runtime = await DecoderRuntime.create(weights, { maxPositions: 512 });
 * try {
 *   const empty = weights.layers.map(() => ({ key: new Float32Array(0), value: new Float32Array(0) }));
 *   const { logits } = await runtime.run({ inputIds: [1, 42], positionIds: [0, 1], past: empty, pastLength: 0 });
 * } finally {
 *   await runtime.dispose();
 * }
 * ```
 */
export class DecoderRuntime {
  readonly config: LlamaConfig;
  readonly maxPositions: number;
  readonly backend: Backend;
  /** Whether `present` outputs carry only the new entries. */
  readonly presentNewOnly: boolean;
  /**
   * Whether ONNX Runtime copies input tensors before running. onnxruntime-web copies them into
   * its own wasm heap; onnxruntime-node borrows the memory of CPU tensors as it is.
   */
  readonly copiesInputs: boolean;
  /** Calls of `run` and the seconds spent inside ONNX Runtime's `session.run`. */
  readonly timing = { calls: 0, runSeconds: 0 };
  /**
   * Tensors and buffers made so far. A steady decode step (same length, same past views)
   * reuses its inputs, and with `reuseOutputs` on the native backend its outputs, so it adds
   * none. ONNX Runtime's own objects are not counted.
   */
  readonly allocations: RuntimeAllocations = { tensors: 0, buffers: 0 };
  /**
   * Whether the model takes `position_ids`. Exports without it derive positions from the
   * attention mask, so they only take positions `0..pastLength + seq`.
   */
  readonly takesPositionIds: boolean;
  readonly #ort: OrtApi;
  #session: ort.InferenceSession | undefined;
  /** All-ones attention mask, grown on demand and handed out as views. */
  #onesMask = new BigInt64Array(0);
  /** Input names of each layer's past keys and values, and output names of the present ones. */
  readonly #pastNames: { key: string; value: string }[];
  readonly #presentNames: { key: string; value: string }[];
  /** Name of the input that limits the returned logits rows, if the export has one. */
  #logitsToKeepInput: string | undefined;
  /** Feeds of the last call, updated in place by the next one. */
  readonly #feeds: Record<string, ort.Tensor> = {};
  /** int64 input tensors per sequence length, written in place. */
  readonly #idInputs = new Map<number, IdInputs>();
  /** Attention mask tensor over `#onesMask` and its length. */
  #maskTensor: ort.Tensor | undefined;
  #maskLength = -1;
  /** The `num_logits_to_keep` scalar, written in place, and the value it holds. */
  #keepTensor: Int64Input | undefined;
  #keepValue = -1;
  /** Past arrays the past tensors in `#feeds` wrap, per layer, and their length. */
  readonly #pastKeys: (Float32Array | undefined)[];
  readonly #pastValues: (Float32Array | undefined)[];
  #pastTensorLength = -1;
  /** Output buffers for one token and one logits row (native backend), and their present length. */
  #outputs: ReusedOutputs | undefined;
  /** Whether the logits and present outputs are float32, so float32 buffers can receive them. */
  readonly #float32Outputs: boolean;
  /** Whether a `run` is in flight; a concurrent call then gets inputs of its own. */
  #running = false;

  private constructor(
    session: ort.InferenceSession,
    config: LlamaConfig,
    maxPositions: number,
    backend: Backend,
    ortApi: OrtApi,
    presentNewOnly: boolean,
  ) {
    this.#session = session;
    this.backend = backend;
    this.presentNewOnly = presentNewOnly;
    this.#ort = ortApi;
    this.config = config;
    this.maxPositions = maxPositions;
    this.copiesInputs = backend === "wasm";
    this.takesPositionIds = session.inputNames.includes("position_ids");
    this.#pastNames = Array.from({ length: config.nLayers }, (_, i) => ({ key: pastName(i, "key"), value: pastName(i, "value") }));
    this.#presentNames = Array.from(
      { length: config.nLayers },
      (_, i) => ({ key: presentName(i, "key"), value: presentName(i, "value") }),
    );
    this.#logitsToKeepInput = ["num_logits_to_keep", "logits_to_keep"].find((name) => session.inputNames.includes(name));
    this.#pastKeys = new Array(config.nLayers).fill(undefined);
    this.#pastValues = new Array(config.nLayers).fill(undefined);
    const outputs = new Set(["logits", ...this.#presentNames.flatMap((names) => [names.key, names.value])]);
    this.#float32Outputs = session.outputMetadata.every((meta) => !outputs.has(meta.name) || (meta.isTensor && meta.type === "float32"));
  }

  /**
   * Build the ONNX graph of `weights` and start a session on it. The weights go to ONNX
   * Runtime as external data, not inside the protobuf, so models over 2 GiB load and the
   * weights are not copied into one joined buffer first. `options.externalData` is ignored.
   */
  static async create(weights: LlamaWeights, options: DecoderRuntimeOptions = {}): Promise<DecoderRuntime> {
    const maxPositions = options.maxPositions ?? weights.config.contextLength;
    const { model, externalData } = buildLlamaOnnxWithExternalData(weights, {
      maxPositions,
      presentNewOnly: options.presentNewOnly,
      operators: options.operators,
      // onnxruntime-web 1.30.0 runs MatMulNBits about 10x slower than float32 MatMul (SmolLM2-135M
      // shape, one thread), while onnxruntime-node runs a decode step in about half the time.
      matMulNBits: options.backend === "native" && (options.operators ?? "fused") === "fused",
    });
    return await DecoderRuntime.fromOnnx(model, weights.config, { ...options, maxPositions, externalData });
  }

  /** Start a session on ONNX model bytes with the same input and output signature. */
  static async fromOnnx(
    bytes: Uint8Array,
    config: LlamaConfig,
    options: DecoderRuntimeOptions = {},
  ): Promise<DecoderRuntime> {
    const maxPositions = options.maxPositions ?? config.contextLength;
    const numThreads = options.numThreads ?? 1;
    if (!Number.isInteger(numThreads) || numThreads < 1) {
      throw new RangeError(`Invalid numThreads: current value is ${numThreads}; expected a positive integer`);
    }
    const backend = options.backend ?? "wasm";
    if (!BACKENDS.includes(backend)) {
      throw new RangeError(`Invalid backend: current value is ${JSON.stringify(backend)}; use one of ${BACKENDS.join(", ")}`);
    }
    let ortApi: OrtApi = ort;
    let sessionOptions: ort.InferenceSession.SessionOptions;
    if (backend === "wasm") {
      if (startedThreads !== undefined && startedThreads !== numThreads) {
        throw new RangeError(
          `Invalid numThreads: current value is ${numThreads}, but ONNX Runtime already started with ${startedThreads} ` +
            `in this process; use the same numThreads for every runtime`,
        );
      }
      ort.env.wasm.numThreads = numThreads;
      const { ortWasm, ortModule } = embeddedFiles();
      if (ortWasm !== undefined && ortModule !== undefined) {
        ort.env.wasm.wasmPaths = { wasm: ortWasm, mjs: ortModule };
      }
      sessionOptions = { executionProviders: ["wasm"] };
    } else {
      ortApi = await loadNativeOrt();
      // One operator runs at a time in a decoder step, so inter-op threads would only idle.
      sessionOptions = {
        executionProviders: ["cpu"],
        intraOpNumThreads: numThreads,
        interOpNumThreads: 1,
        graphOptimizationLevel: "all",
      };
    }
    if (options.externalData) sessionOptions.externalData = options.externalData;

    let session: ort.InferenceSession;
    try {
      session = await ortApi.InferenceSession.create(bytes, sessionOptions);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(`ONNX Runtime failed to load the decoder model (${bytes.length} bytes): ${message}`, {
        cause: error,
      });
    }
    // ONNX Runtime may fall back to 1 thread where threads are unsupported, so record what it kept.
    if (backend === "wasm") startedThreads = ort.env.wasm.numThreads as number;

    const expected = expectedInputNames(config.nLayers);
    const missing = expected.filter((name) => !session.inputNames.includes(name));
    const halfPrecision = session.inputMetadata.filter((meta) =>
      meta.isTensor && meta.name.startsWith("past_key_values.") && meta.type !== "float32"
    );
    if (missing.length > 0 || halfPrecision.length > 0) {
      await session.release();
      if (missing.length > 0) {
        throw new Error(
          `Cannot use the ONNX model as a decoder: missing inputs ${missing.join(", ")}; ` +
            `expected the Hugging Face decoder signature for ${config.nLayers} layers`,
        );
      }
      const first = halfPrecision[0] as ort.InferenceSession.TensorValueMetadata;
      throw new Error(
        `Cannot use the ONNX model as a decoder: ${first.name} is ${first.type}, the KV cache holds float32; ` +
          `use an export with float32 past key/values (model.onnx or model_quantized.onnx)`,
      );
    }
    return new DecoderRuntime(session, config, maxPositions, backend, ortApi, options.presentNewOnly ?? false);
  }

  /**
   * Run one forward step and return the logits and the extended key/value cache.
   *
   * Input tensors are kept and written in place from call to call. A run that starts while
   * another on the same runtime is in flight gets fresh inputs instead.
   */
  async run(input: DecoderRunInput): Promise<DecoderRunOutput> {
    const session = this.#session;
    if (!session) throw new Error("Cannot run the decoder: the runtime was disposed; create a new one");
    this.validate(input);

    const shared = !this.#running;
    const feeds = shared ? this.#updateFeeds(input) : this.#freshFeeds(input);
    const outputs = shared && input.reuseOutputs ? this.#reusedOutputs(input) : undefined;
    let results: ort.InferenceSession.ReturnType;
    const started = performance.now();
    if (shared) this.#running = true;
    try {
      results = outputs ? await session.run(feeds, outputs.fetches) : await session.run(feeds);
      this.timing.calls++;
      this.timing.runSeconds += (performance.now() - started) / 1000;
    } catch (error) {
      const summary = Object.entries(feeds).map(([name, t]) => `${name} ${t.type} [${t.dims.join(", ")}]`).join(", ");
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(`ONNX Runtime failed to run the decoder: ${message}; inputs: ${summary}`, { cause: error });
    } finally {
      if (shared) this.#running = false;
      else disposeTensors(feeds);
    }
    // The kept feeds and output buffers are disposed with the runtime. Disposing a CPU tensor
    // (onnxruntime-common 1.30.0) only drops its reference to the data, which stays valid.
    if (outputs) return outputs.output;

    const present: LayerKv[] = [];
    for (const names of this.#presentNames) {
      present.push({
        key: results[names.key].data as Float32Array,
        value: results[names.value].data as Float32Array,
      });
    }
    const logits = results["logits"].data as Float32Array;
    disposeTensors(results);
    return { logits, present, presentStart: this.presentNewOnly ? 0 : input.pastLength };
  }

  /** Release the session; later calls to `run` throw. */
  async dispose(): Promise<void> {
    const session = this.#session;
    this.#session = undefined;
    disposeTensors(this.#feeds);
    for (const ids of this.#idInputs.values()) {
      ids.ids.tensor.dispose();
      ids.positions?.tensor.dispose();
    }
    this.#idInputs.clear();
    this.#maskTensor?.dispose();
    this.#keepTensor?.tensor.dispose();
    if (this.#outputs) disposeTensors(this.#outputs.fetches);
    this.#outputs = undefined;
    if (session) await session.release();
  }

  /** Check every input against the config and throw one error listing all problems. */
  private validate(input: DecoderRunInput): void {
    const { nLayers, nKvHeads, headDim, vocabSize } = this.config;
    const problems: string[] = [];
    const seq = input.inputIds?.length ?? 0;

    if (seq === 0) problems.push("Invalid inputIds: current length is 0; pass at least one token");
    for (let i = 0; i < seq; i++) {
      const id = input.inputIds[i];
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        problems.push(`Invalid token id ${id} at index ${i}: the vocabulary holds ids 0..${vocabSize - 1}`);
      }
    }

    const positions = input.positionIds?.length ?? 0;
    if (positions !== seq) {
      problems.push(`Invalid positionIds: current length is ${positions}; expected one per input id (${seq})`);
    }
    for (let i = 0; i < positions; i++) {
      const pos = input.positionIds[i];
      if (!Number.isInteger(pos) || pos < 0 || pos >= this.maxPositions) {
        problems.push(
          `Invalid position id ${pos}: the RoPE table holds positions 0..${this.maxPositions - 1}; ` +
            `rebuild the runtime with a larger maxPositions`,
        );
      }
    }

    const keep = input.logitsToKeep;
    if (keep !== undefined && (!Number.isInteger(keep) || keep < 1 || keep > seq)) {
      problems.push(`Invalid logitsToKeep: current value is ${keep}; expected a whole number from 1 to the input length (${seq})`);
    }

    const pastLength = input.pastLength;
    const pastLengthValid = Number.isInteger(pastLength) && pastLength >= 0;
    if (!pastLengthValid) {
      problems.push(`Invalid pastLength: current value is ${pastLength}; expected a non-negative integer`);
    }

    const past = input.past ?? [];
    if (past.length !== nLayers) {
      problems.push(`Invalid past: current length is ${past.length}; expected one entry per layer (${nLayers})`);
    }
    if (pastLengthValid) {
      const size = nKvHeads * pastLength * headDim;
      for (let layer = 0; layer < nLayers; layer++) {
        for (const kind of ["key", "value"] as const) {
          const data = past[layer]?.[kind];
          if (!(data instanceof Float32Array)) {
            problems.push(
              `Missing past ${kind} for layer ${layer}: expected a Float32Array of ${size} values ` +
                `[${nKvHeads}, ${pastLength}, ${headDim}] (empty when pastLength is 0)`,
            );
          } else if (data.length !== size) {
            problems.push(
              `Invalid past ${kind} for layer ${layer}: current length is ${data.length}; expected ${size} ` +
                `= [${nKvHeads}, ${pastLength}, ${headDim}]`,
            );
          }
        }
      }

      const mask = input.attentionMask;
      if (mask !== undefined) {
        if (mask.length !== pastLength + seq) {
          problems.push(
            `Invalid attentionMask: current length is ${mask.length}; expected pastLength + input length (${pastLength + seq})`,
          );
        }
        for (let i = 0; i < mask.length; i++) {
          if (mask[i] !== 0 && mask[i] !== 1) {
            problems.push(`Invalid attention mask value ${mask[i]} at index ${i}: expected 0 or 1`);
          }
        }
      }
    }

    if (problems.length > 0) {
      const listed = problems.slice(0, MAX_LISTED_PROBLEMS);
      if (problems.length > listed.length) listed.push(`and ${problems.length - listed.length} more problems`);
      throw new RangeError(`Cannot run the decoder: ${problems.length} invalid input(s):\n- ${listed.join("\n- ")}`);
    }
  }

  /** Update the kept feeds for `input`, making tensors only for shapes or arrays not seen last call. */
  #updateFeeds(input: DecoderRunInput): Record<string, ort.Tensor> {
    const { nLayers, nKvHeads, headDim } = this.config;
    const seq = input.inputIds.length;
    const total = input.pastLength + seq;
    const feeds = this.#feeds;
    const { Tensor } = this.#ort;

    let ids = this.#idInputs.get(seq);
    if (!ids) {
      if (this.#idInputs.size >= MAX_CACHED_LENGTHS) this.#idInputs.clear();
      ids = {
        ids: this.#int64Tensor(seq),
        positions: this.takesPositionIds ? this.#int64Tensor(seq) : undefined,
      };
      this.#idInputs.set(seq, ids);
    }
    writeInt64(ids.ids, input.inputIds);
    feeds.input_ids = ids.ids.tensor;

    if (input.attentionMask) {
      const mask = this.#int64Tensor(total);
      writeInt64(mask, input.attentionMask);
      feeds.attention_mask = mask.tensor;
      this.#maskLength = -1;
    } else if (this.#maskLength !== total || !this.#maskTensor) {
      // Both backends copy or read the mask during the call, so a shared view is safe.
      if (this.#onesMask.length < total) {
        this.#onesMask = new BigInt64Array(Math.max(total, 2 * this.#onesMask.length)).fill(1n);
        this.allocations.buffers++;
      }
      this.#maskTensor = this.#track(new Tensor("int64", this.#onesMask.subarray(0, total), [1, total]));
      this.#maskLength = total;
      feeds.attention_mask = this.#maskTensor;
    } else {
      feeds.attention_mask = this.#maskTensor;
    }

    if (ids.positions) {
      writeInt64(ids.positions, input.positionIds);
      feeds.position_ids = ids.positions.tensor;
    }

    const lengthChanged = this.#pastTensorLength !== input.pastLength;
    const pastDims = [1, nKvHeads, input.pastLength, headDim];
    for (let i = 0; i < nLayers; i++) {
      const { key, value } = input.past[i];
      const names = this.#pastNames[i];
      if (lengthChanged || this.#pastKeys[i] !== key) {
        feeds[names.key] = this.#track(new Tensor("float32", key, pastDims));
        this.#pastKeys[i] = key;
      }
      if (lengthChanged || this.#pastValues[i] !== value) {
        feeds[names.value] = this.#track(new Tensor("float32", value, pastDims));
        this.#pastValues[i] = value;
      }
    }
    this.#pastTensorLength = input.pastLength;

    if (this.#logitsToKeepInput) {
      const keep = input.logitsToKeep ?? seq;
      if (!this.#keepTensor) this.#keepTensor = this.#int64Tensor(1, []);
      if (this.#keepValue !== keep) {
        writeInt64(this.#keepTensor, [keep]);
        this.#keepValue = keep;
      }
      feeds[this.#logitsToKeepInput] = this.#keepTensor.tensor;
    }
    return feeds;
  }

  /** Feeds of their own for a call that overlaps another, which still reads the kept ones. */
  #freshFeeds(input: DecoderRunInput): Record<string, ort.Tensor> {
    const { nLayers, nKvHeads, headDim } = this.config;
    const seq = input.inputIds.length;
    const total = input.pastLength + seq;
    const { Tensor } = this.#ort;
    const int64 = (values: ArrayLike<number>, dims: number[]) => {
      const input = this.#int64Tensor(values.length, dims);
      writeInt64(input, values);
      return input.tensor;
    };
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(input.inputIds, [1, seq]),
      attention_mask: int64(input.attentionMask ?? new Array<number>(total).fill(1), [1, total]),
    };
    if (this.takesPositionIds) feeds.position_ids = int64(input.positionIds, [1, seq]);
    const pastDims = [1, nKvHeads, input.pastLength, headDim];
    for (let i = 0; i < nLayers; i++) {
      const names = this.#pastNames[i];
      feeds[names.key] = this.#track(new Tensor("float32", input.past[i].key, pastDims));
      feeds[names.value] = this.#track(new Tensor("float32", input.past[i].value, pastDims));
    }
    if (this.#logitsToKeepInput) feeds[this.#logitsToKeepInput] = int64([input.logitsToKeep ?? seq], []);
    return feeds;
  }

  /**
   * Return kept output buffers for `input`, or undefined where ONNX Runtime must allocate. Only
   * the native backend takes them, for one token with one logits row. The wasm backend copies
   * CPU output tensors into its heap and does not copy the results back into them.
   */
  #reusedOutputs(input: DecoderRunInput): ReusedOutputs | undefined {
    const seq = input.inputIds.length;
    const rows = this.#logitsToKeepInput ? input.logitsToKeep ?? seq : seq;
    if (this.backend !== "native" || !this.#float32Outputs || seq !== 1 || rows !== 1) return undefined;
    const presentStart = this.presentNewOnly ? 0 : input.pastLength;
    const presentLength = presentStart + seq;
    const reused = this.#outputs;
    if (reused && reused.presentLength === presentLength) {
      reused.output.presentStart = presentStart;
      return reused;
    }

    const { nKvHeads, headDim, vocabSize } = this.config;
    const { Tensor } = this.#ort;
    const logits = new Float32Array(vocabSize);
    const fetches: Record<string, ort.Tensor> = { logits: this.#track(new Tensor("float32", logits, [1, 1, vocabSize])) };
    const present: LayerKv[] = [];
    const presentDims = [1, nKvHeads, presentLength, headDim];
    for (const names of this.#presentNames) {
      const layer = { key: new Float32Array(nKvHeads * presentLength * headDim), value: new Float32Array(nKvHeads * presentLength * headDim) };
      fetches[names.key] = this.#track(new Tensor("float32", layer.key, presentDims));
      fetches[names.value] = this.#track(new Tensor("float32", layer.value, presentDims));
      present.push(layer);
    }
    this.allocations.buffers += 1 + 2 * present.length;
    this.#outputs = { presentLength, fetches, output: { logits, present, presentStart } };
    return this.#outputs;
  }

  /** A zeroed int64 tensor of `length` values. */
  #int64Tensor(length: number, dims: readonly number[] = [1, length]): Int64Input {
    const values = new BigInt64Array(length);
    this.allocations.buffers++;
    return {
      tensor: this.#track(new this.#ort.Tensor("int64", values, dims)),
      values,
      words: LITTLE_ENDIAN ? new Int32Array(values.buffer) : undefined,
    };
  }

  #track(tensor: ort.Tensor): ort.Tensor {
    this.allocations.tensors++;
    return tensor;
  }
}

/** An int64 tensor, its values, and on little-endian platforms the same memory as int32 words. */
interface Int64Input {
  tensor: ort.Tensor;
  values: BigInt64Array;
  words: Int32Array | undefined;
}

/** The int64 input tensors of one sequence length. */
interface IdInputs {
  ids: Int64Input;
  positions: Int64Input | undefined;
}

/** Output buffers passed to ONNX Runtime as fetches, and the result that views them. */
interface ReusedOutputs {
  presentLength: number;
  fetches: Record<string, ort.Tensor>;
  output: DecoderRunOutput;
}

/** Import onnxruntime-node, the optional dependency behind `--backend native`. */
async function loadNativeOrt(): Promise<OrtApi> {
  try {
    return await import("onnxruntime-node") as unknown as OrtApi;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    // A missing optional dependency is a choice of backend the user can change, not a bug.
    throw new UsageError(
      `Failed to load onnxruntime-node for the native backend: ${message}; install it with ` +
        `"npm install onnxruntime-node@1.30.0" when running from source, or use --backend wasm ` +
        `(the single binaries include only the wasm backend)`,
    );
  }
}

function disposeTensors(tensors: Record<string, ort.OnnxValue>): void {
  for (const name in tensors) tensors[name].dispose();
}

/**
 * Write whole numbers from 0 to 2^31 - 1 (validated ids, positions, mask values, counts) into
 * `input`. On little-endian platforms each goes in as a low and a high int32 word, which makes
 * no BigInt per value.
 */
function writeInt64(input: Int64Input, values: ArrayLike<number>): void {
  const words = input.words;
  if (words) {
    for (let i = 0; i < values.length; i++) {
      words[2 * i] = values[i];
      words[2 * i + 1] = 0;
    }
  } else {
    for (let i = 0; i < values.length; i++) input.values[i] = BigInt(values[i]);
  }
}

function expectedInputNames(nLayers: number): string[] {
  // position_ids is optional: exports without it derive positions from attention_mask, which
  // gives the same positions because the session never masks cached keys.
  const names = ["input_ids", "attention_mask"];
  for (let i = 0; i < nLayers; i++) names.push(pastName(i, "key"), pastName(i, "value"));
  return names;
}
