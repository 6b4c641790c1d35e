#!/usr/bin/env -S deno run -A
/**
 * The sinkstream command line: a thin layer over `pipelines/` that parses options, reads
 * standard input and writes results to standard output, diagnostics to standard error.
 */

import process from "node:process";
import { Command, CommanderError } from "commander";
import { ExitCode, SinkstreamError } from "../core/errors.ts";
import { registerAnswerCommands } from "./commands/answer.ts";
import { registerBench } from "./commands/bench.ts";
import { registerEval } from "./commands/eval.ts";
import { registerGenerate } from "./commands/generate.ts";
import { registerModels } from "./commands/models.ts";
import { registerRecall } from "./commands/recall.ts";
import { registerScore } from "./commands/score.ts";
import { registerWatch } from "./commands/watch.ts";
import { StdoutClosedError, writeStderr } from "./io.ts";
import { versionText } from "./version.ts";

function buildProgram(): Command {
  const program = new Command("sinkstream")
    .description("Summarize, question and score endless text streams with a small language model and a sink-and-window KV cache")
    .option("-V, --version", "output the version number and the git commit")
    .on("option:version", () => {
      // Resolved only on request, because from source it runs git.
      const text = versionText();
      process.stdout.write(`${text}\n`);
      throw new CommanderError(ExitCode.ok, "commander.version", text);
    })
    .showHelpAfterError("(run with --help for usage)")
    // Commander's own errors follow the one-line `sinkstream: …` format of every other error.
    .configureOutput({ outputError: (text, write) => write(`sinkstream: ${text.replace(/^error: /, "")}`) })
    .exitOverride();

  // One register function per command file in cli/commands/.
  registerGenerate(program);
  registerModels(program);
  registerAnswerCommands(program);
  registerBench(program);
  registerEval(program);
  registerRecall(program);
  registerScore(program);
  registerWatch(program);

  for (const command of program.commands) command.exitOverride();
  return program;
}

/** Error codes of failed file and stream operations, reported as input or output errors (exit 4). */
const FILE_ERROR_CODES = new Set(["ENOENT", "EACCES", "EPERM", "ENOSPC", "EIO", "EISDIR", "ENOTDIR", "EROFS", "EDQUOT", "EMFILE"]);

/** Run the command line and return the exit code. */
export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes("--debug");
  try {
    await buildProgram().parseAsync(argv, { from: "user" });
    return ExitCode.ok;
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.exitCode === 0) return ExitCode.ok; // --help, --version
      return ExitCode.usage; // commander printed the message
    }
    if (error instanceof StdoutClosedError) return ExitCode.ok;
    if (error instanceof SinkstreamError) {
      writeStderr(`sinkstream: ${error.message}\n`);
      if (debug) writeStderr(`${error.stack}\n`);
      return error.exitCode;
    }
    const errno = (error as NodeJS.ErrnoException).code;
    if (typeof errno === "string" && FILE_ERROR_CODES.has(errno)) {
      writeStderr(`sinkstream: ${(error as Error).message}; check the path, its permissions and the free space\n`);
      if (debug) writeStderr(`${(error as Error).stack}\n`);
      return ExitCode.input;
    }
    writeStderr(`sinkstream: internal error: ${(error as Error).message ?? error}\n`);
    writeStderr(debug ? `${(error as Error).stack}\n` : "run again with --debug for the stack trace and report it\n");
    return ExitCode.internal;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
