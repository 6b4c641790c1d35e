/**
 * A minimal ONNX protobuf encoder, enough to write a model that ONNX Runtime loads.
 *
 * Field numbers and enum values follow `onnx/onnx.proto` (proto2 syntax), so repeated
 * scalars are written unpacked. Nested messages are kept as lists of byte chunks and joined
 * once at the end, so large `raw_data` buffers are copied a single time.
 */

/** `TensorProto.DataType` values used by this project. */
export enum DataType {
  FLOAT = 1,
  UINT8 = 2,
  INT32 = 6,
  INT64 = 7,
  BOOL = 9,
}

/** `AttributeProto.AttributeType` values. */
enum AttributeType {
  FLOAT = 1,
  INT = 2,
  STRING = 3,
  TENSOR = 4,
  FLOATS = 6,
  INTS = 7,
}

/**
 * Place of a tensor's bytes outside the protobuf, written as `external_data` entries with
 * `data_location = EXTERNAL`. ONNX Runtime resolves `location` against the external data files
 * passed to it (session option `externalData`) or against the model file's folder.
 */
export interface ExternalDataLocation {
  /** Relative file name. */
  location: string;
  /** Byte offset in that file. */
  offset: number;
  /** Byte count. */
  length: number;
}

/** A tensor whose payload is already encoded as little-endian bytes. */
export interface TensorProtoInit {
  name: string;
  dataType: DataType;
  dims: number[];
  /** The payload, written as `raw_data` unless `external` is set. */
  rawData: Uint8Array;
  /** Location of the payload in place of `raw_data`; the caller writes `rawData` there. */
  external?: ExternalDataLocation;
}

/** One node attribute, tagged by its ONNX attribute type. */
export type AttributeInit =
  | { name: string; type: "float"; value: number }
  | { name: string; type: "int"; value: number }
  | { name: string; type: "string"; value: string }
  | { name: string; type: "tensor"; value: TensorProtoInit }
  | { name: string; type: "floats"; value: number[] }
  | { name: string; type: "ints"; value: number[] };

export interface NodeInit {
  opType: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  /** Operator set domain; empty for the default `ai.onnx` domain. */
  domain?: string;
  attributes?: AttributeInit[];
}

/** A graph input or output: a tensor type with fixed (number) or symbolic (string) dims. */
export interface ValueInfoInit {
  name: string;
  elemType: DataType;
  shape: (number | string)[];
}

export interface GraphInit {
  name: string;
  nodes: NodeInit[];
  initializers: TensorProtoInit[];
  inputs: ValueInfoInit[];
  outputs: ValueInfoInit[];
}

export interface ModelInit {
  irVersion: number;
  opsetImports: { domain: string; version: number }[];
  producerName: string;
  graph: GraphInit;
}

const WIRE_VARINT = 0;
const WIRE_LENGTH_DELIMITED = 2;
const WIRE_FIXED32 = 5;

const textEncoder = new TextEncoder();

/** Append-only protobuf writer that stores byte chunks without joining them. */
class ProtoWriter {
  readonly chunks: Uint8Array[] = [];
  length = 0;

  private push(bytes: Uint8Array): void {
    this.chunks.push(bytes);
    this.length += bytes.length;
  }

  /** Write a varint; negative values take the 10-byte two's complement form of int64. */
  private varint(value: number): void {
    if (!Number.isSafeInteger(value)) {
      throw new RangeError(`Cannot encode varint: current value is ${value}; expected a safe integer`);
    }
    const bytes: number[] = [];
    let v = value < 0 ? BigInt.asUintN(64, BigInt(value)) : BigInt(value);
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) byte |= 0x80;
      bytes.push(byte);
    } while (v !== 0n);
    this.push(Uint8Array.from(bytes));
  }

  private tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType);
  }

  int(field: number, value: number): void {
    this.tag(field, WIRE_VARINT);
    this.varint(value);
  }

  float(field: number, value: number): void {
    this.tag(field, WIRE_FIXED32);
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setFloat32(0, value, true);
    this.push(bytes);
  }

  bytes(field: number, value: Uint8Array): void {
    this.tag(field, WIRE_LENGTH_DELIMITED);
    this.varint(value.length);
    this.push(value);
  }

  string(field: number, value: string): void {
    this.bytes(field, textEncoder.encode(value));
  }

  message(field: number, fill: (writer: ProtoWriter) => void): void {
    const inner = new ProtoWriter();
    fill(inner);
    this.tag(field, WIRE_LENGTH_DELIMITED);
    this.varint(inner.length);
    for (const chunk of inner.chunks) this.push(chunk);
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let offset = 0;
    for (const chunk of this.chunks) {
      out.set(chunk, offset);
      offset += chunk.length;
    }
    return out;
  }
}

/** `TensorProto.DataLocation.EXTERNAL`. */
const DATA_LOCATION_EXTERNAL = 1;

function writeTensor(w: ProtoWriter, t: TensorProtoInit): void {
  for (const d of t.dims) w.int(1, d); // dims
  w.int(2, t.dataType); // data_type
  w.string(8, t.name); // name
  if (!t.external) {
    w.bytes(9, t.rawData); // raw_data
    return;
  }
  const entries: [string, string][] = [
    ["location", t.external.location],
    ["offset", String(t.external.offset)],
    ["length", String(t.external.length)],
  ];
  for (const [key, value] of entries) {
    // external_data (13) -> StringStringEntryProto { key (1), value (2) }
    w.message(13, (entry) => {
      entry.string(1, key);
      entry.string(2, value);
    });
  }
  w.int(14, DATA_LOCATION_EXTERNAL); // data_location
}

function writeAttribute(w: ProtoWriter, a: AttributeInit): void {
  w.string(1, a.name);
  switch (a.type) {
    case "float":
      w.float(2, a.value);
      w.int(20, AttributeType.FLOAT);
      break;
    case "int":
      w.int(3, a.value);
      w.int(20, AttributeType.INT);
      break;
    case "string":
      w.string(4, a.value);
      w.int(20, AttributeType.STRING);
      break;
    case "tensor":
      w.message(5, (inner) => writeTensor(inner, a.value));
      w.int(20, AttributeType.TENSOR);
      break;
    case "floats":
      for (const v of a.value) w.float(7, v);
      w.int(20, AttributeType.FLOATS);
      break;
    case "ints":
      for (const v of a.value) w.int(8, v);
      w.int(20, AttributeType.INTS);
      break;
  }
}

function writeNode(w: ProtoWriter, n: NodeInit): void {
  for (const input of n.inputs) w.string(1, input);
  for (const output of n.outputs) w.string(2, output);
  if (n.name) w.string(3, n.name);
  w.string(4, n.opType);
  for (const a of n.attributes ?? []) w.message(5, (inner) => writeAttribute(inner, a));
  if (n.domain) w.string(7, n.domain);
}

function writeValueInfo(w: ProtoWriter, v: ValueInfoInit): void {
  w.string(1, v.name);
  // TypeProto.tensor_type (1) -> TypeProto.Tensor { elem_type (1), shape (2) }
  w.message(2, (type) =>
    type.message(1, (tensorType) => {
      tensorType.int(1, v.elemType);
      tensorType.message(2, (shape) => {
        for (const d of v.shape) {
          // TensorShapeProto.dim (1) -> Dimension { dim_value (1) | dim_param (2) }
          shape.message(1, (dim) => (typeof d === "number" ? dim.int(1, d) : dim.string(2, d)));
        }
      });
    })
  );
}

function writeGraph(w: ProtoWriter, g: GraphInit): void {
  for (const n of g.nodes) w.message(1, (inner) => writeNode(inner, n));
  w.string(2, g.name);
  for (const t of g.initializers) w.message(5, (inner) => writeTensor(inner, t));
  for (const v of g.inputs) w.message(11, (inner) => writeValueInfo(inner, v));
  for (const v of g.outputs) w.message(12, (inner) => writeValueInfo(inner, v));
}

/** Encode a `ModelProto` to its binary protobuf form, the content of a `.onnx` file. */
export function encodeModel(model: ModelInit): Uint8Array {
  const w = new ProtoWriter();
  w.int(1, model.irVersion); // ir_version
  w.string(2, model.producerName); // producer_name
  w.message(7, (inner) => writeGraph(inner, model.graph)); // graph
  for (const opset of model.opsetImports) {
    // opset_import (8) -> OperatorSetIdProto { domain (1), version (2) }
    w.message(8, (inner) => {
      inner.string(1, opset.domain);
      inner.int(2, opset.version);
    });
  }
  return w.finish();
}

/** Encode float32 values as little-endian bytes for `raw_data`. */
export function float32Bytes(values: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i], true);
  return out;
}

/** Encode int64 values as little-endian bytes for `raw_data`. */
export function int64Bytes(values: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setBigInt64(i * 8, BigInt(values[i]), true);
  return out;
}
