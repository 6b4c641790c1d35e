/**
 * Types shared by the model loaders, the reference forward pass, the ONNX graph builder
 * and the streaming session.
 *
 * Tensor dims are listed outermost first (numpy order). A linear layer's weight is
 * `[out, in]` and computes `y = W x`, which is how GGUF stores it (ggml's `ne` lists the
 * same dims innermost first).
 */

/** A dense float32 tensor in row-major order. */
export interface Tensor {
  dims: number[];
  data: Float32Array;
  /**
   * The ggml Q4_0 blocks that `data` was dequantized from, when the GGUF file stored the tensor
   * as Q4_0: each row of `dims[last]` values is a run of 18-byte blocks of 32 values (f16 scale,
   * then 16 bytes of nibbles). The ONNX graph builder runs such weights with `MatMulNBits`.
   */
  q4_0?: Uint8Array;
}

/** Rotary position embedding settings of a model. */
export interface RopeConfig {
  /** Number of leading dims of each head that are rotated (even, at most the head size). */
  dim: number;
  /** Base theta of the inverse frequencies. */
  base: number;
  /**
   * Which elements form a rotated pair: `adjacent` rotates (2i, 2i+1), the layout of Meta's
   * checkpoints and of every llama GGUF file (llama.cpp's normal rope mode); `halves` rotates
   * (i, i + dim/2), the `rotate_half` layout of Hugging Face checkpoints (llama.cpp's NeoX mode).
   */
  layout: "adjacent" | "halves";
  /**
   * Inverse frequency of each pair, `dim / 2` values, with any frequency scaling the model
   * declares already applied. The graph, the kernel and the reference all read these values,
   * so they rotate by the same angles.
   */
  invFreq: Float64Array;
}

/** Hyperparameters of a llama-architecture decoder. */
export interface LlamaConfig {
  architecture: string;
  nLayers: number;
  nEmbd: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  nFf: number;
  vocabSize: number;
  /** Context length the model was trained with. */
  contextLength: number;
  rmsNormEps: number;
  rope: RopeConfig;
}

/** Weights of one transformer block. */
export interface LlamaLayerWeights {
  attnNorm: Tensor; // [nEmbd]
  wq: Tensor; // [nHeads * headDim, nEmbd]
  wk: Tensor; // [nKvHeads * headDim, nEmbd]
  wv: Tensor; // [nKvHeads * headDim, nEmbd]
  wo: Tensor; // [nEmbd, nHeads * headDim]
  bq?: Tensor; // [nHeads * headDim]
  bk?: Tensor; // [nKvHeads * headDim]
  bv?: Tensor; // [nKvHeads * headDim]
  ffnNorm: Tensor; // [nEmbd]
  wGate: Tensor; // [nFf, nEmbd]
  wUp: Tensor; // [nFf, nEmbd]
  wDown: Tensor; // [nEmbd, nFf]
}

/** All weights of a llama-architecture decoder, dequantized to float32. */
export interface LlamaWeights {
  config: LlamaConfig;
  tokenEmbedding: Tensor; // [vocabSize, nEmbd]
  layers: LlamaLayerWeights[];
  outputNorm: Tensor; // [nEmbd]
  output: Tensor; // [vocabSize, nEmbd]
}

/** Compute the unscaled RoPE inverse frequencies `base^(-2i/dim)` for i < dim/2. */
export function ropeInvFreq(dim: number, base: number): Float64Array {
  const invFreq = new Float64Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) invFreq[i] = Math.pow(base, (-2 * i) / dim);
  return invFreq;
}
