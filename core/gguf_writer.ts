/**
 * Writer of GGUF files, the container format of llama.cpp, and of llama-architecture
 * models in the layout llama.cpp's converter produces.
 *
 * The byte layout is the one `core/gguf.ts` parses: magic `GGUF`, u32 version, tensor count,
 * metadata count, the metadata, the tensor infos, zero padding up to `general.alignment`,
 * then the tensor data, each tensor starting at a multiple of the alignment. Version 1 writes
 * counts, string lengths, array lengths and tensor dims as u32; versions 2 and 3 as u64.
 *
 * @example
 * ```ts
 * const bytes = writeGguf({
 *   metadata: new GgufMetadataBuilder().string("general.architecture", "llama").entries(),
 *   tensors: [{ name: "w", dims: [2, 3], type: "F16", data: new Float32Array(6) }],
 * });
 * assert(parseGguf(bytes).tensors.get("w")!.ne[0] === 3);
 * ```
 */

import {
  GGML_TYPE_F16,
  GGML_TYPE_F32,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_VALUE_TYPE,
  type GgufValue,
} from "./gguf.ts";
import { quantizedByteSize } from "./quant.ts";
import type { TokenizerData } from "./tokenizer.ts";
import type { LlamaConfig } from "./types.ts";
import { ropeInvFreq } from "./types.ts";

// ---------------------------------------------------------------------------------------
// Input types
// ---------------------------------------------------------------------------------------

/**
 * Element of an ARRAY-of-ARRAY metadata value. GGUF stores an element type for each inner
 * array, which a plain JS array cannot carry.
 */
export interface GgufTypedArray {
  arrayType: number;
  value: GgufWritableValue[];
}

/** A metadata value the writer accepts: a parsed `GgufValue`, or arrays that may hold typed inner arrays. */
export type GgufWritableValue = GgufValue | GgufTypedArray | GgufWritableValue[];

/** One metadata entry to write; `arrayType` is required when `type` is ARRAY. */
export interface GgufWritableEntry {
  type: number;
  arrayType?: number;
  value: GgufWritableValue;
}

/**
 * Float32 data of one tensor, in row-major order: either the whole array, or a function that
 * returns the data as consecutive chunks. The writer calls the function once, when it reaches
 * the tensor, so a generator that makes each chunk on request keeps only one chunk in memory.
 */
export type TensorSource = Float32Array | (() => Iterable<Float32Array>);

/**
 * Storage type of a written tensor. Q8_0 and Q4_0 store blocks of 32 values, so the
 * innermost dim (the row length) must be a multiple of 32, as ggml requires.
 */
export type GgufTensorType = "F32" | "F16" | "Q8_0" | "Q4_0";

/** ggml type ids (`enum ggml_type`) of the storage types. */
const TENSOR_TYPE_IDS: Readonly<Record<GgufTensorType, number>> = {
  F32: GGML_TYPE_F32,
  F16: GGML_TYPE_F16,
  Q4_0: 2,
  Q8_0: 8,
};

/** Values per block of the Q8_0 and Q4_0 formats (ggml's `QK8_0` and `QK4_0`). */
const QUANT_BLOCK_VALUES = 32;

/** One tensor to write. */
export interface GgufTensorInput {
  /** At most 63 bytes of UTF-8, the limit of ggml's `GGML_MAX_NAME`. */
  name: string;
  /** Dims outermost first (numpy order); the file stores them innermost first as ggml `ne`. */
  dims: number[];
  type: GgufTensorType;
  data: TensorSource;
}

/** Everything a GGUF file contains. */
export interface GgufSpec {
  /** GGUF version to write: 3 (current), 2, or 1 (32-bit counts, for old readers). @default 3 */
  version?: 1 | 2 | 3;
  /**
   * Metadata in file order, as `[key, entry]` pairs or a Map (such as `GgufFile.metadata`).
   * A `general.alignment` entry sets the data alignment; without one it is 32.
   */
  metadata: Iterable<[string, GgufWritableEntry]>;
  tensors: GgufTensorInput[];
}

/** Byte layout of a planned file. */
export interface GgufLayout {
  /** Header bytes: everything before the tensor data, padding included. */
  header: Uint8Array;
  alignment: number;
  /** Byte offset of each tensor's data relative to the start of the data section. */
  tensorOffsets: number[];
  /** Size of each tensor's data in bytes. */
  tensorByteSizes: number[];
  /** Size of the whole file in bytes. */
  fileSize: number;
}

/** Max byte length of a tensor name, from ggml's `GGML_MAX_NAME` (64, with the NUL). */
export const GGUF_MAX_TENSOR_NAME_BYTES = 63;
/** Max number of tensor dims, from ggml's `GGML_MAX_DIMS`. */
export const GGUF_MAX_DIMS = 4;

// ---------------------------------------------------------------------------------------
// Metadata builder
// ---------------------------------------------------------------------------------------

/** Builder of metadata entries with one typed method per common GGUF value type. */
export class GgufMetadataBuilder {
  private readonly list: [string, GgufWritableEntry][] = [];

  /** Append an entry of any GGUF value type. */
  add(key: string, type: number, value: GgufWritableValue, arrayType?: number): this {
    this.list.push([key, arrayType === undefined ? { type, value } : { type, arrayType, value }]);
    return this;
  }

  string(key: string, value: string): this {
    return this.add(key, GGUF_VALUE_TYPE.STRING, value);
  }

  uint32(key: string, value: number): this {
    return this.add(key, GGUF_VALUE_TYPE.UINT32, value);
  }

  int32(key: string, value: number): this {
    return this.add(key, GGUF_VALUE_TYPE.INT32, value);
  }

  float32(key: string, value: number): this {
    return this.add(key, GGUF_VALUE_TYPE.FLOAT32, value);
  }

  bool(key: string, value: boolean): this {
    return this.add(key, GGUF_VALUE_TYPE.BOOL, value);
  }

  /** Append an ARRAY entry whose elements all have `elementType`. */
  array(key: string, elementType: number, values: ArrayLike<GgufWritableValue>): this {
    return this.add(key, GGUF_VALUE_TYPE.ARRAY, Array.from(values), elementType);
  }

  /** Return the entries in the order they were added. */
  entries(): [string, GgufWritableEntry][] {
    return [...this.list];
  }
}

// ---------------------------------------------------------------------------------------
// Float16 conversion
// ---------------------------------------------------------------------------------------

const conversionFloat = new Float32Array(1);
const conversionBits = new Uint32Array(conversionFloat.buffer);

/** Convert the bit pattern of a float32 to IEEE 754 half precision, rounding to nearest even. */
function floatBitsToHalf(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;

  // Infinity stays infinite; NaN keeps its top payload bits and stays a (quiet) NaN.
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa === 0 ? 0 : 0x200 | (mantissa >>> 13));

  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00;

  if (halfExponent <= 0) {
    // The result is a half subnormal (or zero): its unit is 2^-24. Below 2^-25 everything
    // rounds to zero, and JS shifts of 32 or more bits would wrap, so stop here.
    if (halfExponent < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - halfExponent;
    let half = mantissa >>> shift;
    const remainder = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (remainder > halfway || (remainder === halfway && (half & 1) === 1)) half++;
    return sign | half;
  }

  // A carry out of the mantissa moves into the exponent, which is the correct rounding,
  // up to 0x7c00 (infinity) for values above the largest half.
  let half = (halfExponent << 10) | (mantissa >>> 13);
  const remainder = mantissa & 0x1fff;
  if (remainder > 0x1000 || (remainder === 0x1000 && (half & 1) === 1)) half++;
  return sign | half;
}

/**
 * Convert a number to the bits of the nearest IEEE 754 half, rounding to nearest even. The
 * number is first rounded to float32, as every tensor value is.
 */
export function floatToHalf(value: number): number {
  conversionFloat[0] = value;
  return floatBitsToHalf(conversionBits[0]);
}

/** Convert float32 values to half bit patterns, `out[i]` from `values[i]`. */
export function floatsToHalves(values: Float32Array, out: Uint16Array = new Uint16Array(values.length)): Uint16Array {
  if (out.length < values.length) {
    throw new RangeError(
      `Failed to convert to float16: the output has room for ${out.length} values, current input has ${values.length}`,
    );
  }
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < bits.length; i++) out[i] = floatBitsToHalf(bits[i]);
  return out;
}

// ---------------------------------------------------------------------------------------
// Q8_0 and Q4_0 quantization
// ---------------------------------------------------------------------------------------

/** Bytes per block: an f16 scale, then 32 int8 values (Q8_0) or 32 packed 4-bit values (Q4_0). */
const Q8_0_BLOCK_BYTES = 34;
const Q4_0_BLOCK_BYTES = 18;

const f32 = Math.fround;

/** C's `roundf`: round to the nearest integer, halfway cases away from zero. */
function roundHalfAwayFromZero(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/** Check the sizes of a quantizer call and return `out`, or a new array of the needed size. */
function checkQuantizeSizes(type: string, values: Float32Array, out: Uint8Array | undefined, blockBytes: number): Uint8Array {
  if (values.length % 32 !== 0) {
    throw new RangeError(`Failed to quantize to ${type}: current value count is ${values.length}, expected a multiple of 32`);
  }
  const needed = (values.length / 32) * blockBytes;
  if (out === undefined) return new Uint8Array(needed);
  if (out.length < needed) {
    throw new RangeError(`Failed to quantize to ${type}: the output has ${out.length} bytes, current input needs ${needed}`);
  }
  return out;
}

/**
 * Quantize values to Q8_0 blocks in `out`, with the arithmetic of ggml's reference quantizer
 * `quantize_row_q8_0_ref`, which `ggml_quantize_chunk` uses for Q8_0: per block of 32,
 * `d = max|x| / 127`, `q = roundf(x * (1/d))`, every step rounded to float32, and `d` stored
 * as f16 rounded to nearest even. `values.length` must be a multiple of 32. Writes into `out`
 * when given, else into a new array, and returns it. `bench/quantizer_crosscheck.ts` found the
 * bytes equal to those of the libggml-base.so in node-llama-cpp 3.21.1.
 */
export function quantizeQ8_0(values: Float32Array, out?: Uint8Array): Uint8Array {
  const bytes = checkQuantizeSizes("Q8_0", values, out, Q8_0_BLOCK_BYTES);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let block = 0; block * 32 < values.length; block++) {
    const x = block * 32;
    const at = block * Q8_0_BLOCK_BYTES;
    let absMax = 0;
    for (let j = 0; j < 32; j++) {
      // C's MAX macro, which skips a NaN that comes before a number, where Math.max would not.
      const magnitude = Math.abs(values[x + j]);
      absMax = absMax > magnitude ? absMax : magnitude;
    }
    const d = f32(absMax / 127);
    const inverse = d !== 0 ? f32(1 / d) : 0;
    view.setUint16(at, floatToHalf(d), true);
    for (let j = 0; j < 32; j++) view.setInt8(at + 2 + j, roundHalfAwayFromZero(f32(values[x + j] * inverse)));
  }
  return bytes;
}

/**
 * Quantize values to Q4_0 blocks in `out`, with the arithmetic of ggml's reference quantizer
 * `quantize_row_q4_0_ref`, which `ggml_quantize_chunk` uses for Q4_0 without an importance
 * matrix: per block of 32, `d = m / -8` where `m` is the first value of largest magnitude,
 * `q = min(15, trunc(x * (1/d) + 8.5))`, so `m` itself maps to 0 (exactly `-8 * d`). Byte `j`
 * contains value `j` in its low nibble and value `j + 16` in its high nibble. `values.length`
 * must be a multiple of 32. Writes into `out` when given, else into a new array, and returns
 * it, byte-identical to ggml as checked by `bench/quantizer_crosscheck.ts`.
 */
export function quantizeQ4_0(values: Float32Array, out?: Uint8Array): Uint8Array {
  const bytes = checkQuantizeSizes("Q4_0", values, out, Q4_0_BLOCK_BYTES);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let block = 0; block * 32 < values.length; block++) {
    const x = block * 32;
    const at = block * Q4_0_BLOCK_BYTES;
    let absMax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const magnitude = Math.abs(values[x + j]);
      if (absMax < magnitude) {
        absMax = magnitude;
        max = values[x + j];
      }
    }
    const d = f32(max / -8);
    const inverse = d !== 0 ? f32(1 / d) : 0;
    view.setUint16(at, floatToHalf(d), true);
    for (let j = 0; j < 16; j++) {
      const low = Math.min(15, Math.trunc(f32(f32(values[x + j] * inverse) + 8.5)));
      const high = Math.min(15, Math.trunc(f32(f32(values[x + j + 16] * inverse) + 8.5)));
      view.setUint8(at + 2 + j, low | (high << 4));
    }
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------
// Header encoding
// ---------------------------------------------------------------------------------------

const T = GGUF_VALUE_TYPE;
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const textEncoder = new TextEncoder();

/** Growable little-endian byte buffer for the header. */
class ByteWriter {
  private bytes = new Uint8Array(1 << 16);
  private view = new DataView(this.bytes.buffer);
  length = 0;

  constructor(private readonly version: number) {}

  /**
   * Make room for `count` bytes and return their offset. It may replace `bytes` and `view`,
   * so callers must read those fields after calling it.
   */
  private reserve(count: number): number {
    const at = this.length;
    if (at + count > this.bytes.length) {
      let capacity = this.bytes.length * 2;
      while (capacity < at + count) capacity *= 2;
      const grown = new Uint8Array(capacity);
      grown.set(this.bytes.subarray(0, at));
      this.bytes = grown;
      this.view = new DataView(grown.buffer);
    }
    this.length += count;
    return at;
  }

  u8(value: number): void {
    const at = this.reserve(1);
    this.view.setUint8(at, value);
  }

  i8(value: number): void {
    const at = this.reserve(1);
    this.view.setInt8(at, value);
  }

  u16(value: number): void {
    const at = this.reserve(2);
    this.view.setUint16(at, value, true);
  }

  i16(value: number): void {
    const at = this.reserve(2);
    this.view.setInt16(at, value, true);
  }

  u32(value: number): void {
    const at = this.reserve(4);
    this.view.setUint32(at, value, true);
  }

  i32(value: number): void {
    const at = this.reserve(4);
    this.view.setInt32(at, value, true);
  }

  f32(value: number): void {
    const at = this.reserve(4);
    this.view.setFloat32(at, value, true);
  }

  f64(value: number): void {
    const at = this.reserve(8);
    this.view.setFloat64(at, value, true);
  }

  u64(value: bigint): void {
    const at = this.reserve(8);
    this.view.setBigUint64(at, value, true);
  }

  i64(value: bigint): void {
    const at = this.reserve(8);
    this.view.setBigInt64(at, value, true);
  }

  /** Write a count or size: u32 in version 1, u64 in versions 2 and 3. */
  size(value: number, field: string): void {
    if (this.version === 1) {
      if (value > 0xffffffff) {
        throw new RangeError(`Failed to write GGUF ${field}: current value is ${value}, version 1 allows at most 2^32 - 1`);
      }
      this.u32(value);
    } else {
      this.u64(BigInt(value));
    }
  }

  string(text: string, field: string): void {
    const encoded = textEncoder.encode(text);
    this.size(encoded.length, `${field} length`);
    const at = this.reserve(encoded.length);
    this.bytes.set(encoded, at);
  }

  padTo(alignment: number): void {
    const padded = Math.ceil(this.length / alignment) * alignment;
    this.reserve(padded - this.length);
  }

  /** Return the written bytes; the reserved area is zero-filled, so padding is zeros. */
  result(): Uint8Array {
    return this.bytes.slice(0, this.length);
  }
}

const INTEGER_RANGES: Record<number, [number, number]> = {
  [T.UINT8]: [0, 0xff],
  [T.INT8]: [-0x80, 0x7f],
  [T.UINT16]: [0, 0xffff],
  [T.INT16]: [-0x8000, 0x7fff],
  [T.UINT32]: [0, 0xffffffff],
  [T.INT32]: [-0x80000000, 0x7fffffff],
};

const TYPE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(GGUF_VALUE_TYPE).map(([name, id]) => [id, name]),
);

function typeName(type: number): string {
  return TYPE_NAMES[type] ?? `unknown type ${type}`;
}

function describeValue(value: unknown): string {
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (Array.isArray(value)) return `an array of ${value.length}`;
  return String(value);
}

function invalidValue(key: string, type: number, value: unknown, expected: string): TypeError {
  return new TypeError(
    `Failed to write GGUF metadata ${key}: current value is ${describeValue(value)}, ${typeName(type)} needs ${expected}`,
  );
}

function writeValue(out: ByteWriter, version: number, key: string, type: number, value: GgufWritableValue): void {
  if (version === 1 && (type === T.UINT64 || type === T.INT64 || type === T.FLOAT64)) {
    throw new RangeError(
      `Failed to write GGUF metadata ${key}: ${typeName(type)} does not exist in GGUF version 1, write version 2 or 3`,
    );
  }
  const range = INTEGER_RANGES[type];
  if (range !== undefined) {
    if (typeof value !== "number" || !Number.isInteger(value) || value < range[0] || value > range[1]) {
      throw invalidValue(key, type, value, `an integer from ${range[0]} to ${range[1]}`);
    }
  }
  switch (type) {
    case T.UINT8: return out.u8(value as number);
    case T.INT8: return out.i8(value as number);
    case T.UINT16: return out.u16(value as number);
    case T.INT16: return out.i16(value as number);
    case T.UINT32: return out.u32(value as number);
    case T.INT32: return out.i32(value as number);
    case T.FLOAT32:
    case T.FLOAT64:
      if (typeof value !== "number") throw invalidValue(key, type, value, "a number");
      return type === T.FLOAT32 ? out.f32(value) : out.f64(value);
    case T.BOOL:
      if (typeof value !== "boolean") throw invalidValue(key, type, value, "a boolean");
      return out.u8(value ? 1 : 0);
    case T.STRING:
      if (typeof value !== "string") throw invalidValue(key, type, value, "a string");
      return out.string(value, `metadata ${key}`);
    case T.UINT64:
    case T.INT64:
      return writeInt64(out, key, type, value);
    case T.ARRAY:
      throw invalidValue(key, type, value, "an element type: pass an object with arrayType and value");
    default:
      throw new RangeError(`Failed to write GGUF metadata ${key}: current type is ${type}, not a GGUF value type (0 to 12)`);
  }
}

function writeInt64(out: ByteWriter, key: string, type: number, value: GgufWritableValue): void {
  let big: bigint;
  if (typeof value === "bigint") big = value;
  else if (typeof value === "number" && Number.isSafeInteger(value)) big = BigInt(value);
  else throw invalidValue(key, type, value, "a bigint or a safe integer");

  const unsigned = type === T.UINT64;
  const min = unsigned ? 0n : -(1n << 63n);
  const max = unsigned ? (1n << 64n) - 1n : (1n << 63n) - 1n;
  if (big < min || big > max) throw invalidValue(key, type, value, `a value from ${min} to ${max}`);
  if (unsigned) out.u64(big);
  else out.i64(big);
}

function writeArray(out: ByteWriter, version: number, key: string, elementType: number | undefined, values: unknown): void {
  if (elementType === undefined) {
    throw new TypeError(`Failed to write GGUF metadata ${key}: an ARRAY entry needs arrayType, current value is undefined`);
  }
  if (!Array.isArray(values)) throw invalidValue(key, T.ARRAY, values, "an array");
  out.u32(elementType);
  out.size(values.length, `array length of ${key}`);
  for (const element of values) {
    if (elementType !== T.ARRAY) {
      writeValue(out, version, key, elementType, element);
      continue;
    }
    if (typeof element !== "object" || element === null || Array.isArray(element) || !("arrayType" in element)) {
      throw invalidValue(key, T.ARRAY, element, "inner arrays written as { arrayType, value }");
    }
    writeArray(out, version, key, element.arrayType, element.value);
  }
}

function alignmentOf(metadata: [string, GgufWritableEntry][]): number {
  const entry = metadata.find(([key]) => key === "general.alignment");
  if (entry === undefined) return GGUF_DEFAULT_ALIGNMENT;
  const value = Number(entry[1].value);
  // llama.cpp requires a power of two; the reader of this project accepts any positive integer.
  if (!Number.isInteger(value) || value <= 0 || (value & (value - 1)) !== 0) {
    throw new RangeError(
      `Failed to write GGUF: general.alignment must be a power of two, current value is ${describeValue(entry[1].value)}`,
    );
  }
  return value;
}

function tensorTypeId(tensor: GgufTensorInput): number {
  const id = Object.hasOwn(TENSOR_TYPE_IDS, tensor.type) ? TENSOR_TYPE_IDS[tensor.type] : undefined;
  if (id === undefined) {
    throw new TypeError(
      `Failed to write tensor ${tensor.name}: current type is ${String(tensor.type)}, expected "F32", "F16", "Q8_0" or "Q4_0"`,
    );
  }
  return id;
}

function isQuantized(type: GgufTensorType): type is "Q8_0" | "Q4_0" {
  return type === "Q8_0" || type === "Q4_0";
}

/** Size of a tensor's data in bytes. */
function tensorByteSize(tensor: GgufTensorInput, typeId: number): number {
  const count = elementCount(tensor);
  if (typeId === GGML_TYPE_F32) return count * 4;
  if (typeId === GGML_TYPE_F16) return count * 2;
  return quantizedByteSize(typeId, count)!;
}

function elementCount(tensor: GgufTensorInput): number {
  return tensor.dims.reduce((a, b) => a * b, 1);
}

function checkTensor(tensor: GgufTensorInput, names: Set<string>): void {
  const nameBytes = textEncoder.encode(tensor.name).length;
  if (nameBytes === 0 || nameBytes > GGUF_MAX_TENSOR_NAME_BYTES) {
    throw new RangeError(
      `Failed to write tensor ${JSON.stringify(tensor.name)}: its name is ${nameBytes} bytes, ` +
        `ggml allows 1 to ${GGUF_MAX_TENSOR_NAME_BYTES}`,
    );
  }
  if (names.has(tensor.name)) throw new RangeError(`Failed to write tensor ${tensor.name}: the name is used twice`);
  names.add(tensor.name);
  const { dims } = tensor;
  if (dims.length < 1 || dims.length > GGUF_MAX_DIMS || dims.some((d) => !Number.isSafeInteger(d) || d < 1)) {
    throw new RangeError(
      `Failed to write tensor ${tensor.name}: current dims are [${dims}], expected 1 to ${GGUF_MAX_DIMS} positive integers`,
    );
  }
  const rowLength = dims[dims.length - 1];
  if (isQuantized(tensor.type) && rowLength % QUANT_BLOCK_VALUES !== 0) {
    throw new RangeError(
      `Failed to write tensor ${tensor.name} as ${tensor.type}: current row length (last dim) is ${rowLength}, ` +
        `expected a multiple of ${QUANT_BLOCK_VALUES}; store it as F32 or F16`,
    );
  }
  if (tensor.data instanceof Float32Array && tensor.data.length !== elementCount(tensor)) {
    throw new RangeError(
      `Failed to write tensor ${tensor.name}: dims [${dims}] need ${elementCount(tensor)} values, ` +
        `current data has ${tensor.data.length}`,
    );
  }
}

/**
 * Encode the header of a file and place every tensor. The tensor data is not read, so the
 * size of a file is known before any data is generated.
 */
export function planGguf(spec: GgufSpec): GgufLayout {
  const version = spec.version ?? 3;
  if (version !== 1 && version !== 2 && version !== 3) {
    throw new RangeError(`Failed to write GGUF: current version is ${version}, supported versions are 1, 2 and 3`);
  }
  const metadata = [...spec.metadata];
  const keys = new Set<string>();
  for (const [key] of metadata) {
    if (keys.has(key)) throw new RangeError(`Failed to write GGUF metadata ${key}: the key is used twice`);
    keys.add(key);
  }
  const alignment = alignmentOf(metadata);

  const out = new ByteWriter(version);
  out.u8(0x47); // "GGUF"
  out.u8(0x47);
  out.u8(0x55);
  out.u8(0x46);
  out.u32(version);
  out.size(spec.tensors.length, "tensor count");
  out.size(metadata.length, "metadata count");

  for (const [key, entry] of metadata) {
    out.string(key, "metadata key");
    out.u32(entry.type);
    if (entry.type === T.ARRAY) writeArray(out, version, key, entry.arrayType, entry.value);
    else writeValue(out, version, key, entry.type, entry.value);
  }

  const names = new Set<string>();
  const tensorOffsets: number[] = [];
  const tensorByteSizes: number[] = [];
  let offset = 0;
  for (const tensor of spec.tensors) {
    checkTensor(tensor, names);
    const type = tensorTypeId(tensor);
    out.string(tensor.name, "tensor name");
    out.u32(tensor.dims.length);
    for (let d = tensor.dims.length - 1; d >= 0; d--) out.size(tensor.dims[d], `dim of ${tensor.name}`);
    out.u32(type);
    out.u64(BigInt(offset));

    const byteSize = tensorByteSize(tensor, type);
    tensorOffsets.push(offset);
    tensorByteSizes.push(byteSize);
    offset += Math.ceil(byteSize / alignment) * alignment;
  }
  out.padTo(alignment);

  const header = out.result();
  return { header, alignment, tensorOffsets, tensorByteSizes, fileSize: header.length + offset };
}

// ---------------------------------------------------------------------------------------
// Tensor data encoding
// ---------------------------------------------------------------------------------------

/** Elements converted per step when a tensor is streamed. */
const CHUNK_ELEMENTS = 1 << 20;

/** Split the tensor's data into chunks of at most `CHUNK_ELEMENTS` and check their total. */
function* chunksOf(tensor: GgufTensorInput): Generator<Float32Array> {
  const expected = elementCount(tensor);
  const source = typeof tensor.data === "function" ? tensor.data() : [tensor.data];
  let total = 0;
  for (const chunk of source) {
    if (!(chunk instanceof Float32Array)) {
      throw new TypeError(`Failed to write tensor ${tensor.name}: its data source must yield Float32Array chunks`);
    }
    total += chunk.length;
    if (total > expected) break;
    for (let start = 0; start < chunk.length; start += CHUNK_ELEMENTS) {
      yield chunk.subarray(start, Math.min(chunk.length, start + CHUNK_ELEMENTS));
    }
  }
  if (total !== expected) {
    throw new RangeError(
      `Failed to write tensor ${tensor.name}: dims [${tensor.dims}] need ${expected} values, ` +
        `current data source yields ${total > expected ? "more" : total}`,
    );
  }
}

/**
 * Regroup chunks so that each yielded chunk holds whole blocks of `blockValues`. A partial
 * block at the end of a chunk is copied into a carry buffer and completed from the next chunk.
 * The carry buffer is reused, so a consumer must encode a chunk before asking for the next.
 */
function* wholeBlocks(chunks: Iterable<Float32Array>, blockValues: number): Generator<Float32Array> {
  const carry = new Float32Array(blockValues);
  let carried = 0;
  for (let chunk of chunks) {
    if (carried > 0) {
      const take = Math.min(blockValues - carried, chunk.length);
      carry.set(chunk.subarray(0, take), carried);
      carried += take;
      chunk = chunk.subarray(take);
      if (carried < blockValues) continue;
      yield carry;
      carried = 0;
    }
    const whole = chunk.length - (chunk.length % blockValues);
    if (whole > 0) yield chunk.subarray(0, whole);
    carry.set(chunk.subarray(whole));
    carried = chunk.length - whole;
  }
  // chunksOf has already thrown when the total is not the element count, and the element
  // count of a quantized tensor is a multiple of the block size, so nothing is carried here.
}

/** Encode a tensor's data chunk by chunk; each yielded array is valid until the next is requested. */
function* encodedChunks(tensor: GgufTensorInput, scratch: { buffer: ArrayBuffer }): Generator<Uint8Array> {
  const chunks = isQuantized(tensor.type) ? wholeBlocks(chunksOf(tensor), QUANT_BLOCK_VALUES) : chunksOf(tensor);
  for (const chunk of chunks) yield encodeChunk(chunk, tensor.type, scratch);
}

/** Return `byteLength` bytes of `scratch.buffer`, first replacing the buffer when it is too small. */
function scratchBytes(scratch: { buffer: ArrayBuffer }, byteLength: number): Uint8Array {
  if (scratch.buffer.byteLength < byteLength) scratch.buffer = new ArrayBuffer(byteLength);
  return new Uint8Array(scratch.buffer, 0, byteLength);
}

/** Encode one chunk of values as the bytes of `type`, reusing `scratch` when it is large enough. */
function encodeChunk(chunk: Float32Array, type: GgufTensorType, scratch: { buffer: ArrayBuffer }): Uint8Array {
  if (type === "Q8_0") return quantizeQ8_0(chunk, scratchBytes(scratch, (chunk.length / 32) * Q8_0_BLOCK_BYTES));
  if (type === "Q4_0") return quantizeQ4_0(chunk, scratchBytes(scratch, (chunk.length / 32) * Q4_0_BLOCK_BYTES));
  if (type === "F32") {
    if (LITTLE_ENDIAN_HOST) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const bytes = new Uint8Array(chunk.length * 4);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < chunk.length; i++) view.setFloat32(i * 4, chunk[i], true);
    return bytes;
  }
  if (scratch.buffer.byteLength < chunk.length * 2) scratch.buffer = new ArrayBuffer(chunk.length * 2);
  const halves = floatsToHalves(chunk, new Uint16Array(scratch.buffer, 0, chunk.length));
  if (!LITTLE_ENDIAN_HOST) {
    const view = new DataView(halves.buffer, 0, chunk.length * 2);
    for (let i = 0; i < chunk.length; i++) view.setUint16(i * 2, halves[i], true);
  }
  return new Uint8Array(halves.buffer, 0, chunk.length * 2);
}

/** Serialize a whole GGUF file into memory. */
export function writeGguf(spec: GgufSpec): Uint8Array {
  const layout = planGguf(spec);
  const bytes = new Uint8Array(layout.fileSize);
  bytes.set(layout.header, 0);
  const scratch = { buffer: new ArrayBuffer(0) };
  spec.tensors.forEach((tensor, index) => {
    let at = layout.header.length + layout.tensorOffsets[index];
    for (const encoded of encodedChunks(tensor, scratch)) {
      bytes.set(encoded, at);
      at += encoded.length;
    }
  });
  return bytes;
}

/**
 * Write a GGUF file to `path`, one chunk of at most 2^20 values at a time. Besides the
 * caller's arrays, the writer keeps only the header and one converted chunk in memory, and
 * tensors given as generator functions never exist whole. The file is written to
 * `path + ".partial"` and renamed when complete, so a failed write leaves no file at `path`.
 * Returns the layout it wrote.
 */
export async function writeGgufFile(path: string, spec: GgufSpec): Promise<GgufLayout> {
  const { open, rename, rm } = await import("node:fs/promises");
  const layout = planGguf(spec);
  const partialPath = `${path}.partial`;
  const handle = await open(partialPath, "w");
  try {
    await writeAll(handle, layout.header);
    let position = layout.header.length;
    const scratch = { buffer: new ArrayBuffer(0) };
    for (let index = 0; index < spec.tensors.length; index++) {
      const tensor = spec.tensors[index];
      const start = layout.header.length + layout.tensorOffsets[index];
      if (start > position) await writeAll(handle, new Uint8Array(start - position));
      position = start;
      for (const encoded of encodedChunks(tensor, scratch)) {
        await writeAll(handle, encoded);
        position += encoded.length;
      }
    }
    if (layout.fileSize > position) await writeAll(handle, new Uint8Array(layout.fileSize - position));
  } catch (error) {
    await handle.close();
    await rm(partialPath, { force: true });
    throw error;
  }
  await handle.close();
  await rename(partialPath, path);
  return layout;
}

async function writeAll(handle: import("node:fs/promises").FileHandle, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, written, bytes.length - written);
    written += bytesWritten;
  }
}

// ---------------------------------------------------------------------------------------
// Llama models
// ---------------------------------------------------------------------------------------

/** A tensor whose data may still be generated lazily. */
export interface TensorLike {
  dims: number[];
  data: TensorSource;
}

/** Weights of one block, `LlamaLayerWeights` with lazily generated data allowed. */
export interface LlamaLayerSources {
  attnNorm: TensorLike;
  wq: TensorLike;
  wk: TensorLike;
  wv: TensorLike;
  wo: TensorLike;
  bq?: TensorLike;
  bk?: TensorLike;
  bv?: TensorLike;
  ffnNorm: TensorLike;
  wGate: TensorLike;
  wUp: TensorLike;
  wDown: TensorLike;
}

/**
 * `LlamaWeights` with lazily generated data allowed. Every `LlamaWeights` is one.
 * When `output` is the same object as `tokenEmbedding` the model has tied embeddings.
 */
export interface LlamaWeightSources {
  config: LlamaConfig;
  tokenEmbedding: TensorLike;
  layers: LlamaLayerSources[];
  outputNorm: TensorLike;
  output: TensorLike;
}

/** Options of `llamaGgufSpec` and the functions built on it. */
export interface LlamaGgufOptions {
  /** GGUF version. @default 3 */
  version?: 1 | 2 | 3;
  /**
   * Storage type of the matrices. Norm weights, biases and `rope_freqs.weight` stay F32,
   * as llama.cpp's converters keep 1-D tensors. With Q8_0 or Q4_0, a matrix whose row length
   * is not a multiple of 32 is stored as F16, the last fallback of llama.cpp's quantizer
   * (`llama_tensor_get_type`). @default "F32"
   */
  tensorType?: GgufTensorType;
  /** `general.name`, omitted when undefined. */
  name?: string;
  /** Data alignment in bytes; any value other than 32 is written as `general.alignment`. @default 32 */
  alignment?: number;
  /**
   * Omit `output.weight`, so readers tie the output projection to the token embedding.
   * @default true when `weights.output` is the same object as `weights.tokenEmbedding`
   */
  tieEmbeddings?: boolean;
  /** Further metadata entries, written after the llama and tokenizer keys. */
  extraMetadata?: Iterable<[string, GgufWritableEntry]>;
}

/** llama.cpp's `general.file_type` values (`enum llama_ftype`: ALL_F32, MOSTLY_F16, MOSTLY_Q4_0, MOSTLY_Q8_0). */
const FILE_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 7 } as const;

/**
 * Reorder the rows of a Q or K projection (or its bias) from the `halves` rotary layout of
 * Hugging Face checkpoints to the `adjacent` layout of llama GGUF files. Within each head,
 * row `j * rotaryDim/2 + i` moves to row `2i + j`, for the first `rotaryDim` rows. llama.cpp's
 * converter applies this permutation to llama Q and K weights.
 */
function halvesToAdjacentRows(tensor: TensorLike, heads: number, rotaryDim: number): TensorLike {
  const data = collectData(tensor);
  const rows = tensor.dims[0];
  const rowLength = data.length / rows;
  const headRows = rows / heads;
  const half = rotaryDim / 2;
  const permuted = data.slice();
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * headRows + j * half + i) * rowLength;
        const to = (h * headRows + 2 * i + j) * rowLength;
        permuted.set(data.subarray(from, from + rowLength), to);
      }
    }
  }
  return { dims: tensor.dims, data: permuted };
}

function collectData(tensor: TensorLike): Float32Array {
  if (tensor.data instanceof Float32Array) return tensor.data;
  const data = new Float32Array(tensor.dims.reduce((a, b) => a * b, 1));
  let at = 0;
  for (const chunk of tensor.data()) {
    data.set(chunk, at);
    at += chunk.length;
  }
  return data;
}

/**
 * Describe how the config's rotary frequencies differ from `base^(-2i/dim)`: not at all,
 * by one linear factor (`llama.rope.scaling.*` keys), or per pair (`rope_freqs.weight`,
 * a divisor of each frequency).
 */
function ropeScaling(config: LlamaConfig): { factor?: number; perPair?: Float32Array } {
  const { dim, base, invFreq } = config.rope;
  const unscaled = ropeInvFreq(dim, base);
  const factors = new Float32Array(unscaled.length);
  let exact = true;
  for (let i = 0; i < unscaled.length; i++) {
    factors[i] = unscaled[i] / invFreq[i];
    if (invFreq[i] !== unscaled[i]) exact = false;
  }
  if (exact) return {};
  const first = unscaled[0] / invFreq[0];
  const uniform = unscaled.every((value, i) => Math.abs(value / invFreq[i] - first) <= 1e-9 * first);
  return uniform ? { factor: first } : { perPair: factors };
}

function llamaMetadata(config: LlamaConfig, tokenizer: TokenizerData, options: LlamaGgufOptions): [string, GgufWritableEntry][] {
  const tensorType = options.tensorType ?? "F32";
  const meta = new GgufMetadataBuilder().string("general.architecture", "llama");
  if (options.name !== undefined) meta.string("general.name", options.name);
  meta.uint32("general.file_type", FILE_TYPE[tensorType]);
  const alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  if (alignment !== GGUF_DEFAULT_ALIGNMENT) meta.uint32("general.alignment", alignment);

  meta
    .uint32("llama.vocab_size", config.vocabSize)
    .uint32("llama.context_length", config.contextLength)
    .uint32("llama.embedding_length", config.nEmbd)
    .uint32("llama.block_count", config.nLayers)
    .uint32("llama.feed_forward_length", config.nFf)
    .uint32("llama.rope.dimension_count", config.rope.dim)
    .float32("llama.rope.freq_base", config.rope.base)
    .uint32("llama.attention.head_count", config.nHeads)
    .uint32("llama.attention.head_count_kv", config.nKvHeads)
    .float32("llama.attention.layer_norm_rms_epsilon", config.rmsNormEps);
  const scaling = ropeScaling(config);
  if (scaling.factor !== undefined) {
    meta.string("llama.rope.scaling.type", "linear").float32("llama.rope.scaling.factor", scaling.factor);
  }

  meta
    .string("tokenizer.ggml.model", tokenizer.model)
    .array("tokenizer.ggml.tokens", T.STRING, tokenizer.tokens)
    .array("tokenizer.ggml.scores", T.FLOAT32, tokenizer.scores)
    .array("tokenizer.ggml.token_type", T.INT32, tokenizer.tokenTypes)
    .uint32("tokenizer.ggml.bos_token_id", tokenizer.bosId)
    .uint32("tokenizer.ggml.eos_token_id", tokenizer.eosId)
    .uint32("tokenizer.ggml.unknown_token_id", tokenizer.unknownId);
  if (tokenizer.paddingId !== undefined) meta.uint32("tokenizer.ggml.padding_token_id", tokenizer.paddingId);
  meta
    .bool("tokenizer.ggml.add_bos_token", tokenizer.addBos)
    .bool("tokenizer.ggml.add_eos_token", tokenizer.addEos)
    .bool("tokenizer.ggml.add_space_prefix", tokenizer.addSpacePrefix);
  if (tokenizer.chatTemplate !== undefined) meta.string("tokenizer.chat_template", tokenizer.chatTemplate);

  const entries = meta.entries();
  if (options.extraMetadata !== undefined) entries.push(...options.extraMetadata);
  return entries;
}

function checkLlamaShapes(weights: LlamaWeightSources, tokenizer: TokenizerData): void {
  const { config } = weights;
  const fail = (message: string) => new RangeError(`Failed to write llama GGUF: ${message}`);
  if (config.nHeads * config.headDim !== config.nEmbd) {
    throw fail(
      `head count ${config.nHeads} times head size ${config.headDim} must equal the embedding size ` +
        `${config.nEmbd}, because readers derive the head size from them`,
    );
  }
  if (tokenizer.tokens.length !== config.vocabSize) {
    throw fail(`the tokenizer has ${tokenizer.tokens.length} tokens, current config.vocabSize is ${config.vocabSize}`);
  }
  if (weights.layers.length !== config.nLayers) {
    throw fail(`current weights have ${weights.layers.length} blocks, config.nLayers is ${config.nLayers}`);
  }
  if (config.rope.layout === "halves" && (config.rope.dim % 2 !== 0 || config.rope.dim > config.headDim)) {
    throw fail(`rope.dim must be even and at most the head size ${config.headDim}, current value is ${config.rope.dim}`);
  }
}

/**
 * Describe a llama model as a GGUF file: the metadata keys and tensor names llama.cpp's
 * converter writes (`llama.*`, `tokenizer.ggml.*`, `token_embd.weight`, `blk.N.attn_q.weight`,
 * ...), which `loadLlamaGguf` reads back to equal weights and tokenizer data. Q and K of a
 * config with the `halves` rotary layout are permuted to the `adjacent` layout of GGUF files,
 * so that model loads back with `adjacent` layout and permuted rows.
 *
 * Values that GGUF stores as float32 (`rmsNormEps`, the rope base and scaling factor) come
 * back rounded to float32.
 */
export function llamaGgufSpec(
  weights: LlamaWeightSources,
  tokenizer: TokenizerData,
  options: LlamaGgufOptions = {},
): GgufSpec {
  checkLlamaShapes(weights, tokenizer);
  const { config } = weights;
  const matrixType = options.tensorType ?? "F32";
  const tensors: GgufTensorInput[] = [];
  const add = (name: string, tensor: TensorLike, type: GgufTensorType) => {
    const rowLength = tensor.dims[tensor.dims.length - 1];
    const stored = isQuantized(type) && rowLength % QUANT_BLOCK_VALUES !== 0 ? "F16" : type;
    tensors.push({ name, dims: tensor.dims, type: stored, data: tensor.data });
  };

  const toAdjacent = (tensor: TensorLike, heads: number) =>
    config.rope.layout === "halves" ? halvesToAdjacentRows(tensor, heads, config.rope.dim) : tensor;

  add("token_embd.weight", weights.tokenEmbedding, matrixType);
  weights.layers.forEach((layer, i) => {
    const p = `blk.${i}.`;
    add(`${p}attn_norm.weight`, layer.attnNorm, "F32");
    add(`${p}attn_q.weight`, toAdjacent(layer.wq, config.nHeads), matrixType);
    if (layer.bq) add(`${p}attn_q.bias`, toAdjacent(layer.bq, config.nHeads), "F32");
    add(`${p}attn_k.weight`, toAdjacent(layer.wk, config.nKvHeads), matrixType);
    if (layer.bk) add(`${p}attn_k.bias`, toAdjacent(layer.bk, config.nKvHeads), "F32");
    add(`${p}attn_v.weight`, layer.wv, matrixType);
    if (layer.bv) add(`${p}attn_v.bias`, layer.bv, "F32");
    add(`${p}attn_output.weight`, layer.wo, matrixType);
    add(`${p}ffn_norm.weight`, layer.ffnNorm, "F32");
    add(`${p}ffn_gate.weight`, layer.wGate, matrixType);
    add(`${p}ffn_up.weight`, layer.wUp, matrixType);
    add(`${p}ffn_down.weight`, layer.wDown, matrixType);
  });
  add("output_norm.weight", weights.outputNorm, "F32");
  const tied = options.tieEmbeddings ?? weights.output === weights.tokenEmbedding;
  if (!tied) add("output.weight", weights.output, matrixType);

  const scaling = ropeScaling(config);
  if (scaling.perPair !== undefined) {
    tensors.push({ name: "rope_freqs.weight", dims: [scaling.perPair.length], type: "F32", data: scaling.perPair });
  }
  return { version: options.version ?? 3, metadata: llamaMetadata(config, tokenizer, options), tensors };
}

/** Serialize a llama model and its tokenizer into GGUF bytes, see `llamaGgufSpec`. */
export function llamaGgufFromWeights(
  weights: LlamaWeightSources,
  tokenizer: TokenizerData,
  options: LlamaGgufOptions = {},
): Uint8Array {
  return writeGguf(llamaGgufSpec(weights, tokenizer, options));
}

/** Write a llama model and its tokenizer to a GGUF file, streaming, see `writeGgufFile`. */
export function writeLlamaGgufFile(
  path: string,
  weights: LlamaWeightSources,
  tokenizer: TokenizerData,
  options: LlamaGgufOptions = {},
): Promise<GgufLayout> {
  return writeGgufFile(path, llamaGgufSpec(weights, tokenizer, options));
}
