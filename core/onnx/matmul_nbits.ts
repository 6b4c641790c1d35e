/**
 * Conversion of ggml Q4_0 weight blocks to the inputs of ONNX Runtime's `MatMulNBits`
 * contrib operator (`com.microsoft`, 4 bits, block size 32, no zero points, so the default
 * zero point 8 applies, as in Q4_0's `(q - 8) * d`).
 */

import { halfToFloat } from "../gguf.ts";

/** Values per ggml Q4_0 block, and the `block_size` of the `MatMulNBits` node. */
export const Q4_0_BLOCK_VALUES = 32;
/** Bytes of one ggml Q4_0 block: an f16 scale and 16 bytes holding 32 4-bit values. */
const Q4_0_BLOCK_BYTES = 18;

/** A range of weight rows stored as Q4_0 blocks, row-major, with a factor for its block scales. */
export interface Q4_0Rows {
  blocks: Uint8Array;
  rows: number;
  scale: number;
}

/**
 * Return the `B` input (`[rows, cols / 32, 16]` bytes) and the `scales` input
 * (`[rows * cols / 32]` float32) of `MatMulNBits` for a `[rows, cols]` weight whose row ranges
 * `parts` are stacked in order.
 *
 * ggml keeps value j of a block in the low nibble of byte j and value j + 16 in the high one.
 * `MatMulNBits` keeps values 2k and 2k + 1 in the low and high nibbles of byte k, so the
 * nibbles are repacked. Each scale is the block's f16 scale times its part's `scale`.
 */
export function matMulNBitsWeights(rows: number, cols: number, parts: Q4_0Rows[]): { packed: Uint8Array; scales: Float32Array } {
  if (cols % Q4_0_BLOCK_VALUES !== 0) {
    throw new RangeError(`Cannot pack Q4_0 rows for MatMulNBits: current row length is ${cols}; expected a multiple of ${Q4_0_BLOCK_VALUES}`);
  }
  const blocksPerRow = cols / Q4_0_BLOCK_VALUES;
  const total = parts.reduce((sum, part) => sum + part.rows, 0);
  if (total !== rows) {
    throw new RangeError(`Cannot pack Q4_0 rows for MatMulNBits: current parts hold ${total} rows; expected ${rows}`);
  }

  const packed = new Uint8Array(rows * blocksPerRow * 16);
  const scales = new Float32Array(rows * blocksPerRow);
  const values = new Uint8Array(Q4_0_BLOCK_VALUES);
  let block = 0;
  for (const part of parts) {
    const view = new DataView(part.blocks.buffer, part.blocks.byteOffset, part.blocks.byteLength);
    for (let b = 0; b < part.rows * blocksPerRow; b++, block++) {
      const at = b * Q4_0_BLOCK_BYTES;
      scales[block] = halfToFloat(view.getUint16(at, true)) * part.scale;
      for (let j = 0; j < 16; j++) {
        const byte = part.blocks[at + 2 + j];
        values[j] = byte & 0x0f;
        values[j + 16] = byte >> 4;
      }
      for (let k = 0; k < 16; k++) packed[block * 16 + k] = values[2 * k] | (values[2 * k + 1] << 4);
    }
  }
  return { packed, scales };
}
