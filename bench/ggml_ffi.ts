/**
 * ggml's own quantizers and dequantizers, loaded through bun:ffi from the libggml-base.so
 * given as the first argument of a cross-check script.
 */

import { dlopen, FFIType, ptr } from "bun:ffi";
import process from "node:process";

/** Wrapper of the ggml C functions that the cross-check scripts compare against. */
export interface Ggml {
  /** Quantize `rows` rows of `perRow` values into `destination` and return the bytes written. */
  quantize(type: number, source: Float32Array, destination: Uint8Array, rows: number, perRow: number): number;
  /** Dequantize `count` values of the format named `format` (for example "Q8_0"). */
  dequantize(format: string, source: Uint8Array, destination: Float32Array, count: number): void;
}

/** Open the library named by the first argument, or print the usage of `script` and exit 2. */
export function openGgml(script: string): Ggml {
  const path = process.argv[2];
  if (!path) {
    process.stderr.write(`usage: bun ${script} /path/to/libggml-base.so\n`);
    process.exit(2);
  }
  const row = { args: [FFIType.ptr, FFIType.ptr, FFIType.i64], returns: FFIType.void } as const;
  const library = dlopen(path, {
    ggml_quantize_init: { args: [FFIType.i32], returns: FFIType.void },
    // size_t ggml_quantize_chunk(type, const float * src, void * dst, int64_t start, int64_t nrows, int64_t n_per_row, const float * imatrix)
    ggml_quantize_chunk: {
      args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.ptr],
      returns: FFIType.u64,
    },
    dequantize_row_q8_0: row,
    dequantize_row_q4_0: row,
    dequantize_row_q4_K: row,
    dequantize_row_q6_K: row,
  });
  const dequantizers: Record<string, (source: number, destination: number, count: number) => void> = {
    Q8_0: (s, d, k) => library.symbols.dequantize_row_q8_0(s, d, k),
    Q4_0: (s, d, k) => library.symbols.dequantize_row_q4_0(s, d, k),
    Q4_K: (s, d, k) => library.symbols.dequantize_row_q4_K(s, d, k),
    Q6_K: (s, d, k) => library.symbols.dequantize_row_q6_K(s, d, k),
  };
  return {
    quantize(type, source, destination, rows, perRow) {
      library.symbols.ggml_quantize_init(type);
      return Number(library.symbols.ggml_quantize_chunk(type, ptr(source), ptr(destination), 0, rows, perRow, null));
    },
    dequantize(format, source, destination, count) {
      const dequantizer = dequantizers[format];
      if (!dequantizer) throw new Error(`Invalid format ${format}: ggml dequantizers exist for ${Object.keys(dequantizers).join(", ")}`);
      dequantizer(ptr(source), ptr(destination), count);
    },
  };
}

/** Return a linear congruential generator of values in [-0.5, 0.5) starting from `seed`. */
export function lcgRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state * 1103515245 + 12345) >>> 0;
    return state / 2 ** 32 - 0.5;
  };
}
