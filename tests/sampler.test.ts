import { describe, expect, test } from "bun:test";
import { argmax, logSoftmaxAt, Sampler } from "../core/sampler.ts";
import { renderPrompt } from "../core/prompt.ts";

describe("Sampler", () => {
  test("temperature 0 picks the first maximum", () => {
    const sampler = new Sampler({ temperature: 0 });
    expect(sampler.sample([0.1, 3, -1, 3])).toBe(1);
  });

  test("same seed repeats the same draws", () => {
    const logits = [1, 2, 3, 2, 1];
    const a = new Sampler({ temperature: 1, seed: 42 });
    const b = new Sampler({ temperature: 1, seed: 42 });
    const drawsA = Array.from({ length: 50 }, () => a.sample(logits));
    const drawsB = Array.from({ length: 50 }, () => b.sample(logits));
    expect(drawsA).toEqual(drawsB);
    expect(new Set(drawsA).size).toBeGreaterThan(1);
  });

  test("draws follow the softmax distribution", () => {
    const sampler = new Sampler({ temperature: 1, seed: 7 });
    const logits = [0, Math.log(3)];
    let ones = 0;
    for (let i = 0; i < 20_000; i++) ones += sampler.sample(logits);
    expect(ones / 20_000).toBeCloseTo(0.75, 1);
  });

  test("rejects a negative temperature", () => {
    expect(() => new Sampler({ temperature: -1 })).toThrow(
      "Invalid temperature: current value is -1; it must be a number ≥ 0 (0 = greedy)",
    );
  });
});

describe("logSoftmaxAt", () => {
  test("matches the direct formula", () => {
    const logits = [1, 2, 3];
    const expected = Math.log(Math.exp(2) / (Math.exp(1) + Math.exp(2) + Math.exp(3)));
    expect(logSoftmaxAt(logits, 1)).toBeCloseTo(expected, 12);
    expect(argmax(logits)).toBe(2);
  });
});

describe("renderPrompt", () => {
  test("plain framing without a template", () => {
    expect(renderPrompt({ kind: "answer", question: "Which host failed?" }, undefined)).toBe(
      "\n\nQuestion about the text above: Which host failed?\nAnswer:",
    );
  });

  test("chat template renders one user turn and drops the leading BOS", () => {
    const template =
      "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}" +
      "{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
    const text = renderPrompt({ kind: "summary" }, template, { bos: "<s>", eos: "</s>" });
    expect(text.startsWith("\n<|user|>\nSummarize the text above")).toBe(true);
    expect(text.endsWith("</s>\n<|assistant|>\n")).toBe(true);
    expect(text).not.toContain("<s>");
  });
});
