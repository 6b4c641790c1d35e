/**
 * Cross-check `core/quant.ts` against ggml's own C code: quantize random rows with
 * `ggml_quantize_chunk` from a libggml-base.so, dequantize them with both ggml's
 * `dequantize_row_*` and `dequantize`, and count the values that differ in any bit.
 *
 * Needs Bun (it uses bun:ffi) and a libggml-base.so, for example the one node-llama-cpp
 * ships:
 *
 *   bun bench/quant_crosscheck.ts /path/to/libggml-base.so
 */

import { dlopen, FFIType, ptr } from "bun:ffi";
import process from "node:process";
import { dequantize, QUANT_FORMATS } from "../core/quant.ts";

const library = process.argv[2];
if (!library) {
  process.stderr.write("usage: bun bench/quant_crosscheck.ts /path/to/libggml-base.so\n");
  process.exit(2);
}

const ggml = dlopen(library, {
  ggml_quantize_init: { args: [FFIType.i32], returns: FFIType.void },
  // size_t ggml_quantize_chunk(type, const float * src, void * dst, int64_t start, int64_t nrows, int64_t n_per_row, const float * imatrix)
  ggml_quantize_chunk: {
    args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.ptr],
    returns: FFIType.u64,
  },
  dequantize_row_q8_0: { args: [FFIType.ptr, FFIType.ptr, FFIType.i64], returns: FFIType.void },
  dequantize_row_q4_0: { args: [FFIType.ptr, FFIType.ptr, FFIType.i64], returns: FFIType.void },
  dequantize_row_q4_K: { args: [FFIType.ptr, FFIType.ptr, FFIType.i64], returns: FFIType.void },
  dequantize_row_q6_K: { args: [FFIType.ptr, FFIType.ptr, FFIType.i64], returns: FFIType.void },
});

const DEQUANTIZERS: Record<string, (source: number, destination: number, count: number) => void> = {
  Q8_0: (s, d, k) => ggml.symbols.dequantize_row_q8_0(s, d, k),
  Q4_0: (s, d, k) => ggml.symbols.dequantize_row_q4_0(s, d, k),
  Q4_K: (s, d, k) => ggml.symbols.dequantize_row_q4_K(s, d, k),
  Q6_K: (s, d, k) => ggml.symbols.dequantize_row_q6_K(s, d, k),
};

let seed = 12345;
function random(): number {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed / 2 ** 32 - 0.5;
}

const rows = 64;
const perRow = 1024;
let failures = 0;
for (const [typeText, format] of Object.entries(QUANT_FORMATS)) {
  const type = Number(typeText);
  const source = new Float32Array(rows * perRow);
  for (let i = 0; i < source.length; i++) source[i] = random() * (1 + (i % 97) / 10);
  const bytes = new Uint8Array((source.length / format.blockValues) * format.blockBytes);
  ggml.symbols.ggml_quantize_init(type);
  const written = Number(ggml.symbols.ggml_quantize_chunk(type, ptr(source), ptr(bytes), 0, rows, perRow, null));
  const expected = new Float32Array(source.length);
  DEQUANTIZERS[format.name](ptr(bytes), ptr(expected), source.length);
  const actual = dequantize(type, bytes, source.length);
  let differing = 0;
  for (let i = 0; i < actual.length; i++) if (!Object.is(actual[i], expected[i])) differing++;
  if (differing > 0 || written !== bytes.length) failures++;
  process.stdout.write(
    `${format.name}: ${source.length} values, ${written} bytes from ggml (expected ${bytes.length}), ${differing} differ\n`,
  );
}
process.exit(failures === 0 ? 0 : 1);
