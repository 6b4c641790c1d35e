/** Checks `sinkstream bench` end to end on the stories model, under Bun and Deno. */

import { describe, expect, test } from "bun:test";
import { runCli } from "./support/cli.ts";
import { STORIES_V1 } from "./support/stories.ts";

const TEST_TIMEOUT_MS = 90_000;
/** Float32 bytes of one cached token's keys and values in the stories model: K and V × 5 layers × 4 heads × 8 dims × 4. */
const STORIES_ENTRY_BYTES = 2 * 5 * 4 * 8 * 4;

const QUICK_ARGS = [
  "bench",
  "--model",
  STORIES_V1,
  "--positions",
  "600",
  "--steps",
  "5",
  "--chunks",
  "1,8",
  "--ingest-tokens",
  "16",
  "--decode-tokens",
  "4",
  "--recompute-steps",
  "1",
];

describe("sinkstream bench", () => {
  for (const runtime of ["bun", "deno"]) {
    test(`json record under ${runtime}`, async () => {
      const run = await runCli(runtime, [...QUICK_ARGS, "--json"]);
      expect(run.stderr).toBe("");
      expect(run.code).toBe(0);
      const record = JSON.parse(run.stdout.trim());
      expect(record.type).toBe("bench");
      expect(record.backend).toBe("wasm");
      expect(record.sinks + record.window).toBe(512);
      expect(Object.keys(record.ingest_tok_s)).toEqual(["1", "8"]);
      expect(record.ingest_tok_s["8"]).toBeGreaterThan(0);
      expect(record.decode_tok_s).toBeGreaterThan(0);
      expect(record.latency.length).toBe(1);
      expect(record.latency[0].position).toBe(600);
      expect(record.latency[0].p99_ms).toBeGreaterThanOrEqual(record.latency[0].p50_ms);
      expect(record.first_token_ms).toBeGreaterThan(record.load_ms);
      // Every timed step runs on a full cache. onnxruntime-web copies the 511 past entries into
      // its heap and the new entry comes back; the kernel's own rewrites add less than that.
      expect(record.handoff_bytes_per_token).toBeGreaterThanOrEqual((511 + 1) * STORIES_ENTRY_BYTES);
      expect(record.handoff_bytes_per_token).toBeLessThan(2 * (511 + 1) * STORIES_ENTRY_BYTES);
      expect(record.recompute_step_ms).toBeGreaterThan(0);
      expect(record.peak_rss_bytes).toBeGreaterThan(0);
    }, TEST_TIMEOUT_MS);
  }

  test("table names each figure", async () => {
    const run = await runCli("bun", [...QUICK_ARGS, "--backend", "native"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("backend / threads                 native / 1");
    expect(run.stdout).toMatch(/prefill, chunk 8 +\d+(\.\d)? tok\/s/);
    expect(run.stdout).toMatch(/latency at position 600 +p50 [\d.]+ ms, p99 [\d.]+ ms/);
    expect(run.stdout).toMatch(/recompute step +[\d.]+ ms \([\d.]+× the sink step's p50\)/);
  }, TEST_TIMEOUT_MS);

  test("native steady steps copy a few entries", async () => {
    // Cache 4+124 against a 512-position graph leaves room for positions past the capacity, so
    // a single-token step rotates only the sinks and moves one row instead of rebuilding the past.
    const args = [...QUICK_ARGS, "--backend", "native", "--window", "124", "--steps", "20", "--recompute-steps", "0", "--json"];
    const run = await runCli("bun", args);
    expect(run.code).toBe(0);
    const record = JSON.parse(run.stdout.trim());
    expect(record.handoff_bytes_per_token).toBeGreaterThanOrEqual(STORIES_ENTRY_BYTES);
    expect(record.handoff_bytes_per_token).toBeLessThan(0.25 * 128 * STORIES_ENTRY_BYTES);
  }, TEST_TIMEOUT_MS);

  test("positions before a full cache are rejected", async () => {
    const run = await runCli("bun", ["bench", "--model", STORIES_V1, "--positions", "100"]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(
      "Invalid positions: current first value is 100; measure at or after the cache is full (512)",
    );
  }, TEST_TIMEOUT_MS);
});
