/** Helpers for the tests that call the decoder runtime directly. */

import { createRequire } from "node:module";
import type { LayerKv } from "../../core/runtime.ts";

/** Return whether the optional onnxruntime-node package is installed. */
export function nativeInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve("onnxruntime-node");
    return true;
  } catch {
    return false;
  }
}

/** Return an empty past for `layers` layers: the input of a stream's first forward pass. */
export function emptyPast(layers: number): LayerKv[] {
  return Array.from({ length: layers }, () => ({ key: new Float32Array(0), value: new Float32Array(0) }));
}
