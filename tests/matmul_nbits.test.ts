/** Checks the repacking of ggml Q4_0 blocks into MatMulNBits inputs. */

import { describe, expect, test } from "bun:test";
import { quantizeQ4_0 } from "../core/gguf_writer.ts";
import { matMulNBitsWeights } from "../core/onnx/matmul_nbits.ts";
import { dequantize } from "../core/quant.ts";
import { mulberry32 } from "./support/numeric.ts";

const GGML_Q4_0 = 2;

/** Dequantize MatMulNBits inputs the way the operator defines them: (q - 8) * scale, q from nibble pairs. */
function unpack(packed: Uint8Array, scales: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows * cols; i++) {
    const byte = packed[i >> 1];
    const q = i % 2 === 0 ? byte & 0x0f : byte >> 4;
    out[i] = (q - 8) * scales[Math.floor(i / 32)];
  }
  return out;
}

function randomMatrix(count: number, seed: number): Float32Array {
  const random = mulberry32(seed);
  return Float32Array.from({ length: count }, () => random() * 2 - 1);
}

describe("matMulNBitsWeights", () => {
  test("repacked values equal dequantized Q4_0", () => {
    const [rows, cols] = [3, 64];
    const blocks = quantizeQ4_0(randomMatrix(rows * cols, 5));
    const { packed, scales } = matMulNBitsWeights(rows, cols, [{ blocks, rows, scale: 1 }]);
    expect(packed.length).toBe(rows * cols / 2);
    expect(scales.length).toBe(rows * cols / 32);
    expect(Array.from(unpack(packed, scales, rows, cols))).toEqual(Array.from(dequantize(GGML_Q4_0, blocks, rows * cols)));
  });

  test("stacked parts keep order and scale", () => {
    const cols = 32;
    const first = quantizeQ4_0(randomMatrix(2 * cols, 6));
    const second = quantizeQ4_0(randomMatrix(cols, 7));
    const { packed, scales } = matMulNBitsWeights(3, cols, [{ blocks: first, rows: 2, scale: 0.5 }, { blocks: second, rows: 1, scale: 1 }]);
    const values = unpack(packed, scales, 3, cols);
    const expectedFirst = dequantize(GGML_Q4_0, first, 2 * cols).map((v) => v * 0.5);
    expect(Array.from(values.subarray(0, 2 * cols))).toEqual(Array.from(expectedFirst));
    expect(Array.from(values.subarray(2 * cols))).toEqual(Array.from(dequantize(GGML_Q4_0, second, cols)));
  });

  test("row length not a multiple of 32 throws", () => {
    expect(() => matMulNBitsWeights(1, 48, [{ blocks: new Uint8Array(27), rows: 1, scale: 1 }])).toThrow(
      "Cannot pack Q4_0 rows for MatMulNBits: current row length is 48; expected a multiple of 32",
    );
  });

  test("row count mismatch throws", () => {
    expect(() => matMulNBitsWeights(2, 32, [{ blocks: new Uint8Array(18), rows: 1, scale: 1 }])).toThrow(
      "Cannot pack Q4_0 rows for MatMulNBits: current parts hold 1 rows; expected 2",
    );
  });
});
