// Generate tests/fixtures/llamacpp_stories260K.json: llama.cpp's tokenization and
// detokenization of a varied set of strings, and its greedy continuation of a prompt,
// for the stories260K v3 model.
//
// Needs node-llama-cpp 3.21.1 (llama.cpp tag v0.4.0 inside), installed outside the repo:
//   mkdir -p /work/scratch/llamacpp && cd /work/scratch/llamacpp && npm i -E node-llama-cpp@3.21.1
// Run with Node from the repository root:
//   LLAMACPP_DIR=/work/scratch/llamacpp node scripts/gen_llamacpp_fixture.mjs
// The tests only read the JSON it writes.

import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const llamacppDir = process.env.LLAMACPP_DIR ?? "/work/scratch/llamacpp";
const modelPath = resolve("../shared/models/stories260K-v3.gguf");
const logsDir = resolve("../shared/data/logs");
const outputPath = resolve("tests/fixtures/llamacpp_stories260K.json");
const PROMPT = "Once upon a time";
const CONTINUATION_TOKENS = 32;
const LINES_PER_LOG = 6;

const { getLlama } = await import(
  pathToFileURL(join(llamacppDir, "node_modules/node-llama-cpp/dist/index.js")).href
);

const texts = [
  "",
  " ",
  "  ",
  "   ",
  "a",
  "Hello",
  "Hello world",
  " Hello world",
  "Hello world ",
  "Hello  world",
  "  leading two",
  "trailing two  ",
  "\n",
  "line one\nline two",
  "line one\r\nline two\r\n",
  "\t tab\tand space",
  "Once upon a time",
  "Once upon a time, there was a little girl named Lily.",
  "The cat sat on the mat. The dog ran!",
  "<s> and </s> and <unk> as plain text",
  "<0x41> is not a byte here",
  "\u2581already escaped\u2581",
  "café naïve résumé",
  "Grüße aus München",
  "日本語のテキスト",
  "中文 文本",
  "한국어",
  "emoji 😀 and 👩‍💻 and 🇫🇷",
  "math ∑ ∫ π ≈ 3.14159",
  "numbers 0123456789 and 3.5e-10",
  "punctuation !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
  "snake_case_identifier and camelCaseIdentifier",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  "\u0000nul and \u007fdel",
];

// Lines from each real log: with the CRLF removed (as a line reader yields them) and with it kept.
for (const file of readdirSync(logsDir).filter((f) => f.endsWith(".log")).sort()) {
  const lines = readFileSync(join(logsDir, file), "utf8").split("\r\n").filter((l) => l.length > 0);
  const step = Math.floor(lines.length / LINES_PER_LOG);
  for (let i = 0; i < LINES_PER_LOG; i++) texts.push(lines[i * step]);
  texts.push(lines[1] + "\r\n");
}

const llama = await getLlama({ gpu: false, build: "never" });
const model = await llama.loadModel({ modelPath });
const native = model._model; // the addon: tokenize(text, parseSpecial) with add_special = false

const tokenize = (text) => Array.from(native.tokenize(text, false));
const detokenize = (ids) => native.detokenize(Uint32Array.from(ids), false);

const cases = texts.map((text) => {
  const ids = tokenize(text);
  return {
    text,
    ids,
    detokenized: detokenize(ids),
    detokenizedWithBos: detokenize([model.tokens.bos, ...ids]),
  };
});

// Detokenization of hand-picked sequences, including a character split across byte tokens.
const detokenizeCases = [
  [1],
  [2],
  [0],
  [1, 2],
  tokenize(" leading space"),
  [...tokenize("Hello"), 2, ...tokenize("world")],
  tokenize("😀").slice(0, 2),
].map((ids) => ({ ids, text: detokenize(ids) }));

// Tokenization with parse_special = true, as chat templates use it.
const parseSpecialCases = [
  "<s>Hello",
  "Hello</s>",
  "<s> Hello </s><s>world",
  "<unk>x",
  "a<s>b",
  "</s>",
].map((text) => ({ text, ids: Array.from(native.tokenize(text, true)) }));

// Greedy continuation: BOS + prompt, temperature 0, no repeat penalty.
const context = await model.createContext({ contextSize: 512, batchSize: 512 });
const sequence = context.getSequence();
const promptIds = [model.tokens.bos, ...tokenize(PROMPT)];
const continuation = [];
for await (const token of sequence.evaluate(promptIds, { temperature: 0 })) {
  continuation.push(token);
  if (continuation.length >= CONTINUATION_TOKENS) break;
}
await context.dispose();

const fixture = {
  generator: "scripts/gen_llamacpp_fixture.mjs",
  llamaCpp: "node-llama-cpp 3.21.1 (llama.cpp tag v0.4.0), CPU build",
  model: "stories260K-v3.gguf",
  tokenizeCall: "llama_tokenize(add_special=false, parse_special=false)",
  detokenizeCall: "llama_detokenize(remove_special=false, unparse_special=false)",
  bos: model.tokens.bos,
  eos: model.tokens.eos,
  cases,
  detokenizeCases,
  parseSpecialCases,
  greedy: {
    prompt: PROMPT,
    promptIds,
    continuation,
    continuationText: detokenize(continuation),
  },
};
writeFileSync(outputPath, JSON.stringify(fixture, null, 1) + "\n");
await model.dispose();
console.log(`wrote ${cases.length} cases and ${continuation.length} continuation tokens to ${outputPath}`);
