/**
 * Turn the run files of `bench/paper.ts` (in `docs/paper/data/`) into the SVG plots under
 * `docs/paper/` and the tables of `docs/paper.md`, written between its `<!-- report:KEY -->`
 * markers and printed on standard output.
 *
 *   npx bun bench/paper_report.ts > /tmp/tables.md
 */

import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import type { PolicySizes } from "../core/policies.ts";
import type { EvalSummary } from "../pipelines/eval.ts";
import { cacheLabel, DATA_DIR } from "./paper.ts";
import { type ChartSeries, lineChart } from "./svg_chart.ts";

const PLOT_DIR = new URL("../docs/paper/", import.meta.url).pathname;
/** Points per decade of positions in the perplexity curve. */
const BINS_PER_DECADE = 10;
const MIB = 2 ** 20;

interface PerplexityRun {
  name: string;
  sizes: PolicySizes;
  blockTokens: number;
  /** Whether the stories' BOS separators were removed from the stream. */
  dropBos?: boolean;
  /** Whether each checkpoint forced a full garbage collection before sampling RSS. */
  collectGarbage?: boolean;
  blockMeanNll: number[];
  checkpoints: { tokens: number; seconds: number; rssBytes: number; peakRssBytes: number }[];
  rssBeforeBytes: number;
  summary: EvalSummary;
  finalPeakRssBytes: number;
}

interface LatencyRun {
  measured: number;
  rows: { cache: number; sinkMs: { median: number; mean: number }; recomputeMs: { median: number; mean: number } }[];
}

/** Legend label of a run: policy, cache and chunk size. */
function labelOf(run: PerplexityRun): string {
  const { policy, chunkSize } = run.sizes;
  const chunk = chunkSize > 1 ? ` (chunk ${chunkSize})` : "";
  const corpus = run.dropBos ? ", no BOS" : "";
  const gc = run.collectGarbage ? ", GC at checkpoints" : "";
  return `${policy} ${cacheLabel(run.sizes)}${chunk}${corpus}${gc}`;
}

/**
 * Average the per-block mean NLL over log-spaced position bins, weighting each block by its
 * token count (all blocks are full except block 0, which lacks the unscored token 0).
 */
function logBinnedNll(run: PerplexityRun): [number, number][] {
  const points: [number, number][] = [];
  let bin: { sum: number; count: number; firstBlock: number } | undefined;
  let binEnd = 0;
  run.blockMeanNll.forEach((nll, block) => {
    const start = block * run.blockTokens;
    if (bin === undefined || start >= binEnd) {
      if (bin) points.push([centerOf(bin.firstBlock, block, run.blockTokens), bin.sum / bin.count]);
      bin = { sum: 0, count: 0, firstBlock: block };
      binEnd = Math.max(start + run.blockTokens, Math.ceil(10 ** (Math.log10(start + run.blockTokens) + 1 / BINS_PER_DECADE)));
    }
    bin.sum += nll;
    bin.count++;
  });
  if (bin) points.push([centerOf(bin.firstBlock, run.blockMeanNll.length, run.blockTokens), bin.sum / bin.count]);
  return points;
}

function centerOf(firstBlock: number, endBlock: number, blockTokens: number): number {
  return Math.max(1, ((firstBlock + endBlock) / 2) * blockTokens);
}

/** Mean NLL over the blocks that start in `[from, to)`, or undefined when the run did not get there. */
function rangeNll(run: PerplexityRun, from: number, to: number): number | undefined {
  let sum = 0;
  let count = 0;
  run.blockMeanNll.forEach((nll, block) => {
    const start = block * run.blockTokens;
    if (start >= from && start < to) {
      sum += nll;
      count++;
    }
  });
  if (count === 0 || run.blockMeanNll.length * run.blockTokens < Math.min(to, from + run.blockTokens)) return undefined;
  return sum / count;
}

function readRuns(): { ppl: PerplexityRun[]; latency?: LatencyRun } {
  const ppl: PerplexityRun[] = [];
  for (const file of readdirSync(DATA_DIR).filter((name) => name.startsWith("ppl-")).sort()) {
    ppl.push(JSON.parse(readFileSync(DATA_DIR + file, "utf8")));
  }
  const latencyPath = DATA_DIR + "latency.json";
  const latency = existsSync(latencyPath) ? JSON.parse(readFileSync(latencyPath, "utf8")) : undefined;
  const order = ["dense", "window", "recompute", "sink"];
  ppl.sort((a, b) => order.indexOf(a.sizes.policy) - order.indexOf(b.sizes.policy) || a.sizes.window - b.sizes.window);
  return { ppl, latency };
}

function perplexityReport(allRuns: PerplexityRun[]): string {
  // A run with forced collections scores exactly like the same run without them.
  const runs = allRuns.filter((run) => !run.collectGarbage);
  writeFileSync(
    PLOT_DIR + "ppl_vs_position.svg",
    lineChart({
      title: "Perplexity against position (stories260K, self-generated stories)",
      xLabel: "position in the stream (tokens, log scale)",
      yLabel: "perplexity (log scale)",
      xLog: true,
      yLog: true,
      series: runs.filter((run) => !run.dropBos).map((run) => ({
        label: labelOf(run),
        points: logBinnedNll(run).map(([x, nll]) => [x, Math.exp(nll)] as [number, number]),
      })),
    }),
  );

  // The stream without story separators is different text, so it gets a plot of its own.
  const noBos = runs.filter((run) => run.dropBos);
  if (noBos.length > 0) {
    writeFileSync(
      PLOT_DIR + "ppl_vs_position_nobos.svg",
      lineChart({
        title: "Perplexity against position, stories without BOS separators",
        xLabel: "position in the stream (tokens, log scale)",
        yLabel: "perplexity",
        xLog: true,
        series: noBos.map((run) => ({
          label: labelOf(run),
          points: logBinnedNll(run).map(([x, nll]) => [x, Math.exp(nll)] as [number, number]),
        })),
      }),
    );
  }

  // The same curves without dense, on a linear scale that shows the small differences.
  const bounded = runs.filter((run) => run.sizes.policy !== "dense" && !run.dropBos);
  const boundedSeries = bounded.map((run) => ({
    label: labelOf(run),
    points: logBinnedNll(run).map(([x, nll]) => [x, Math.exp(nll)] as [number, number]),
  }));
  const low = Math.min(...boundedSeries.flatMap((series) => series.points.map(([, y]) => y)));
  const high = Math.max(...boundedSeries.flatMap((series) => series.points.map(([, y]) => y)));
  writeFileSync(
    PLOT_DIR + "ppl_vs_position_bounded.svg",
    lineChart({
      title: "Perplexity against position, bounded-cache policies only",
      xLabel: "position in the stream (tokens, log scale)",
      yLabel: "perplexity",
      xLog: true,
      yRange: [Math.floor(low * 10) / 10, Math.ceil(high * 10) / 10],
      series: boundedSeries,
    }),
  );

  const ranges: [string, number, number][] = [
    ["1–512", 0, 512],
    ["512–2k", 512, 2048],
    ["2k–8k", 2048, 8192],
    ["8k–100k", 8192, 100_000],
    ["100k–1M", 100_000, 1_000_000],
  ];
  const lines = [
    `| run | tokens scored | ${ranges.map(([name]) => name).join(" | ")} | whole run | tok/s |`,
    `|---|---:|${ranges.map(() => "---:").join("|")}|---:|---:|`,
  ];
  for (const run of runs) {
    const cells = ranges.map(([, from, to]) => {
      const nll = rangeNll(run, from, to);
      return nll === undefined ? "–" : Math.exp(nll).toFixed(3);
    });
    lines.push(
      `| ${labelOf(run)} | ${run.summary.scoredTokens.toLocaleString("en-US")} | ${cells.join(" | ")} | ` +
        `${run.summary.perplexity.toFixed(3)} | ${run.summary.tokensPerSecond.toFixed(0)} |`,
    );
  }
  return lines.join("\n");
}

function memoryReport(runs: PerplexityRun[]): string {
  writeFileSync(
    PLOT_DIR + "rss_vs_length.svg",
    lineChart({
      title: "Peak resident set size against stream length",
      xLabel: "tokens scored (log scale)",
      yLabel: "peak RSS (MiB)",
      xLog: true,
      series: runs.map((run) => ({
        label: labelOf(run),
        points: run.checkpoints.map((c) => [c.tokens, c.peakRssBytes / MIB] as [number, number]),
      })),
    }),
  );
  const lines = [
    "| run | RSS before scoring (MiB) | peak RSS at 10% of the run | peak RSS at the end | tokens scored |",
    "|---|---:|---:|---:|---:|",
  ];
  for (const run of runs) {
    const early = run.checkpoints[Math.floor(run.checkpoints.length / 10)] ?? run.checkpoints[0];
    lines.push(
      `| ${labelOf(run)} | ${(run.rssBeforeBytes / MIB).toFixed(1)} | ${(early.peakRssBytes / MIB).toFixed(1)} ` +
        `(${early.tokens.toLocaleString("en-US")} tokens) | ${(run.finalPeakRssBytes / MIB).toFixed(1)} | ` +
        `${run.summary.scoredTokens.toLocaleString("en-US")} |`,
    );
  }
  return lines.join("\n");
}

/** Milliseconds per token between consecutive checkpoints, for the runs longer than 100k tokens. */
function throughputReport(runs: PerplexityRun[]): string {
  const long = runs.filter((run) => run.summary.scoredTokens >= 100_000);
  if (long.length === 0) return "No run of 100,000 tokens or more yet.";
  const series: ChartSeries[] = long.map((run) => ({
    label: labelOf(run),
    points: run.checkpoints.slice(1).map((c, i) => {
      const previous = run.checkpoints[i];
      return [c.tokens, ((c.seconds - previous.seconds) * 1000) / (c.tokens - previous.tokens)] as [number, number];
    }),
  }));
  writeFileSync(
    PLOT_DIR + "time_vs_position.svg",
    lineChart({
      title: "Time per token along the stream (chunked prefill)",
      xLabel: "tokens scored",
      yLabel: "ms per token",
      yRange: [0, Math.max(...series.flatMap((s) => s.points.map(([, y]) => y))) * 1.1],
      series,
    }),
  );
  const lines = ["| run | ms/token, first 10% | ms/token, last 10% | RSS at first checkpoint (MiB) | RSS at last (MiB) |", "|---|---:|---:|---:|---:|"];
  for (const [index, run] of long.entries()) {
    const points = series[index].points;
    const tenth = Math.max(1, Math.floor(points.length / 10));
    const mean = (slice: [number, number][]) => slice.reduce((sum, [, y]) => sum + y, 0) / slice.length;
    lines.push(
      `| ${labelOf(run)} | ${mean(points.slice(0, tenth)).toFixed(3)} | ${mean(points.slice(-tenth)).toFixed(3)} | ` +
        `${(run.checkpoints[0].rssBytes / MIB).toFixed(1)} | ${(run.checkpoints.at(-1)!.rssBytes / MIB).toFixed(1)} |`,
    );
  }
  return lines.join("\n");
}

function latencyReport(latency: LatencyRun): string {
  writeFileSync(
    PLOT_DIR + "latency_vs_cache.svg",
    lineChart({
      title: "Per-token latency against cache size (one token per step)",
      xLabel: "cache size (tokens, log scale)",
      yLabel: "median ms per token (log scale)",
      xLog: true,
      yLog: true,
      series: [
        { label: "sink (4 + cache − 4)", points: latency.rows.map((row) => [row.cache, row.sinkMs.median]) },
        { label: "recompute (window = cache)", points: latency.rows.map((row) => [row.cache, row.recomputeMs.median]) },
      ],
    }),
  );
  const lines = ["| cache | sink ms/token (median, mean) | recompute ms/token (median, mean) | speed-up (medians) |", "|---:|---:|---:|---:|"];
  for (const row of latency.rows) {
    lines.push(
      `| ${row.cache} | ${row.sinkMs.median.toFixed(2)}, ${row.sinkMs.mean.toFixed(2)} | ` +
        `${row.recomputeMs.median.toFixed(2)}, ${row.recomputeMs.mean.toFixed(2)} | ` +
        `${(row.recomputeMs.median / row.sinkMs.median).toFixed(1)}× |`,
    );
  }
  return lines.join("\n");
}

/**
 * Replace the text between `<!-- report:KEY -->` and `<!-- /report:KEY -->` in `markdown` with
 * each table, leaving everything else as written.
 */
function fillMarkers(markdown: string, tables: Record<string, string>): string {
  let filled = markdown;
  for (const [key, table] of Object.entries(tables)) {
    const pattern = new RegExp(`(<!-- report:${key} -->\\n)[\\s\\S]*?(<!-- /report:${key} -->)`);
    filled = filled.replace(pattern, (_, open, close) => `${open}${table}\n${close}`);
  }
  return filled;
}

if (import.meta.main) {
  const { ppl, latency } = readRuns();
  const tables: Record<string, string> = {
    ppl: perplexityReport(ppl),
    rss: memoryReport(ppl),
    time: throughputReport(ppl),
  };
  if (latency) tables.latency = latencyReport(latency);

  const paperPath = new URL("../docs/paper.md", import.meta.url).pathname;
  if (existsSync(paperPath)) writeFileSync(paperPath, fillMarkers(readFileSync(paperPath, "utf8"), tables));
  for (const [key, table] of Object.entries(tables)) console.log(`<!-- report:${key} -->\n${table}\n`);
}
