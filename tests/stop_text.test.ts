import { describe, expect, test } from "bun:test";
import { assertPromptFits, StopTextFilter } from "../core/stop_text.ts";

/** Feed pieces and collect what the filter lets through. */
function run(stopStrings: string[], pieces: string[]): { printed: string[]; stopped: boolean; rest: string } {
  const filter = new StopTextFilter(stopStrings);
  const printed: string[] = [];
  for (const piece of pieces) {
    const { text, stopped } = filter.push(piece);
    printed.push(text);
    if (stopped) return { printed, stopped, rest: filter.flush() };
  }
  return { printed, stopped: false, rest: filter.flush() };
}

describe("StopTextFilter", () => {
  test("passes text without stop strings", () => {
    expect(run([], ["a", "b<"])).toEqual({ printed: ["a", "b<"], stopped: false, rest: "" });
  });

  test("holds back a possible stop string start", () => {
    const result = run(["<|end|>"], ["Done.", "<|e", "nd|> trailing"]);
    expect(result.printed).toEqual(["Done.", "", ""]);
    expect(result.stopped).toBe(true);
  });

  test("releases held text that is not a stop string", () => {
    const result = run(["<|end|>"], ["a <|", "x"]);
    expect(result.printed).toEqual(["a ", "<|x"]);
    expect(result.stopped).toBe(false);
  });

  test("flushes held text at the end", () => {
    expect(run(["STOP"], ["go ST"]).rest).toBe("ST");
  });

  test("cuts at the earliest of several stop strings", () => {
    const result = run(["\nUser:", "###"], ["x ### y \nUser:"]);
    expect(result.printed).toEqual(["x "]);
  });
});

describe("assertPromptFits", () => {
  test("accepts a prompt and answer that fill the window", () => {
    expect(() => assertPromptFits(100, 28, 128)).not.toThrow();
  });

  test("rejects a prompt that would evict itself", () => {
    expect(() => assertPromptFits(101, 28, 128)).toThrow(
      "The request does not fit in the window: current value is 101 prompt tokens + 28 answer tokens > window 128; " +
        "shorten the question to fit 100 prompt tokens, lower --max-tokens, or raise --window",
    );
    expect(() => assertPromptFits(10, 200, 128)).toThrow("lower --max-tokens or raise --window");
  });
});
