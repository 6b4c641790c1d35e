// Generate tests/fixtures/llamacpp_stories260K_quant.json: llama.cpp's greedy continuation
// of a prompt for the stories260K model, written as Q8_0 and as Q4_0 GGUF files by
// sinkstream's own writer (core/gguf_writer.ts). The fixture records the SHA-256 of each
// file, so the test can check that it writes the very bytes llama.cpp read.
//
// Needs node-llama-cpp 3.21.1 (llama.cpp tag v0.4.0 inside), installed outside the repo:
//   mkdir -p /work/scratch/llamacpp && cd /work/scratch/llamacpp && npm i -E node-llama-cpp@3.21.1
// and Bun from the project's devDependencies, which runs the TypeScript writer. Run with
// Node from the repository root:
//   LLAMACPP_DIR=/work/scratch/llamacpp node scripts/gen_llamacpp_quant_fixture.mjs
// The tests only read the JSON it writes.

import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const llamacppDir = process.env.LLAMACPP_DIR ?? "/work/scratch/llamacpp";
const bunPath = resolve("node_modules/.bin/bun");
const sourcePath = resolve("../shared/models/stories260K.gguf");
const outputPath = resolve("tests/fixtures/llamacpp_stories260K_quant.json");
const TENSOR_TYPES = ["Q8_0", "Q4_0"];
const PROMPT = "Once upon a time";
const CONTINUATION_TOKENS = 32;

// Write the quantized files with the same call and options as tests/quantized_gguf.test.ts.
const dir = mkdtempSync(join(tmpdir(), "sinkstream-quant-"));
const fileName = (type) => `stories260K-${type}.gguf`;
const writerScript = `
  import { loadLlamaGguf } from ${JSON.stringify(resolve("core/llama_gguf.ts"))};
  import { writeLlamaGgufFile } from ${JSON.stringify(resolve("core/gguf_writer.ts"))};
  const { weights, tokenizer } = await loadLlamaGguf(${JSON.stringify(sourcePath)});
  for (const type of ${JSON.stringify(TENSOR_TYPES)}) {
    await writeLlamaGgufFile(${JSON.stringify(dir)} + "/stories260K-" + type + ".gguf", weights, tokenizer.data, { tensorType: type });
  }
`;
execFileSync(bunPath, ["-e", writerScript], { stdio: "inherit" });

const { getLlama } = await import(
  pathToFileURL(join(llamacppDir, "node_modules/node-llama-cpp/dist/index.js")).href
);
const llama = await getLlama({ gpu: false, build: "never" });

const files = [];
for (const type of TENSOR_TYPES) {
  const modelPath = join(dir, fileName(type));
  const bytes = readFileSync(modelPath);
  const model = await llama.loadModel({ modelPath });
  const native = model._model; // the addon: tokenize(text, parseSpecial) with add_special = false
  const tokenize = (text) => Array.from(native.tokenize(text, false));

  // Greedy continuation: BOS + prompt, temperature 0, no repeat penalty.
  const context = await model.createContext({ contextSize: 512, batchSize: 512 });
  const sequence = context.getSequence();
  const promptIds = [model.tokens.bos, ...tokenize(PROMPT)];
  const continuation = [];
  for await (const token of sequence.evaluate(promptIds, { temperature: 0 })) {
    continuation.push(token);
    if (continuation.length >= CONTINUATION_TOKENS) break;
  }
  files.push({
    tensorType: type,
    file: fileName(type),
    bytes: bytes.length,
    sha256: createHash("sha256").update(bytes).digest("hex"),
    promptIds,
    continuation,
    continuationText: native.detokenize(Uint32Array.from(continuation), false),
  });
  await context.dispose();
  await model.dispose();
}
rmSync(dir, { recursive: true, force: true });

const fixture = {
  generator: "scripts/gen_llamacpp_quant_fixture.mjs",
  llamaCpp: "node-llama-cpp 3.21.1 (llama.cpp tag v0.4.0), CPU build",
  source: "stories260K.gguf (all tensors F32)",
  writerCall: 'writeLlamaGgufFile(path, weights, tokenizer.data, { tensorType }), GGUF version 3',
  prompt: PROMPT,
  files,
};
writeFileSync(outputPath, JSON.stringify(fixture, null, 1) + "\n");
console.log(`wrote ${files.length} greedy continuations to ${outputPath}`);
