/**
 * Runs a llama decoder ONNX graph with onnxruntime-web's WebAssembly backend.
 *
 * Needs no `ort.env.wasm.wasmPaths` setting under Bun or Deno (`deno run -A`): both load the
 * .wasm file next to onnxruntime-web's bundle in node_modules (checked with onnxruntime-web
 * 1.30.0, Bun 1.4.4 and Deno 2.9).
 */

import * as ort from "onnxruntime-web";
import { buildLlamaOnnx, pastName, presentName } from "./onnx/llama_graph.ts";
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
   * first session starts, so every runtime in a process must use the same value.
   * @default 1
   */
  numThreads?: number;
}

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
}

export interface DecoderRunOutput {
  /** `[seq, vocab]` */
  logits: Float32Array;
  /** Past concatenated with the new entries per layer, `[kvHeads, pastLength + seq, headDim]`. */
  present: LayerKv[];
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
  #session: ort.InferenceSession | undefined;

  private constructor(session: ort.InferenceSession, config: LlamaConfig, maxPositions: number) {
    this.#session = session;
    this.config = config;
    this.maxPositions = maxPositions;
  }

  /** Build the ONNX graph of `weights` and start a session on it. */
  static async create(weights: LlamaWeights, options: DecoderRuntimeOptions = {}): Promise<DecoderRuntime> {
    const maxPositions = options.maxPositions ?? weights.config.contextLength;
    const bytes = buildLlamaOnnx(weights, { maxPositions });
    return await DecoderRuntime.fromOnnx(bytes, weights.config, { ...options, maxPositions });
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
    if (startedThreads !== undefined && startedThreads !== numThreads) {
      throw new RangeError(
        `Invalid numThreads: current value is ${numThreads}, but ONNX Runtime already started with ${startedThreads} ` +
          `in this process; use the same numThreads for every runtime`,
      );
    }
    ort.env.wasm.numThreads = numThreads;
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(`ONNX Runtime failed to load the decoder model (${bytes.length} bytes): ${message}`, {
        cause: error,
      });
    }
    // ONNX Runtime may fall back to 1 thread where threads are unsupported, so record what it kept.
    startedThreads = ort.env.wasm.numThreads as number;

    const expected = expectedInputNames(config.nLayers);
    const missing = expected.filter((name) => !session.inputNames.includes(name));
    if (missing.length > 0) {
      await session.release();
      throw new Error(
        `Cannot use the ONNX model as a decoder: missing inputs ${missing.join(", ")}; ` +
          `expected the Hugging Face decoder signature for ${config.nLayers} layers`,
      );
    }
    return new DecoderRuntime(session, config, maxPositions);
  }

  /** Run one forward step and return the logits and the extended key/value cache. */
  async run(input: DecoderRunInput): Promise<DecoderRunOutput> {
    const session = this.#session;
    if (!session) throw new Error("Cannot run the decoder: the runtime was disposed; create a new one");
    this.validate(input);

    const feeds = this.makeFeeds(input);
    let results: ort.InferenceSession.ReturnType;
    try {
      results = await session.run(feeds);
    } catch (error) {
      const summary = Object.entries(feeds).map(([name, t]) => `${name} ${t.type} [${t.dims.join(", ")}]`).join(", ");
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(`ONNX Runtime failed to run the decoder: ${message}; inputs: ${summary}`, { cause: error });
    } finally {
      for (const tensor of Object.values(feeds)) tensor.dispose();
    }

    const present: LayerKv[] = [];
    for (let i = 0; i < this.config.nLayers; i++) {
      present.push({
        key: results[presentName(i, "key")].data as Float32Array,
        value: results[presentName(i, "value")].data as Float32Array,
      });
    }
    const logits = results["logits"].data as Float32Array;
    for (const tensor of Object.values(results)) tensor.dispose();
    return { logits, present };
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
    const mask = new BigInt64Array(total);
    for (let i = 0; i < total; i++) mask[i] = BigInt(input.attentionMask ? input.attentionMask[i] : 1);

    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", toBigInt64(input.inputIds), [1, seq]),
      attention_mask: new ort.Tensor("int64", mask, [1, total]),
      position_ids: new ort.Tensor("int64", toBigInt64(input.positionIds), [1, seq]),
    };
    const pastDims = [1, nKvHeads, input.pastLength, headDim];
    for (let i = 0; i < nLayers; i++) {
      feeds[pastName(i, "key")] = new ort.Tensor("float32", input.past[i].key, pastDims);
      feeds[pastName(i, "value")] = new ort.Tensor("float32", input.past[i].value, pastDims);
    }
    return feeds;
  }
}

function toBigInt64(values: ArrayLike<number>): BigInt64Array {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]);
  return out;
}

function expectedInputNames(nLayers: number): string[] {
  const names = ["input_ids", "attention_mask", "position_ids"];
  for (let i = 0; i < nLayers; i++) names.push(pastName(i, "key"), pastName(i, "value"));
  return names;
}
