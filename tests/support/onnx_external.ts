/**
 * Move the large initializers of an ONNX model into an external data file, as Hugging Face
 * exports do (`model.onnx` plus `model.onnx_data`).
 *
 * Fields follow `onnx/onnx.proto`: `ModelProto.graph` is field 7, `GraphProto.initializer`
 * field 5, and in `TensorProto` `raw_data` is 9, `external_data` 13 (key/value entries
 * `location`, `offset`, `length`) and `data_location` 14 (1 = EXTERNAL). Every other field is
 * copied byte for byte.
 */

interface Field {
  number: number;
  wireType: number;
  /** The whole field, tag included. */
  bytes: Uint8Array;
  /** Payload of a length-delimited field. */
  payload?: Uint8Array;
}

function readVarint(bytes: Uint8Array, offset: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (;;) {
    const byte = bytes[offset++];
    value += (byte & 0x7f) * scale;
    if ((byte & 0x80) === 0) return [value, offset];
    scale *= 128;
  }
}

function readFields(bytes: Uint8Array): Field[] {
  const fields: Field[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const start = offset;
    const [tag, afterTag] = readVarint(bytes, offset);
    offset = afterTag;
    const number = Math.floor(tag / 8);
    const wireType = tag % 8;
    let payload: Uint8Array | undefined;
    if (wireType === 0) offset = readVarint(bytes, offset)[1];
    else if (wireType === 1) offset += 8;
    else if (wireType === 5) offset += 4;
    else if (wireType === 2) {
      const [length, afterLength] = readVarint(bytes, offset);
      payload = bytes.subarray(afterLength, afterLength + length);
      offset = afterLength + length;
    } else throw new RangeError(`Cannot parse ONNX protobuf: wire type ${wireType} at byte ${start}`);
    fields.push({ number, wireType, bytes: bytes.subarray(start, offset), payload });
  }
  return fields;
}

function varint(value: number): number[] {
  const out: number[] = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    out.push(byte);
  } while (value > 0);
  return out;
}

function lengthDelimited(number: number, payload: Uint8Array): Uint8Array[] {
  return [Uint8Array.from([...varint(number * 8 + 2), ...varint(payload.length)]), payload];
}

function join(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

const encoder = new TextEncoder();

function entry(key: string, value: string): Uint8Array {
  return join([...lengthDelimited(1, encoder.encode(key)), ...lengthDelimited(2, encoder.encode(value))]);
}

/**
 * Return the model with every initializer of at least `minBytes` bytes of `raw_data` moved
 * to one external file named `location`, and that file's bytes.
 */
export function externalizeInitializers(
  model: Uint8Array,
  location: string,
  minBytes = 1024,
): { model: Uint8Array; data: Uint8Array } {
  const dataChunks: Uint8Array[] = [];
  let dataLength = 0;

  const rewriteTensor = (tensor: Uint8Array): Uint8Array => {
    const fields = readFields(tensor);
    const raw = fields.find((f) => f.number === 9);
    if (!raw?.payload || raw.payload.length < minBytes) return tensor;
    const padding = (64 - (dataLength % 64)) % 64;
    if (padding) {
      dataChunks.push(new Uint8Array(padding));
      dataLength += padding;
    }
    const offset = dataLength;
    dataChunks.push(raw.payload);
    dataLength += raw.payload.length;
    const chunks = fields.filter((f) => f.number !== 9).map((f) => f.bytes);
    chunks.push(...lengthDelimited(13, entry("location", location)));
    chunks.push(...lengthDelimited(13, entry("offset", String(offset))));
    chunks.push(...lengthDelimited(13, entry("length", String(raw.payload.length))));
    chunks.push(Uint8Array.from([14 * 8, 1]));
    return join(chunks);
  };

  const rewriteGraph = (graph: Uint8Array): Uint8Array =>
    join(readFields(graph).flatMap((f) => (f.number === 5 && f.payload ? lengthDelimited(5, rewriteTensor(f.payload)) : [f.bytes])));

  const rewritten = join(
    readFields(model).flatMap((f) => (f.number === 7 && f.payload ? lengthDelimited(7, rewriteGraph(f.payload)) : [f.bytes])),
  );
  return { model: rewritten, data: join(dataChunks) };
}

function stringField(number: number, text: string): Uint8Array[] {
  return lengthDelimited(number, encoder.encode(text));
}

function int64Initializer(name: string, dims: number[], values: bigint[]): Uint8Array {
  const raw = new Uint8Array(values.length * 8);
  values.forEach((v, i) => new DataView(raw.buffer).setBigInt64(i * 8, v, true));
  const chunks: Uint8Array[] = dims.map((d) => Uint8Array.from([1 * 8, ...varint(d)]));
  chunks.push(Uint8Array.from([2 * 8, 7]), ...stringField(8, name), ...lengthDelimited(9, raw));
  return join(chunks);
}

function node(opType: string, inputs: string[], output: string): Uint8Array {
  return join([...inputs.flatMap((i) => stringField(1, i)), ...stringField(2, output), ...stringField(3, `export_${output}`), ...stringField(4, opType)]);
}

/**
 * Reshape the decoder's signature into that of newer Hugging Face exports: no `position_ids`
 * input (positions are computed from `attention_mask` as cumsum - 1, for the new tokens) and an
 * int64 scalar `num_logits_to_keep` input, added unused when the graph lacks one.
 */
export function withExportSignature(model: Uint8Array): Uint8Array {
  const newNodes = [
    node("CumSum", ["attention_mask", "export_axis_one"], "export_mask_cumsum"),
    node("Sub", ["export_mask_cumsum", "export_one"], "export_all_positions"),
    node("Shape", ["input_ids"], "export_ids_shape"),
    node("Gather", ["export_ids_shape", "export_one"], "export_seq_length"),
    node("Neg", ["export_seq_length"], "export_negative_seq"),
    node("Unsqueeze", ["export_negative_seq", "export_axes_zero"], "export_slice_start"),
    node("Slice", ["export_all_positions", "export_slice_start", "export_slice_end", "export_axes_one"], "position_ids"),
  ];
  const initializers = [
    int64Initializer("export_axis_one", [], [1n]),
    int64Initializer("export_one", [], [1n]),
    int64Initializer("export_axes_zero", [1], [0n]),
    int64Initializer("export_axes_one", [1], [1n]),
    int64Initializer("export_slice_end", [1], [9223372036854775807n]),
  ];
  // ValueInfoProto { name, type { tensor_type { elem_type INT64, shape {} } } }
  const logitsInput = join([...stringField(1, "num_logits_to_keep"), ...lengthDelimited(2, join(lengthDelimited(1, join([Uint8Array.from([8, 7]), ...lengthDelimited(2, new Uint8Array(0))]))))]);

  const inputName = (f: Field) => new TextDecoder().decode(readFields(f.payload!).find((g) => g.number === 1)?.payload);
  const rewriteGraph = (graph: Uint8Array): Uint8Array => {
    const fields = readFields(graph);
    const hasLogitsInput = fields.some((f) => f.number === 11 && inputName(f) === "num_logits_to_keep");
    const graphFields = fields.filter((f) => f.number !== 11 || inputName(f) !== "position_ids");
    return join([
      ...newNodes.flatMap((n) => lengthDelimited(1, n)),
      ...graphFields.map((f) => f.bytes),
      ...initializers.flatMap((t) => lengthDelimited(5, t)),
      ...(hasLogitsInput ? [] : lengthDelimited(11, logitsInput)),
    ]);
  };
  return join(readFields(model).flatMap((f) => (f.number === 7 && f.payload ? lengthDelimited(7, rewriteGraph(f.payload)) : [f.bytes])));
}
