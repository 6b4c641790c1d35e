/**
 * Self-generated corpus for the long perplexity runs: stories sampled from the stories model
 * itself at temperature 1 with fixed seeds, so the model can predict the text it is scored on.
 *
 * Token ids are cached as whitespace-separated text under `~/.cache/sinkstream/paper/`,
 * never in the repository. Each story is `[BOS, sampled tokens…]`, sampled until EOS (not
 * kept) or `MAX_STORY_TOKENS`, each story from an empty cache with seed = story index.
 */

import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { createSession, loadModel } from "../core/model.ts";
import { Sampler } from "../core/sampler.ts";

/** Directory of the cached corpus and the raw experiment results. */
export const PAPER_CACHE_DIR = join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "sinkstream", "paper");

/** Maximum story length in tokens, BOS excluded. A story that reaches it is cut there. */
const MAX_STORY_TOKENS = 480;

/** Path of the cached corpus for a model file name and a token count. */
export function corpusPath(modelPath: string, tokens: number): string {
  const name = modelPath.split("/").pop()!.replace(/\.gguf$/, "");
  return join(PAPER_CACHE_DIR, `corpus-${name}-${tokens}.ids`);
}

/**
 * Load the cached corpus of `tokens` ids, generating it first when it is missing.
 * Generation runs one decode step per token, so a large corpus takes minutes (an estimate: a
 * few hundred tokens per second on the stories model). `onProgress` receives the count so far.
 */
export async function loadOrGenerateCorpus(
  modelPath: string,
  tokens: number,
  onProgress?: (generated: number) => void,
): Promise<Int32Array> {
  const path = corpusPath(modelPath, tokens);
  if (existsSync(path)) {
    return Int32Array.from(readFileSync(path, "utf8").trim().split(/\s+/).map(Number));
  }

  const model = await loadModel(modelPath, { offline: true });
  const { bosId: bos, eosId: eos } = model.tokenizer;
  if (bos === undefined || eos === undefined) {
    throw new RangeError(`Cannot generate stories with ${modelPath}: the model has no BOS or EOS token; use a model with both`);
  }
  const { session } = await createSession(model, { sinks: 0, window: model.config.contextLength, chunkSize: 1 });
  const ids = new Int32Array(tokens);
  let length = 0;
  for (let story = 0; length < tokens; story++) {
    // generate() restores the empty cache afterwards, so every story starts fresh.
    const sampled = await session.generate([bos], {
      maxTokens: MAX_STORY_TOKENS,
      sampler: new Sampler({ temperature: 1, seed: story }),
      stopIds: [eos],
    });
    for (const id of [bos, ...sampled]) {
      if (length === tokens) break;
      ids[length++] = id;
    }
    onProgress?.(length);
  }
  await model.runtime.dispose();

  mkdirSync(PAPER_CACHE_DIR, { recursive: true });
  writeFileSync(path + ".tmp", ids.join(" ") + "\n");
  renameSync(path + ".tmp", path);
  return ids;
}

if (import.meta.main) {
  const modelPath = process.argv[2] ?? new URL("../../shared/models/stories260K.gguf", import.meta.url).pathname;
  const tokens = Number(process.argv[3] ?? 100_000);
  const started = performance.now();
  let lastReport = 0;
  const ids = await loadOrGenerateCorpus(modelPath, tokens, (generated) => {
    if (generated - lastReport >= 5000) {
      lastReport = generated;
      const seconds = (performance.now() - started) / 1000;
      console.error(`${generated} tokens, ${(generated / seconds).toFixed(0)} tok/s`);
    }
  });
  console.error(`corpus: ${ids.length} tokens in ${corpusPath(modelPath, tokens)}`);
}
