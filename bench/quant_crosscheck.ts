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

import process from "node:process";
import { dequantize, QUANT_FORMATS } from "../core/quant.ts";
import { lcgRandom, openGgml } from "./ggml_ffi.ts";

const ggml = openGgml("bench/quant_crosscheck.ts");
const random = lcgRandom(12345);

const rows = 64;
const perRow = 1024;
let failures = 0;
for (const [typeText, format] of Object.entries(QUANT_FORMATS)) {
  const type = Number(typeText);
  const source = new Float32Array(rows * perRow);
  for (let i = 0; i < source.length; i++) source[i] = random() * (1 + (i % 97) / 10);
  const bytes = new Uint8Array((source.length / format.blockValues) * format.blockBytes);
  const written = ggml.quantize(type, source, bytes, rows, perRow);
  const expected = new Float32Array(source.length);
  ggml.dequantize(format.name, bytes, expected, source.length);
  const actual = dequantize(type, bytes, source.length);
  let differing = 0;
  for (let i = 0; i < actual.length; i++) if (!Object.is(actual[i], expected[i])) differing++;
  if (differing > 0 || written !== bytes.length) failures++;
  process.stdout.write(
    `${format.name}: ${source.length} values, ${written} bytes from ggml (expected ${bytes.length}), ${differing} differ\n`,
  );
}
process.exit(failures === 0 ? 0 : 1);
