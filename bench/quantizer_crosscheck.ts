/**
 * Cross-check the Q8_0 and Q4_0 quantizers of `core/gguf_writer.ts` against ggml's own C
 * code: quantize the same rows with `ggml_quantize_chunk` from a libggml-base.so and with
 * `quantizeQ8_0` / `quantizeQ4_0`, and count the bytes that differ.
 *
 * The rows mix random values of varied scale with hard blocks: all zeros, a single nonzero
 * value, values at exact halfway points of the rounding, ties in magnitude of opposite sign,
 * and tiny values whose scale is an f16 subnormal.
 *
 * Needs Bun (it uses bun:ffi) and a libggml-base.so, for example the one node-llama-cpp
 * ships:
 *
 *   bun bench/quantizer_crosscheck.ts /path/to/libggml-base.so
 */

import process from "node:process";
import { quantizeQ4_0, quantizeQ8_0 } from "../core/gguf_writer.ts";
import { lcgRandom, openGgml } from "./ggml_ffi.ts";

const ggml = openGgml("bench/quantizer_crosscheck.ts");
const random = lcgRandom(987654321);

const perRow = 1024;
const rows = 256;
const source = new Float32Array(rows * perRow);
for (let i = 0; i < source.length; i++) source[i] = random() * 10 ** ((i % 13) - 6);

// Hand-made blocks at the start of the data, 32 values each.
const block = (index: number, fill: (j: number) => number) => {
  for (let j = 0; j < 32; j++) source[index * 32 + j] = fill(j);
};
block(0, () => 0);
block(1, (j) => (j === 7 ? -3 : 0));
block(2, (j) => (j - 16) * 0.5); // Q4_0 halfway points: x / d + 8.5 lands on integers.
block(3, (j) => (j % 2 === 0 ? 127 : j - 63.5)); // Q8_0: d = 1, so every odd value is a tie.
// Equal magnitudes of opposite sign: Q4_0 takes the first as its max.
block(4, (j) => {
  if (j === 0) return 2;
  if (j === 1) return -2;
  return j / 20;
});
block(5, (j) => (j - 16) * 1e-9); // the scale is an f16 subnormal or zero.
block(6, (j) => (j === 31 ? -1e30 : j)); // a scale beyond the f16 range.

const QUANTIZERS = [
  { name: "Q8_0", type: 8, blockBytes: 34, quantize: quantizeQ8_0 },
  { name: "Q4_0", type: 2, blockBytes: 18, quantize: quantizeQ4_0 },
];

let failures = 0;
for (const { name, type, blockBytes, quantize } of QUANTIZERS) {
  const expected = new Uint8Array((source.length / 32) * blockBytes);
  const written = ggml.quantize(type, source, expected, rows, perRow);
  const actual = quantize(source);
  let differing = 0;
  let firstBlock = -1;
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] === expected[i]) continue;
    differing++;
    if (firstBlock < 0) firstBlock = Math.floor(i / blockBytes);
  }
  if (differing > 0 || written !== expected.length) failures++;
  process.stdout.write(
    `${name}: ${source.length} values, ${written} bytes from ggml, ${actual.length} from quantize${name}, ` +
      `${differing} bytes differ${firstBlock >= 0 ? ` (first in block ${firstBlock})` : ""}\n`,
  );
}
process.exit(failures === 0 ? 0 : 1);
