/**
 * Plot single-token latency against stream position from `sinkstream bench --json` records.
 *
 * Usage: bun bench/latency_plot.ts OUT.svg RECORD.json [RECORD.json …]
 * Each file contains one `bench` record; each record adds a p50 and a p99 line.
 */

import { readFile, writeFile } from "node:fs/promises";
import process from "node:process";
import type { BenchResult } from "../pipelines/bench.ts";
import { type ChartSeries, lineChart } from "./svg_chart.ts";

async function main(): Promise<void> {
  const [out, ...inputs] = process.argv.slice(2);
  if (!out || inputs.length === 0) {
    throw new Error("Missing arguments: give the output SVG path and at least one bench record file");
  }
  const series: ChartSeries[] = [];
  for (const input of inputs) {
    const text = (await readFile(input, "utf8")).trim().split("\n").pop() ?? "";
    const record = JSON.parse(text) as BenchResult;
    const name = `${record.model.split("/").pop()} ${record.backend}`;
    series.push({ label: `${name} p50`, points: record.latency.map((p) => [p.position, p.p50_ms]) });
    series.push({ label: `${name} p99`, points: record.latency.map((p) => [p.position, p.p99_ms]) });
  }
  const svg = lineChart({
    title: "Single-token latency against stream position",
    xLabel: "stream position (tokens)",
    yLabel: "latency (ms)",
    xLog: true,
    series,
  });
  await writeFile(out, svg);
}

if (import.meta.main) await main();
