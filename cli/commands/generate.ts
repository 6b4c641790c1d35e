/** `sinkstream generate`: continue a prompt and print only the continuation. */

import type { Command } from "commander";
import { UsageError } from "../../core/errors.ts";
import { Sampler } from "../../core/sampler.ts";
import { runGenerate } from "../../pipelines/generate.ts";
import { readStdinText, writeStdout } from "../io.ts";
import { addModelOptions, type ModelOptions, openModel, openSession } from "../options.ts";
import { ProgressReporter } from "../progress.ts";

/** Add the `generate` command to the program. */
export function registerGenerate(program: Command): void {
  addModelOptions(
    program
      .command("generate")
      .description("continue a prompt and print only the continuation")
      .option("-p, --prompt <text>", "the prompt (default: read from standard input)"),
  ).action((options) => generateCommand(options));
}

async function generateCommand(options: ModelOptions & { prompt?: string }): Promise<void> {
  const prompt = options.prompt ?? (await readStdinText());
  if (prompt === "") throw new UsageError("Missing prompt: give --prompt TEXT or pipe the prompt on standard input");
  const { model } = await openModel(options);
  const session = await openSession(model, options);
  const progress = new ProgressReporter(session, { quiet: options.quiet });
  const sampler = new Sampler({ temperature: options.temperature, seed: options.seed });

  const { ids, text } = await runGenerate(model, session, {
    prompt,
    maxTokens: options.maxTokens,
    sampler,
    onText: (piece) => {
      if (!options.json) void writeStdout(piece).catch(() => {});
    },
  });
  if (options.json) {
    await writeStdout(JSON.stringify({ type: "generation", text, token_ids: ids }) + "\n");
    await writeStdout(JSON.stringify({ type: "stats", ...progress.summary() }) + "\n");
  } else {
    await writeStdout("\n");
    if (!options.quiet) progress.printSummary();
  }
}

