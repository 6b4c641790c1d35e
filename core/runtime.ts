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

  /** Run one forward step and return the logits and the extended key/value cache. */
  async run(input: DecoderRunInput): Promise<DecoderRunOutput> {
    const session = this.#session;
    if (!session) throw new Error("Cannot run the decoder: the runtime was disposed; create a new one");
    this.validate(input);

    const feeds = this.makeFeeds(input);
    let results: ort.InferenceSession.ReturnType;
    const started = performance.now();
    try {
      results = await session.run(feeds);
      this.timing.calls++;
      this.timing.runSeconds += (performance.now() - started) / 1000;
    } catch (error) {
      const summary = Object.entries(feeds).map(([name, t]) => `${name} ${t.type} [${t.dims.join(", ")}]`).join(", ");
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(`ONNX Runtime failed to run the decoder: ${message}; inputs: ${summary}`, { cause: error });
    } finally {
      for (const tensor of Object.values(feeds)) tensor.dispose();
    }

    const present: LayerKv[] = [];
    for (const names of this.#presentNames) {
      present.push({
        key: results[names.key].data as Float32Array,
        value: results[names.value].data as Float32Array,
      });
    }
    const logits = results["logits"].data as Float32Array;
    for (const tensor of Object.values(results)) tensor.dispose();
    return { logits, present, presentStart: this.presentNewOnly ? 0 : input.pastLength };
  }

  /** Release the session; later calls to `run` throw. */
  async dispose(): Promise<void> {
    const session = this.#session;
    this.#session = undefined;
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

  private makeFeeds(input: DecoderRunInput): Record<string, ort.Tensor> {
    const { nLayers, nKvHeads, headDim } = this.config;
    const seq = input.inputIds.length;
    const total = input.pastLength + seq;
    const { Tensor } = this.#ort;
    let mask: BigInt64Array;
    if (input.attentionMask) {
      mask = new BigInt64Array(total);
      for (let i = 0; i < total; i++) mask[i] = BigInt(input.attentionMask[i]);
    } else {
      // Both backends copy or read the mask during the call, so a shared view is safe.
      if (this.#onesMask.length < total) this.#onesMask = new BigInt64Array(Math.max(total, 2 * this.#onesMask.length)).fill(1n);
      mask = this.#onesMask.subarray(0, total);
    }

    const feeds: Record<string, ort.Tensor> = {
      input_ids: new Tensor("int64", toBigInt64(input.inputIds), [1, seq]),
      attention_mask: new Tensor("int64", mask, [1, total]),
    };
    if (this.takesPositionIds) {
      feeds.position_ids = new Tensor("int64", toBigInt64(input.positionIds), [1, seq]);
    }
    const pastDims = [1, nKvHeads, input.pastLength, headDim];
    for (let i = 0; i < nLayers; i++) {
      const names = this.#pastNames[i];
      feeds[names.key] = new Tensor("float32", input.past[i].key, pastDims);
      feeds[names.value] = new Tensor("float32", input.past[i].value, pastDims);
    }
    if (this.#logitsToKeepInput) {
      const keep = input.logitsToKeep ?? seq;
      feeds[this.#logitsToKeepInput] = new Tensor("int64", BigInt64Array.of(BigInt(keep)), []);
    }
    return feeds;
  }
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

function toBigInt64(values: ArrayLike<number>): BigInt64Array {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]);
  return out;
}

function expectedInputNames(nLayers: number): string[] {
  // position_ids is optional: exports without it derive positions from attention_mask, which
  // gives the same positions because the session never masks cached keys.
  const names = ["input_ids", "attention_mask"];
  for (let i = 0; i < nLayers; i++) names.push(pastName(i, "key"), pastName(i, "value"));
  return names;
}
