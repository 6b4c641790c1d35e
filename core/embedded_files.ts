/**
 * Locations of the wasm files inside a single-binary build.
 *
 * From source, nothing sets them: the KV kernel is read from `wasm/pkg/` and ONNX Runtime
 * finds its own files in `node_modules/onnxruntime-web/dist/`. The entry module of a
 * `bun build --compile` binary embeds the files and calls {@linkcode setEmbeddedFiles} with
 * their paths in the binary's file system (`/$bunfs/...`) before any model loads. A
 * `deno compile` binary needs none of this: it embeds the same relative paths with
 * `--include`, so the from-source locations resolve inside the binary.
 *
 * @module
 */

/** Paths of embedded files; an unset field means the from-source location. */
export interface EmbeddedFiles {
  /** `sinkstream_kv.wasm`, the KV ring kernel. */
  kvKernel?: string;
  /** ONNX Runtime's `ort-wasm-simd-threaded.wasm`. */
  ortWasm?: string;
  /** ONNX Runtime's `ort-wasm-simd-threaded.mjs`, the Emscripten module that instantiates that wasm. */
  ortModule?: string;
}

let embedded: Readonly<EmbeddedFiles> = {};

/**
 * Records where a binary embeds its wasm files. Call it before the first model loads,
 * because ONNX Runtime reads its file locations once per process.
 */
export function setEmbeddedFiles(files: EmbeddedFiles): void {
  embedded = { ...files };
}

/** Returns the paths recorded by {@linkcode setEmbeddedFiles}; empty when running from source. */
export function embeddedFiles(): Readonly<EmbeddedFiles> {
  return embedded;
}
