/** `sinkstream score`: the NLL of every input line in the context of the stream before it. */

import process from "node:process";
import { type Command, Option } from "commander";
import { UsageError } from "../../core/errors.ts";
import { LineScorer, type LineScore, type LineScorerState, TopPercentFilter } from "../../pipelines/score.ts";
import { writeStdout } from "../io.ts";
import { addModelOptions, type ModelOptions, openModel, openSession, parseNonNegative } from "../options.ts";
import { ProgressReporter } from "../progress.ts";
import { addStreamOptions, type LineConsumer, runLineStream, type StreamOptions } from "../streaming.ts";

interface ScoreOptions extends ModelOptions, StreamOptions {
  top?: number;
  threshold?: number;
}

/** Add the `score` command to the program. */
export function registerScore(program: Command): void {
  addStreamOptions(addModelOptions(
    program
      .command("score")
      .description("print every input line with the mean and max NLL of its tokens in the stream's context")
      .addOption(
        new Option("--top <percent>", "print only lines whose mean NLL is in the top PERCENT of the lines so far")
          .argParser(parsePercent),
      )
      .addOption(
        new Option("--threshold <nats>", "print only lines whose mean NLL is above NATS").argParser(parseNonNegative("threshold")),
      ),
    { generation: false },
  )).action((options) => scoreCommand(options));
}

function parsePercent(value: string): number {
  const percent = Number(value);
  if (value.trim() === "" || !(percent > 0 && percent <= 100)) {
    throw new UsageError(`Invalid top percentage: current value is ${JSON.stringify(value)}; use a number above 0 and at most 100`);
  }
  return percent;
}

/** Format a score as one NDJSON record, or as `mean max line` for reading. */
export function formatScore(score: LineScore, json: boolean | undefined): string {
  const text = score.text.endsWith("\n") ? score.text.slice(0, -1) : score.text;
  if (json) {
    return JSON.stringify({
      type: "line",
      line: score.line,
      text,
      tokens: score.tokens,
      mean_nll: score.meanNll,
      max_nll: score.maxNll,
    }) + "\n";
  }
  const mean = score.meanNll === null ? "-" : score.meanNll.toFixed(3);
  const max = score.maxNll === null ? "-" : score.maxNll.toFixed(3);
  return `${mean}\t${max}\t${text}\n`;
}

async function scoreCommand(options: ScoreOptions): Promise<void> {
  const { model } = await openModel(options);
  const session = await openSession(model, options);
  const progress = new ProgressReporter(session, { quiet: options.quiet });
  const scorer = new LineScorer(model, session);
  const top = options.top === undefined ? undefined : new TopPercentFilter(options.top);

  const consumer: LineConsumer = {
    command: "score",
    addLine: async (text, last) => {
      const score = await scorer.addLine(text, last);
      if (!passes(score, options, top)) return;
      progress.clear();
      await writeStdout(formatScore(score, options.json));
    },
    finish: async () => {},
    exportState: () => {
      const { state, lastLogits } = scorer.exportState();
      const blobs: Record<string, Uint8Array> = {};
      if (lastLogits) blobs.lastLogits = lastLogits;
      const pipeline: Record<string, unknown> = { scorer: state };
      if (top) {
        const histogram = top.exportState();
        pipeline.topCount = histogram.count;
        blobs.topBins = histogram.bins;
      }
      return { pipeline, blobs };
    },
    importState: (pipeline, blobs) => {
      scorer.importState(pipeline.scorer as LineScorerState, blobs.lastLogits);
      if (top && blobs.topBins) top.importState(Number(pipeline.topCount), blobs.topBins);
    },
  };

  const outcome = await runLineStream(model, session, options, consumer, (lines) => progress.update(lines));
  if (outcome.ended !== "stdout-closed") {
    if (options.json) {
      await writeStdout(JSON.stringify({ type: "stats", lines: outcome.lines, dropped: outcome.dropped, ...progress.summary() }) + "\n")
        .catch(() => {});
    } else if (!options.quiet) progress.printSummary();
  }
  // Standard input may still be open (a signal, `| head`); nothing more will be read from it.
  if (outcome.ended !== "end") process.exit(0);
}

function passes(score: LineScore, options: ScoreOptions, top: TopPercentFilter | undefined): boolean {
  if (options.threshold === undefined && top === undefined) return true;
  if (score.meanNll === null) return false;
  if (options.threshold !== undefined && !(score.meanNll > options.threshold)) {
    top?.accept(score.meanNll);
    return false;
  }
  return top === undefined ? true : top.accept(score.meanNll);
}
