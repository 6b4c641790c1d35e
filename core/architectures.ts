/**
 * Per-architecture facts for Hugging Face decoder checkpoints, in one table, and the
 * conversion of a `config.json` into the {@link LlamaConfig} the session and the KV kernel use.
 *
 * Sink streaming re-rotates cached keys to new positions, so it applies only to models whose
 * keys carry rotary position embeddings (RoPE) and nothing else about their position.
 * Architectures where that does not hold are listed in {@link REJECTED_ARCHITECTURES} with the
 * reason, and are rejected by name.
 *
 * RoPE facts follow `transformers` (`modeling_rope_utils.py`, v4.4x): Hugging Face checkpoints
 * rotate pairs (i, i + dim/2) (`rotate_half`), so the layout is `halves`.
 */

import type { LlamaConfig, RopeConfig } from "./types.ts";
import { ropeInvFreq } from "./types.ts";

/** Facts about one supported `model_type`. */
export interface ArchitectureFacts {
  /** Human-readable family, for `models inspect`. */
  family: string;
  /** Whether q/k/v projections have biases: always (qwen2), never, or per `attention_bias`. */
  attentionBias: "always" | "never" | "config";
  /** Config key of a native sliding attention window that caps the cache, if the family has one. */
  slidingWindowKey?: string;
  /** Config key that must be true for the sliding window to apply (qwen2's `use_sliding_window`). */
  slidingWindowSwitch?: string;
  /** `rope_scaling` types this module reproduces exactly (besides none). */
  ropeScaling: readonly string[];
}

/** Supported `model_type` values of `config.json`. */
export const ARCHITECTURES: Readonly<Record<string, ArchitectureFacts>> = {
  llama: { family: "Llama (SmolLM2, Llama 3.x, TinyLlama)", attentionBias: "config", ropeScaling: ["linear", "llama3", "dynamic"] },
  qwen2: {
    family: "Qwen2 / Qwen2.5",
    attentionBias: "always",
    slidingWindowKey: "sliding_window",
    slidingWindowSwitch: "use_sliding_window",
    ropeScaling: ["linear", "dynamic"],
  },
  mistral: { family: "Mistral", attentionBias: "never", slidingWindowKey: "sliding_window", ropeScaling: ["linear", "dynamic"] },
  phi3: { family: "Phi-3 / Phi-3.5 / Phi-4-mini", attentionBias: "never", slidingWindowKey: "sliding_window", ropeScaling: ["longrope", "su", "linear"] },
};

/** `model_type` values rejected by name, with the reason sink streaming cannot shift their cache. */
export const REJECTED_ARCHITECTURES: Readonly<Record<string, string>> = {
  gpt2: "absolute position embeddings (keys cannot be moved to new positions)",
  gpt_neo: "absolute position embeddings (keys cannot be moved to new positions)",
  gpt_bigcode: "absolute position embeddings (keys cannot be moved to new positions)",
  opt: "absolute position embeddings (keys cannot be moved to new positions)",
  bloom: "ALiBi attention biases, which this runtime does not implement",
  deepseek_v2: "multi-head latent attention (the cache holds compressed latents, not rotated keys)",
  deepseek_v3: "multi-head latent attention (the cache holds compressed latents, not rotated keys)",
  qwen2_vl: "multimodal rotary embeddings (three position streams per token)",
  qwen2_5_vl: "multimodal rotary embeddings (three position streams per token)",
};

/** Result of {@link configFromHf}. */
export interface HfModelFacts {
  config: LlamaConfig;
  /** Whether q/k/v have biases. */
  attentionBias: boolean;
  /** Native sliding attention window: the cache (sinks + window) must not exceed it. */
  attentionWindow?: number;
  /** Notes on choices made for the RoPE scaling, for `models inspect` and warnings. */
  notes: string[];
}

/** Options of {@link configFromHf}. */
export interface ConfigFromHfOptions {
  /**
   * Tokens the cache will hold. Phi-3's longrope picks its short or long factors by this
   * length, and dynamic NTK scaling only equals the unscaled RoPE up to the context length.
   * @default min(1024, the model's context length), the session's default cache
   */
  cacheTokens?: number;
}

type Json = Record<string, unknown>;

function numberField(config: Json, key: string, fallback?: number): number {
  const value = config[key];
  if (typeof value === "number" && Number.isFinite(value)) return value;
  if ((value === undefined || value === null) && fallback !== undefined) return fallback;
  throw new RangeError(`Invalid config.json: ${key} must be a number, current value is ${JSON.stringify(value)}`);
}

function numberList(scaling: Json, key: string, length: number): number[] {
  const value = scaling[key];
  if (!Array.isArray(value) || value.length !== length || value.some((v) => typeof v !== "number")) {
    throw new RangeError(
      `Invalid config.json: rope_scaling.${key} must be ${length} numbers (one per rotary pair), current value is ${
        JSON.stringify(value)?.slice(0, 80)
      }`,
    );
  }
  return value as number[];
}

/** Return the facts of a `model_type`, or throw naming why it is rejected or unknown. */
export function architectureFacts(modelType: unknown): ArchitectureFacts {
  if (typeof modelType !== "string") {
    throw new RangeError(`Invalid config.json: model_type must be a string, current value is ${JSON.stringify(modelType)}`);
  }
  const facts = ARCHITECTURES[modelType];
  if (facts) return facts;
  const reason = REJECTED_ARCHITECTURES[modelType];
  const supported = Object.keys(ARCHITECTURES).join(", ");
  if (reason) {
    throw new RangeError(`Unsupported architecture ${modelType}: it uses ${reason}, so sink streaming cannot apply; supported: ${supported}`);
  }
  throw new RangeError(`Unsupported architecture ${modelType}: supported model_type values are ${supported}`);
}

/** Convert a Hugging Face `config.json` object into sinkstream's model facts. */
export function configFromHf(hf: Json, options: ConfigFromHfOptions = {}): HfModelFacts {
  const modelType = hf.model_type;
  const facts = architectureFacts(modelType);
  const nEmbd = numberField(hf, "hidden_size");
  const nHeads = numberField(hf, "num_attention_heads");
  const nKvHeads = numberField(hf, "num_key_value_heads", nHeads);
  const headDim = numberField(hf, "head_dim", nEmbd / nHeads);
  if (!Number.isInteger(headDim) || nHeads % nKvHeads !== 0) {
    throw new RangeError(
      `Invalid config.json: head_dim ${headDim} must be whole and num_attention_heads ${nHeads} a multiple of ` +
        `num_key_value_heads ${nKvHeads}`,
    );
  }
  const contextLength = numberField(hf, "max_position_embeddings");
  const notes: string[] = [];
  const rope = ropeFromHf(hf, facts, headDim, contextLength, options.cacheTokens ?? Math.min(1024, contextLength), notes);

  const config: LlamaConfig = {
    architecture: modelType as string,
    nLayers: numberField(hf, "num_hidden_layers"),
    nEmbd,
    nHeads,
    nKvHeads,
    headDim,
    nFf: numberField(hf, "intermediate_size"),
    vocabSize: numberField(hf, "vocab_size"),
    contextLength,
    rmsNormEps: numberField(hf, "rms_norm_eps", 1e-6),
    rope,
  };

  let attentionWindow: number | undefined;
  if (facts.slidingWindowKey) {
    const enabled = facts.slidingWindowSwitch === undefined || hf[facts.slidingWindowSwitch] === true;
    const value = hf[facts.slidingWindowKey];
    if (enabled && typeof value === "number" && value > 0 && value < contextLength) attentionWindow = value;
  }
  const attentionBias = facts.attentionBias === "always" || (facts.attentionBias === "config" && hf.attention_bias === true);
  return { config, attentionBias, attentionWindow, notes };
}

/** Build the RoPE settings, applying the declared scaling to the inverse frequencies. */
function ropeFromHf(
  hf: Json,
  facts: ArchitectureFacts,
  headDim: number,
  contextLength: number,
  cacheTokens: number,
  notes: string[],
): RopeConfig {
  const partial = numberField(hf, "partial_rotary_factor", 1);
  const dim = Math.floor(headDim * partial);
  if (dim < 2 || dim % 2 !== 0) {
    throw new RangeError(`Invalid config.json: the rotary dim head_dim * partial_rotary_factor = ${dim} must be even and at least 2`);
  }
  const base = numberField(hf, "rope_theta", 10000);
  const invFreq = ropeInvFreq(dim, base);
  const rope: RopeConfig = { dim, base, layout: "halves", invFreq };

  const scaling = hf.rope_scaling as Json | null | undefined;
  if (scaling === null || scaling === undefined) return rope;
  const type = String(scaling.rope_type ?? scaling.type ?? "default");
  if (type === "default") return rope;
  if (!facts.ropeScaling.includes(type)) {
    throw new RangeError(
      `Unsupported RoPE scaling ${type} for ${String(hf.model_type)}: sinkstream reproduces ${facts.ropeScaling.join(", ")}`,
    );
  }

  if (type === "linear") {
    const factor = numberField(scaling, "factor");
    for (let i = 0; i < invFreq.length; i++) invFreq[i] /= factor;
  } else if (type === "dynamic") {
    // Dynamic NTK scaling changes the base only for sequences longer than the context length.
    if (cacheTokens > contextLength) {
      throw new RangeError(
        `Unsupported cache size ${cacheTokens} with dynamic RoPE scaling: positions past max_position_embeddings ` +
          `${contextLength} change the frequencies; use sinks + window ≤ ${contextLength}`,
      );
    }
    notes.push(`dynamic RoPE scaling equals plain RoPE for caches up to ${contextLength} tokens`);
  } else if (type === "llama3") {
    applyLlama3Scaling(invFreq, scaling);
  } else {
    // longrope / su (Phi-3): one factor per pair divides the frequency. The short factors
    // apply up to original_max_position_embeddings, the long ones beyond.
    // NOTE: the choice is made for `cacheTokens` at load time; createSession does not check
    // that the session's sinks + window stay on the same side of that limit.
    const original = numberField(scaling, "original_max_position_embeddings", numberField(hf, "original_max_position_embeddings", contextLength));
    const useLong = cacheTokens > original;
    const factors = numberList(scaling, useLong ? "long_factor" : "short_factor", dim / 2);
    for (let i = 0; i < invFreq.length; i++) invFreq[i] /= factors[i];
    notes.push(
      `${type} RoPE: using the ${useLong ? "long" : "short"} factors because the cache holds ${cacheTokens} tokens ` +
        `(${useLong ? ">" : "≤"} original_max_position_embeddings ${original})`,
    );
  }
  return rope;
}

/**
 * Apply Llama 3.1's frequency-dependent scaling: wavelengths shorter than
 * `original / high_freq_factor` keep their frequency, ones longer than
 * `original / low_freq_factor` are divided by `factor`, and the band between is interpolated.
 */
function applyLlama3Scaling(invFreq: Float64Array, scaling: Json): void {
  const factor = numberField(scaling, "factor");
  const low = numberField(scaling, "low_freq_factor");
  const high = numberField(scaling, "high_freq_factor");
  const original = numberField(scaling, "original_max_position_embeddings");
  const lowFreqWavelength = original / low;
  const highFreqWavelength = original / high;
  for (let i = 0; i < invFreq.length; i++) {
    const wavelength = (2 * Math.PI) / invFreq[i];
    if (wavelength < highFreqWavelength) continue;
    if (wavelength > lowFreqWavelength) {
      invFreq[i] /= factor;
      continue;
    }
    const smooth = (original / wavelength - low) / (high - low);
    invFreq[i] = (1 - smooth) * (invFreq[i] / factor) + smooth * invFreq[i];
  }
}
