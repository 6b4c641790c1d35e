/**
 * Parser for GGUF files, the container format of llama.cpp.
 *
 * Layout (all little-endian): magic `GGUF`, u32 version, tensor count, metadata count, the
 * metadata key/value pairs, the tensor infos, padding up to the alignment, then the tensor
 * data. Version 1 writes counts, string lengths, array lengths and tensor dims as u32;
 * versions 2 and 3 write them as u64.
 */

import { dequantize, QUANT_FORMATS, quantizedByteSize } from "./quant.ts";
import type { Tensor } from "./types.ts";

/** Metadata value type ids of the GGUF format. */
export const GGUF_VALUE_TYPE = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

/**
 * Names of the ggml tensor type ids, as listed in ggml.h (`enum ggml_type`). Ids 4 and 5
 * (Q4_2, Q4_3) and 31 to 33 (Q4_0_4_4, Q4_0_4_8, Q4_0_8_8) were removed from ggml but keep
 * their numbers.
 */
export const GGML_TYPE_NAMES: Readonly<Record<number, string>> = {
  0: "F32",
  1: "F16",
  2: "Q4_0",
  3: "Q4_1",
  4: "Q4_2",
  5: "Q4_3",
  6: "Q5_0",
  7: "Q5_1",
  8: "Q8_0",
  9: "Q8_1",
  10: "Q2_K",
  11: "Q3_K",
  12: "Q4_K",
  13: "Q5_K",
  14: "Q6_K",
  15: "Q8_K",
  16: "IQ2_XXS",
  17: "IQ2_XS",
  18: "IQ3_XXS",
  19: "IQ1_S",
  20: "IQ4_NL",
  21: "IQ3_S",
  22: "IQ2_S",
  23: "IQ4_XS",
  24: "I8",
  25: "I16",
  26: "I32",
  27: "I64",
  28: "F64",
  29: "IQ1_M",
  30: "BF16",
  31: "Q4_0_4_4",
  32: "Q4_0_4_8",
  33: "Q4_0_8_8",
  34: "TQ1_0",
  35: "TQ2_0",
  36: "IQ4_NL_4_4",
  37: "IQ4_NL_4_8",
  38: "IQ4_NL_8_8",
  39: "MXFP4",
};

/** ggml type id of float32 tensors. */
export const GGML_TYPE_F32 = 0;
/** ggml type id of float16 tensors. */
export const GGML_TYPE_F16 = 1;
/** ggml type id of Q4_0: blocks of 32 values, an f16 scale and 16 bytes of 4-bit values. */
export const GGML_TYPE_Q4_0 = 2;

/** Default of `general.alignment` when a file does not set it. */
export const GGUF_DEFAULT_ALIGNMENT = 32;

/**
 * A decoded metadata value. Integers wider than 32 bits (UINT64, INT64) are `bigint`, and
 * all other numbers are `number`. Arrays of numbers stay plain arrays so that every element
 * type reads the same way.
 */
export type GgufValue = number | bigint | boolean | string | GgufValue[];

/** One metadata entry with its declared GGUF value type. */
export interface GgufMetadataEntry {
  type: number;
  /** Element type of an ARRAY value, undefined for other types. */
  arrayType?: number;
  value: GgufValue;
}

/** Header entry describing one tensor of the file. */
export interface GgufTensorInfo {
  name: string;
  /** ggml `ne`: dims innermost first. */
  ne: number[];
  /** ggml type id, see `GGML_TYPE_NAMES`. */
  type: number;
  /** Byte offset of the tensor data, relative to `GgufFile.dataOffset`. */
  offset: number;
}

/** A parsed GGUF file. Tensor data stays in `bytes` until `readTensor` converts it. */
export interface GgufFile {
  version: number;
  metadata: Map<string, GgufMetadataEntry>;
  tensors: Map<string, GgufTensorInfo>;
  alignment: number;
  /** Absolute byte offset where the tensor data section starts. */
  dataOffset: number;
  bytes: Uint8Array;
}

/** Return the name of a ggml type id, for messages. */
export function ggmlTypeName(type: number): string {
  return GGML_TYPE_NAMES[type] ?? `unknown ggml type ${type}`;
}

/** Sequential little-endian reader that reports truncation as an error. */
class ByteReader {
  private readonly view: DataView;
  private readonly decoder = new TextDecoder("utf-8", { fatal: false });
  offset = 0;

  constructor(private readonly bytes: Uint8Array, private readonly version: number) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private need(count: number, what: string): void {
    if (this.offset + count > this.bytes.byteLength) {
      throw new RangeError(
        `Failed to read GGUF ${what} at byte ${this.offset}: the file is truncated ` +
          `(current size is ${this.bytes.byteLength} bytes, ${this.offset + count} needed)`,
      );
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.view.getUint8(this.offset++);
  }

  u32(what: string): number {
    this.need(4, what);
    const value = this.view.getUint32(this.offset, true);
    this.offset += 4;
    return value;
  }

  u64(what: string): bigint {
    this.need(8, what);
    const value = this.view.getBigUint64(this.offset, true);
    this.offset += 8;
    return value;
  }

  /** Read a count or size: u32 in version 1, u64 in versions 2 and 3. */
  size(what: string): number {
    if (this.version === 1) return this.u32(what);
    const value = this.u64(what);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new RangeError(`Failed to read GGUF ${what}: current value is ${value}, too large`);
    }
    return Number(value);
  }

  string(what: string): string {
    const length = this.size(`${what} length`);
    this.need(length, what);
    const text = this.decoder.decode(this.bytes.subarray(this.offset, this.offset + length));
    this.offset += length;
    return text;
  }

  scalar(type: number, what: string): GgufValue {
    const T = GGUF_VALUE_TYPE;
    const sizes: Record<number, number> = {
      [T.UINT8]: 1, [T.INT8]: 1, [T.BOOL]: 1, [T.UINT16]: 2, [T.INT16]: 2, [T.UINT32]: 4,
      [T.INT32]: 4, [T.FLOAT32]: 4, [T.UINT64]: 8, [T.INT64]: 8, [T.FLOAT64]: 8,
    };
    if (type === T.STRING) return this.string(what);
    const size = sizes[type];
    if (size === undefined) {
      throw new RangeError(`Failed to read GGUF ${what}: current value type is ${type}, not a GGUF type`);
    }
    this.need(size, what);
    const at = this.offset;
    this.offset += size;
    const v = this.view;
    switch (type) {
      case T.UINT8: return v.getUint8(at);
      case T.INT8: return v.getInt8(at);
      case T.BOOL: return v.getUint8(at) !== 0;
      case T.UINT16: return v.getUint16(at, true);
      case T.INT16: return v.getInt16(at, true);
      case T.UINT32: return v.getUint32(at, true);
      case T.INT32: return v.getInt32(at, true);
      case T.FLOAT32: return v.getFloat32(at, true);
      case T.UINT64: return v.getBigUint64(at, true);
      case T.INT64: return v.getBigInt64(at, true);
      default: return v.getFloat64(at, true);
    }
  }
}

/**
 * Parse the header of a GGUF file (versions 1, 2 and 3): metadata, tensor infos and the
 * offset of the tensor data. Throws a one-line error for a file that is not GGUF, is
 * truncated, has an unsupported version or has tensor data outside the file.
 */
export function parseGguf(bytes: Uint8Array): GgufFile {
  if (bytes.byteLength < 8) {
    throw new RangeError(
      `Failed to parse GGUF: the file is truncated (current size is ${bytes.byteLength} bytes, a header needs 8)`,
    );
  }
  const magic = String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]);
  if (magic !== "GGUF") {
    const hex = Array.from(bytes.subarray(0, 4), (b) => b.toString(16).padStart(2, "0")).join(" ");
    throw new TypeError(
      `Failed to parse GGUF: not a GGUF file, the first bytes are ${hex} (${JSON.stringify(magic)}), expected 47 47 55 46 ("GGUF")`,
    );
  }
  const version = new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(4, true);
  if (version < 1 || version > 3) {
    throw new RangeError(`Failed to parse GGUF: current version is ${version}, supported versions are 1, 2 and 3`);
  }

  const reader = new ByteReader(bytes, version);
  reader.offset = 8;
  const tensorCount = reader.size("tensor count");
  const metadataCount = reader.size("metadata count");

  const metadata = new Map<string, GgufMetadataEntry>();
  for (let i = 0; i < metadataCount; i++) {
    const key = reader.string(`metadata key ${i}`);
    const type = reader.u32(`type of ${key}`);
    if (type === GGUF_VALUE_TYPE.ARRAY) {
      const arrayType = reader.u32(`array type of ${key}`);
      const length = reader.size(`array length of ${key}`);
      const values: GgufValue[] = new Array(length);
      for (let j = 0; j < length; j++) values[j] = readArrayElement(reader, arrayType, key);
      metadata.set(key, { type, arrayType, value: values });
    } else {
      metadata.set(key, { type, value: reader.scalar(type, `value of ${key}`) });
    }
  }

  const tensors = new Map<string, GgufTensorInfo>();
  for (let i = 0; i < tensorCount; i++) {
    const name = reader.string(`tensor name ${i}`);
    const nDims = reader.u32(`dim count of ${name}`);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) ne.push(reader.size(`dim ${d} of ${name}`));
    const type = reader.u32(`type of ${name}`);
    const offset = Number(reader.u64(`data offset of ${name}`));
    tensors.set(name, { name, ne, type, offset });
  }

  const alignmentEntry = metadata.get("general.alignment");
  const alignment = alignmentEntry === undefined ? GGUF_DEFAULT_ALIGNMENT : Number(alignmentEntry.value);
  if (!Number.isInteger(alignment) || alignment <= 0) {
    throw new RangeError(`Failed to parse GGUF: general.alignment must be a positive integer, current value is ${alignmentEntry?.value}`);
  }
  const dataOffset = Math.ceil(reader.offset / alignment) * alignment;

  const file: GgufFile = { version, metadata, tensors, alignment, dataOffset, bytes };
  for (const info of tensors.values()) {
    const end = dataOffset + info.offset + tensorByteSize(info);
    if (end > bytes.byteLength) {
      throw new RangeError(
        `Failed to parse GGUF: data of tensor ${info.name} ends at byte ${end}, the file is truncated ` +
          `(current size is ${bytes.byteLength} bytes)`,
      );
    }
  }
  return file;
}

function readArrayElement(reader: ByteReader, arrayType: number, key: string): GgufValue {
  if (arrayType !== GGUF_VALUE_TYPE.ARRAY) return reader.scalar(arrayType, `element of ${key}`);
  const innerType = reader.u32(`nested array type of ${key}`);
  const length = reader.size(`nested array length of ${key}`);
  const values: GgufValue[] = new Array(length);
  for (let j = 0; j < length; j++) values[j] = readArrayElement(reader, innerType, key);
  return values;
}

/** Count the elements of a tensor from its `ne`. */
export function tensorElementCount(info: GgufTensorInfo): number {
  return info.ne.reduce((a, b) => a * b, 1);
}

/**
 * Compute the size in bytes of a tensor's data. Sizes of F32, F16 and the block formats of
 * `quant.ts` are known here. Other types count as 0 bytes: the truncation check skips them
 * and `readTensor` rejects them.
 */
function tensorByteSize(info: GgufTensorInfo): number {
  if (info.type === GGML_TYPE_F32) return tensorElementCount(info) * 4;
  if (info.type === GGML_TYPE_F16) return tensorElementCount(info) * 2;
  return quantizedByteSize(info.type, tensorElementCount(info)) ?? 0;
}

/** Look up a metadata value, or undefined when the key is absent. */
export function getMetadata(file: GgufFile, key: string): GgufValue | undefined {
  return file.metadata.get(key)?.value;
}

/** Look up a metadata value that must be present. */
export function requireMetadata(file: GgufFile, key: string): GgufValue {
  const entry = file.metadata.get(key);
  if (entry === undefined) {
    throw new RangeError(`Failed to load GGUF: missing required metadata key ${key}`);
  }
  return entry.value;
}

/** Convert an IEEE 754 half-precision bit pattern to a number. */
export function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/**
 * Read one tensor as float32 with dims outermost first (ggml `ne` reversed). F16 data is
 * converted and Q8_0, Q4_0, Q4_K and Q6_K data dequantized; any other ggml type is rejected
 * with an error naming the type. Q4_0 blocks are also returned as they are, in `q4_0`.
 */
export function readTensor(file: GgufFile, name: string): Tensor {
  const info = file.tensors.get(name);
  if (info === undefined) {
    throw new RangeError(`Failed to load GGUF: missing required tensor ${name}`);
  }
  const dims = [...info.ne].reverse();
  const count = tensorElementCount(info);
  const start = file.dataOffset + info.offset;
  const view = new DataView(file.bytes.buffer, file.bytes.byteOffset + start, tensorByteSize(info));
  const data = new Float32Array(count);

  if (info.type === GGML_TYPE_F32) {
    for (let i = 0; i < count; i++) data[i] = view.getFloat32(i * 4, true);
  } else if (info.type === GGML_TYPE_F16) {
    for (let i = 0; i < count; i++) data[i] = halfToFloat(view.getUint16(i * 2, true));
  } else if (QUANT_FORMATS[info.type] !== undefined) {
    const blocks = file.bytes.subarray(start, start + tensorByteSize(info));
    const tensor: Tensor = { dims, data: dequantize(info.type, blocks, count) };
    // A copy, so that the tensor does not keep the whole file's bytes alive.
    if (info.type === GGML_TYPE_Q4_0) tensor.q4_0 = blocks.slice();
    return tensor;
  } else {
    throw new TypeError(
      `Unsupported tensor type ${ggmlTypeName(info.type)} in ${name}: sinkstream loads F32, F16, Q8_0, Q4_0, Q4_K and Q6_K tensors`,
    );
  }
  return { dims, data };
}
