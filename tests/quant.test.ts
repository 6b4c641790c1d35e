/**
 * Tests of the ggml block dequantizers against a packer written here: each test packs
 * chosen scales and quants into ggml's block layout, computes what every value must
 * dequantize to from those fields, and compares bit for bit.
 */

import { describe, expect, test } from "bun:test";
import { type GgufFile, readTensor } from "../core/gguf.ts";
import { dequantize, quantizedByteSize } from "../core/quant.ts";

const Q4_0 = 2;
const Q8_0 = 8;
const Q4_K = 12;
const Q6_K = 14;
const f32 = Math.fround;

/** Deterministic pseudo-random integers (xorshift32). */
function makeRandom(seed: number): (n: number) => number {
  let state = seed >>> 0 || 1;
  return (n: number) => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state % n;
  };
}

/** Encode a number as IEEE half bits (round to nearest even), for scales that are exact in f16. */
function floatToHalfBits(value: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, value);
  const bits = view.getUint32(0);
  const sign = (bits >>> 16) & 0x8000;
  const exponent = ((bits >>> 23) & 0xff) - 127 + 15;
  const mantissa = bits & 0x7fffff;
  if (value === 0) return sign;
  if (exponent <= 0 || exponent >= 31) throw new RangeError(`test scale ${value} is outside the normal f16 range`);
  if ((mantissa & 0x1fff) !== 0) throw new RangeError(`test scale ${value} is not exact in f16`);
  return sign | (exponent << 10) | (mantissa >>> 13);
}

/** Draw a scale that f16 stores exactly: a 10-bit mantissa times a power of two. */
function exactHalf(random: (n: number) => number): number {
  const mantissa = 1024 + random(1024);
  const exponent = -20 + random(12);
  const sign = random(2) === 0 ? 1 : -1;
  return sign * mantissa * 2 ** exponent;
}

function positiveHalf(random: (n: number) => number): number {
  return Math.abs(exactHalf(random));
}

/** Pack Q8_0 blocks and return bytes plus the expected values. */
function packQ8_0(blocks: number, random: (n: number) => number) {
  const bytes = new Uint8Array(blocks * 34);
  const view = new DataView(bytes.buffer);
  const expected = new Float32Array(blocks * 32);
  for (let b = 0; b < blocks; b++) {
    const d = exactHalf(random);
    view.setUint16(b * 34, floatToHalfBits(d), true);
    for (let j = 0; j < 32; j++) {
      const q = random(256) - 128;
      view.setInt8(b * 34 + 2 + j, q);
      expected[b * 32 + j] = f32(q * d);
    }
  }
  return { bytes, expected };
}

function packQ4_0(blocks: number, random: (n: number) => number) {
  const bytes = new Uint8Array(blocks * 18);
  const view = new DataView(bytes.buffer);
  const expected = new Float32Array(blocks * 32);
  for (let b = 0; b < blocks; b++) {
    const d = exactHalf(random);
    view.setUint16(b * 18, floatToHalfBits(d), true);
    const quants = Array.from({ length: 32 }, () => random(16));
    for (let j = 0; j < 16; j++) bytes[b * 18 + 2 + j] = quants[j] | (quants[j + 16] << 4);
    for (let j = 0; j < 32; j++) expected[b * 32 + j] = f32((quants[j] - 8) * d);
  }
  return { bytes, expected };
}

/** Pack eight 6-bit scales and mins into ggml's 12-byte Q4_K form. */
function packScaleMin(scales: number[], mins: number[]): Uint8Array {
  const out = new Uint8Array(12);
  for (let j = 0; j < 4; j++) {
    out[j] = (scales[j] & 63) | ((scales[j + 4] >> 4) << 6);
    out[j + 4] = (mins[j] & 63) | ((mins[j + 4] >> 4) << 6);
    out[j + 8] = (scales[j + 4] & 15) | ((mins[j + 4] & 15) << 4);
  }
  return out;
}

function packQ4K(blocks: number, random: (n: number) => number) {
  const bytes = new Uint8Array(blocks * 144);
  const view = new DataView(bytes.buffer);
  const expected = new Float32Array(blocks * 256);
  for (let b = 0; b < blocks; b++) {
    const at = b * 144;
    const d = positiveHalf(random);
    const dmin = positiveHalf(random);
    view.setUint16(at, floatToHalfBits(d), true);
    view.setUint16(at + 2, floatToHalfBits(dmin), true);
    const scales = Array.from({ length: 8 }, () => random(64));
    const mins = Array.from({ length: 8 }, () => random(64));
    bytes.set(packScaleMin(scales, mins), at + 4);
    for (let i = 0; i < 256; i++) {
      // Value i is in sub-block i / 32; sub-blocks 2g and 2g+1 share bytes 32g..32g+31.
      const sub = i >> 5;
      const q = random(16);
      const byteIndex = at + 16 + (sub >> 1) * 32 + (i & 31);
      bytes[byteIndex] |= sub % 2 === 0 ? q : q << 4;
      expected[b * 256 + i] = f32(f32(f32(d * scales[sub]) * q) - f32(dmin * mins[sub]));
    }
  }
  return { bytes, expected };
}

function packQ6K(blocks: number, random: (n: number) => number) {
  const bytes = new Uint8Array(blocks * 210);
  const view = new DataView(bytes.buffer);
  const expected = new Float32Array(blocks * 256);
  for (let b = 0; b < blocks; b++) {
    const at = b * 210;
    const d = exactHalf(random);
    view.setUint16(at + 208, floatToHalfBits(d), true);
    const scales = Array.from({ length: 16 }, () => random(256) - 128);
    scales.forEach((s, i) => view.setInt8(at + 192 + i, s));
    for (let i = 0; i < 256; i++) {
      // Value i: half h = i / 128, then quarter k = (i % 128) / 32 and lane l = i % 32.
      const h = i >> 7;
      const k = (i & 127) >> 5;
      const l = i & 31;
      const q = random(64);
      const lowIndex = at + h * 64 + l + (k % 2) * 32;
      bytes[lowIndex] |= k < 2 ? q & 15 : (q & 15) << 4;
      bytes[at + 128 + h * 32 + l] |= (q >> 4) << (2 * k);
      const scale = scales[h * 8 + (l >> 4) + 2 * k];
      expected[b * 256 + i] = f32(f32(d * scale) * (q - 32));
    }
  }
  return { bytes, expected };
}

const packers = [
  { name: "Q8_0", type: Q8_0, blockValues: 32, pack: packQ8_0 },
  { name: "Q4_0", type: Q4_0, blockValues: 32, pack: packQ4_0 },
  { name: "Q4_K", type: Q4_K, blockValues: 256, pack: packQ4K },
  { name: "Q6_K", type: Q6_K, blockValues: 256, pack: packQ6K },
];

describe("dequantize", () => {
  for (const { name, type, blockValues, pack } of packers) {
    test(`${name} matches packed fields exactly`, () => {
      const random = makeRandom(type * 7919 + 1);
      const blocks = 9;
      const { bytes, expected } = pack(blocks, random);
      expect(quantizedByteSize(type, blocks * blockValues)).toBe(bytes.length);
      const actual = dequantize(type, bytes, blocks * blockValues);
      let mismatches = 0;
      for (let i = 0; i < expected.length; i++) if (!Object.is(actual[i], expected[i])) mismatches++;
      expect(mismatches).toBe(0);
    });
  }

  test("Q4_K unpacks the high scale bits", () => {
    // Sub-block 5 takes scale 0b110011 = 51 and min 0b101010 = 42, stored across three bytes.
    const bytes = new Uint8Array(144);
    const view = new DataView(bytes.buffer);
    view.setUint16(0, floatToHalfBits(1), true);
    view.setUint16(2, floatToHalfBits(1), true);
    const scales = [0, 0, 0, 0, 0, 51, 0, 0];
    const mins = [0, 0, 0, 0, 0, 42, 0, 0];
    bytes.set(packScaleMin(scales, mins), 4);
    bytes.fill(0x33, 16); // every quant is 3
    const values = dequantize(Q4_K, bytes, 256);
    expect(values[5 * 32]).toBe(51 * 3 - 42);
    expect(values[0]).toBe(0);
  });

  test("rejects a partial block", () => {
    expect(() => dequantize(Q8_0, new Uint8Array(34), 31)).toThrow(
      "Cannot dequantize Q8_0: current value count is 31; expected a multiple of 32",
    );
  });

  test("rejects short data", () => {
    expect(() => dequantize(Q6_K, new Uint8Array(209), 256)).toThrow(
      "Cannot dequantize Q6_K: current data is 209 bytes; 1 blocks need 210",
    );
  });

  test("rejects an unsupported type", () => {
    expect(() => dequantize(13, new Uint8Array(176), 256)).toThrow("Cannot dequantize ggml type 13");
  });
});

describe("readTensor with quantized data", () => {
  for (const { name, type, blockValues, pack } of packers) {
    test(`reads a ${name} matrix`, () => {
      const random = makeRandom(type + 101);
      const rows = 3;
      const { bytes, expected } = pack(rows, random);
      const file: GgufFile = {
        version: 3,
        metadata: new Map(),
        tensors: new Map([["w", { name: "w", ne: [blockValues, rows], type, offset: 0 }]]),
        alignment: 32,
        dataOffset: 0,
        bytes,
      };
      const tensor = readTensor(file, "w");
      expect(tensor.dims).toEqual([rows, blockValues]);
      expect(Array.from(tensor.data)).toEqual(Array.from(expected));
    });
  }
});
