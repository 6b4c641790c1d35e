/**
 * Dequantization of the ggml block formats Q8_0, Q4_0, Q4_K and Q6_K to float32.
 *
 * Block layouts and formulas follow ggml's reference (scalar) dequantizers in
 * `ggml-quants.c` (`dequantize_row_q8_0`, `_q4_0`, `_q4_K`, `_q6_K`). Every product is
 * rounded to float32 in the same order as the C code, so the results are bit-identical to
 * ggml's scalar path.
 */

/** Convert an IEEE 754 half-precision bit pattern to a number (also in `gguf.ts`, kept here to avoid an import cycle). */
function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** Shape of one quantized block: how many values it holds and how many bytes it takes. */
export interface BlockFormat {
  name: string;
  /** Values per block. */
  blockValues: number;
  /** Bytes per block. */
  blockBytes: number;
}

/** ggml type ids of the block formats this module dequantizes, with their block shapes. */
export const QUANT_FORMATS: Readonly<Record<number, BlockFormat>> = {
  2: { name: "Q4_0", blockValues: 32, blockBytes: 18 },
  8: { name: "Q8_0", blockValues: 32, blockBytes: 34 },
  12: { name: "Q4_K", blockValues: 256, blockBytes: 144 },
  14: { name: "Q6_K", blockValues: 256, blockBytes: 210 },
};

const f32 = Math.fround;

/** Return the byte size of `count` values of a quantized type, or undefined for other types. */
export function quantizedByteSize(type: number, count: number): number | undefined {
  const format = QUANT_FORMATS[type];
  if (format === undefined) return undefined;
  return Math.ceil(count / format.blockValues) * format.blockBytes;
}

/**
 * Dequantize `count` values of ggml type `type` from `bytes`.
 *
 * Throws RangeError when the type is not one of {@link QUANT_FORMATS}, when `count` is not a
 * multiple of the block size, or when `bytes` is shorter than the blocks need.
 */
export function dequantize(type: number, bytes: Uint8Array, count: number): Float32Array {
  const format = QUANT_FORMATS[type];
  if (format === undefined) {
    throw new RangeError(`Cannot dequantize ggml type ${type}: supported types are Q8_0, Q4_0, Q4_K and Q6_K`);
  }
  if (count % format.blockValues !== 0) {
    throw new RangeError(
      `Cannot dequantize ${format.name}: current value count is ${count}; expected a multiple of ${format.blockValues}`,
    );
  }
  const blocks = count / format.blockValues;
  if (bytes.byteLength < blocks * format.blockBytes) {
    throw new RangeError(
      `Cannot dequantize ${format.name}: current data is ${bytes.byteLength} bytes; ${blocks} blocks need ${blocks * format.blockBytes}`,
    );
  }
  const out = new Float32Array(count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0; b < blocks; b++) {
    const at = b * format.blockBytes;
    const y = b * format.blockValues;
    switch (format.name) {
      case "Q8_0":
        dequantizeQ8_0(view, at, out, y);
        break;
      case "Q4_0":
        dequantizeQ4_0(view, at, out, y);
        break;
      case "Q4_K":
        dequantizeQ4K(view, at, out, y);
        break;
      default:
        dequantizeQ6K(view, at, out, y);
    }
  }
  return out;
}

/** Q8_0: f16 scale `d`, then 32 int8 values; y = d * q. */
function dequantizeQ8_0(view: DataView, at: number, out: Float32Array, y: number): void {
  const d = f32(halfToFloat(view.getUint16(at, true)));
  for (let j = 0; j < 32; j++) out[y + j] = f32(view.getInt8(at + 2 + j) * d);
}

/** Q4_0: f16 scale `d`, then 16 bytes of nibbles; low nibbles are values 0..15, high 16..31; y = (q - 8) * d. */
function dequantizeQ4_0(view: DataView, at: number, out: Float32Array, y: number): void {
  const d = f32(halfToFloat(view.getUint16(at, true)));
  for (let j = 0; j < 16; j++) {
    const byte = view.getUint8(at + 2 + j);
    out[y + j] = f32(((byte & 0x0f) - 8) * d);
    out[y + j + 16] = f32(((byte >> 4) - 8) * d);
  }
}

/**
 * Read the 6-bit scale and min of sub-block `j` (0..7) from the 12 packed bytes of a Q4_K
 * block: sub-blocks 0-3 use the low 6 bits of bytes j and j+4; sub-blocks 4-7 take 4 bits
 * from byte j+4 and their top 2 bits from the spare high bits of bytes j-4 and j.
 */
export function q4kScaleMin(scales: Uint8Array, j: number): [number, number] {
  if (j < 4) return [scales[j] & 63, scales[j + 4] & 63];
  return [(scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)];
}

/**
 * Q4_K: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and mins for 8 sub-blocks of
 * 32, then 128 bytes of nibbles. Each 32 bytes hold two sub-blocks (low nibbles first);
 * y = d * scale * q - dmin * min.
 */
function dequantizeQ4K(view: DataView, at: number, out: Float32Array, y: number): void {
  const d = f32(halfToFloat(view.getUint16(at, true)));
  const dmin = f32(halfToFloat(view.getUint16(at + 2, true)));
  const scales = new Uint8Array(view.buffer, view.byteOffset + at + 4, 12);
  const qs = at + 16;
  for (let group = 0; group < 4; group++) {
    const [scale1, min1] = q4kScaleMin(scales, 2 * group);
    const [scale2, min2] = q4kScaleMin(scales, 2 * group + 1);
    const d1 = f32(d * scale1);
    const m1 = f32(dmin * min1);
    const d2 = f32(d * scale2);
    const m2 = f32(dmin * min2);
    for (let l = 0; l < 32; l++) {
      const byte = view.getUint8(qs + group * 32 + l);
      out[y + group * 64 + l] = f32(f32(d1 * (byte & 0x0f)) - m1);
      out[y + group * 64 + 32 + l] = f32(f32(d2 * (byte >> 4)) - m2);
    }
  }
}

/**
 * Q6_K: 128 bytes of low nibbles `ql`, 64 bytes of high 2-bit pairs `qh`, 16 int8 scales
 * (one per 16 values), then f16 `d`; y = d * scale * (q - 32) with q of 6 bits.
 */
function dequantizeQ6K(view: DataView, at: number, out: Float32Array, y: number): void {
  const d = f32(halfToFloat(view.getUint16(at + 208, true)));
  for (let half = 0; half < 2; half++) {
    const ql = at + half * 64;
    const qh = at + 128 + half * 32;
    const sc = at + 192 + half * 8;
    const base = y + half * 128;
    for (let l = 0; l < 32; l++) {
      const is = l >> 4;
      const low0 = view.getUint8(ql + l);
      const low32 = view.getUint8(ql + l + 32);
      const high = view.getUint8(qh + l);
      const q1 = ((low0 & 0x0f) | (((high >> 0) & 3) << 4)) - 32;
      const q2 = ((low32 & 0x0f) | (((high >> 2) & 3) << 4)) - 32;
      const q3 = ((low0 >> 4) | (((high >> 4) & 3) << 4)) - 32;
      const q4 = ((low32 >> 4) | (((high >> 6) & 3) << 4)) - 32;
      out[base + l] = f32(f32(d * view.getInt8(sc + is)) * q1);
      out[base + l + 32] = f32(f32(d * view.getInt8(sc + is + 2)) * q2);
      out[base + l + 64] = f32(f32(d * view.getInt8(sc + is + 4)) * q3);
      out[base + l + 96] = f32(f32(d * view.getInt8(sc + is + 6)) * q4);
    }
  }
}
