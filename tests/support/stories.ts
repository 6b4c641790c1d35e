/** Paths of the shared test models and logs, and a loader that builds each model once. */

import { createSession, type LoadedModel, loadModel } from "../../core/model.ts";
import type { StreamingSessionOptions } from "../../core/session.ts";

export const STORIES_V1 = new URL("../../../shared/models/stories260K.gguf", import.meta.url).pathname;
export const STORIES_V3 = new URL("../../../shared/models/stories260K-v3.gguf", import.meta.url).pathname;
export const LOGS_DIR = new URL("../../../shared/data/logs/", import.meta.url).pathname;
export const LOG_NAMES = ["Android", "Apache", "HDFS", "HealthApp", "Linux", "OpenSSH", "Zookeeper"].map(
  (name) => `${name}_2k.log`,
);

const loaded = new Map<string, Promise<LoadedModel>>();

/** Load a model once per test process and share its runtime with every test that loads it. */
export function loadShared(path: string = STORIES_V1): Promise<LoadedModel> {
  let model = loaded.get(path);
  if (!model) {
    model = loadModel(path, { offline: true });
    loaded.set(path, model);
  }
  return model;
}

/** Create a fresh streaming session over a shared model. */
export async function storiesSession(options: StreamingSessionOptions, path: string = STORIES_V1) {
  const model = await loadShared(path);
  const { session } = await createSession(model, options);
  return { model, session };
}
