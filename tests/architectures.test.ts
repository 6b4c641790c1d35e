import { describe, expect, test } from "bun:test";
import { configFromHf } from "../core/architectures.ts";
import { ropeInvFreq } from "../core/types.ts";

/** A SmolLM2-135M-shaped llama config.json. */
const SMOLLM2 = {
  model_type: "llama",
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  max_position_embeddings: 8192,
  rms_norm_eps: 1e-5,
  rope_theta: 100000,
  rope_scaling: null,
  vocab_size: 49152,
};

describe("configFromHf", () => {
  test("reads a llama config", () => {
    const { config, attentionBias, attentionWindow } = configFromHf(SMOLLM2);
    expect(config.headDim).toBe(64);
    expect(config.nKvHeads).toBe(3);
    expect(config.rope.layout).toBe("halves");
    expect(Array.from(config.rope.invFreq)).toEqual(Array.from(ropeInvFreq(64, 100000)));
    expect(attentionBias).toBe(false);
    expect(attentionWindow).toBeUndefined();
  });

  test("applies llama3 scaling by wavelength band", () => {
    const scaling = { rope_type: "llama3", factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    const plain = ropeInvFreq(64, 500000);
    const { config } = configFromHf({ ...SMOLLM2, rope_theta: 500000, rope_scaling: scaling });
    const scaled = config.rope.invFreq;
    for (let i = 0; i < plain.length; i++) {
      const wavelength = (2 * Math.PI) / plain[i];
      if (wavelength < 8192 / 4) expect(scaled[i]).toBe(plain[i]);
      else if (wavelength > 8192) expect(scaled[i]).toBeCloseTo(plain[i] / 32, 15);
      else {
        expect(scaled[i]).toBeLessThan(plain[i]);
        expect(scaled[i]).toBeGreaterThan(plain[i] / 32);
      }
    }
    expect(scaled[0]).toBe(plain[0]);
    expect(scaled[31]).toBeCloseTo(plain[31] / 32, 15);
  });

  test("picks phi3 longrope factors by cache size", () => {
    const phi3 = {
      ...SMOLLM2,
      model_type: "phi3",
      num_attention_heads: 4,
      num_key_value_heads: 4,
      hidden_size: 32,
      max_position_embeddings: 131072,
      original_max_position_embeddings: 4096,
      rope_theta: 10000,
      rope_scaling: { type: "longrope", short_factor: [1, 2, 2, 2], long_factor: [3, 4, 4, 4] },
    };
    const plain = ropeInvFreq(8, 10000);
    const short = configFromHf(phi3);
    expect(short.config.rope.invFreq[1]).toBeCloseTo(plain[1] / 2, 15);
    expect(short.notes[0]).toContain("using the short factors because the cache holds 1024 tokens");
    const long = configFromHf(phi3, { cacheTokens: 8192 });
    expect(long.config.rope.invFreq[1]).toBeCloseTo(plain[1] / 4, 15);
  });

  test("reads biases and sliding windows per architecture", () => {
    expect(configFromHf({ ...SMOLLM2, model_type: "qwen2" }).attentionBias).toBe(true);
    expect(configFromHf({ ...SMOLLM2, model_type: "qwen2", sliding_window: 4096, use_sliding_window: true }).attentionWindow).toBe(4096);
    expect(configFromHf({ ...SMOLLM2, model_type: "mistral", sliding_window: 4096 }).attentionWindow).toBe(4096);
    expect(configFromHf({ ...SMOLLM2, attention_bias: true }).attentionBias).toBe(true);
  });

  test("rejects architectures by name with the reason", () => {
    expect(() => configFromHf({ ...SMOLLM2, model_type: "gpt2" })).toThrow(
      "Unsupported architecture gpt2: it uses absolute position embeddings (keys cannot be moved to new positions), " +
        "so sink streaming cannot apply; supported: llama, qwen2, mistral, phi3",
    );
    expect(() => configFromHf({ ...SMOLLM2, model_type: "deepseek_v3" })).toThrow("multi-head latent attention");
    expect(() => configFromHf({ ...SMOLLM2, model_type: "qwen2_vl" })).toThrow("multimodal rotary embeddings");
    expect(() => configFromHf({ ...SMOLLM2, model_type: "gemma" })).toThrow(
      "Unsupported architecture gemma: supported model_type values are llama, qwen2, mistral, phi3",
    );
  });

  test("rejects RoPE scalings it cannot reproduce", () => {
    expect(() => configFromHf({ ...SMOLLM2, rope_scaling: { rope_type: "yarn", factor: 4 } })).toThrow(
      "Unsupported RoPE scaling yarn for llama: sinkstream reproduces linear, llama3, dynamic",
    );
    expect(() => configFromHf({ ...SMOLLM2, rope_scaling: { type: "dynamic", factor: 2 } }, { cacheTokens: 9000 })).toThrow(
      "Unsupported cache size 9000 with dynamic RoPE scaling",
    );
  });
});
