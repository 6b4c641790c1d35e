/** `sinkstream recall`: search an archive of evicted lines directly, best match first. */

import type { Command } from "commander";
import { LineArchive } from "../../core/archive.ts";
import { UsageError } from "../../core/errors.ts";
import { recalledRecord } from "../archive_options.ts";
import { writeStdout } from "../io.ts";
import { parseWholeNumber } from "../options.ts";

/** Options of the `recall` command. */
interface RecallOptions {
  archive?: string;
  limit: number;
  json?: boolean;
}

/** Add the `recall` command to the program. */
export function registerRecall(program: Command): void {
  program
    .command("recall")
    .description("search an archive of lines that left the window, best BM25 match first")
    .argument("<query>", "words to search for; punctuation and search operators are ignored")
    .option("--archive <path>", "archive file written by ask, summarize or watch with --archive")
    .option("-k, --limit <n>", "maximum lines to print", parseWholeNumber("line limit", 1), 10)
    .option("--json", "write one NDJSON record per line: rank, line, time, offset, score, text")
    .action((query: string, options: RecallOptions) => recallCommand(query, options));
}

async function recallCommand(query: string, options: RecallOptions): Promise<void> {
  if (options.archive === undefined) {
    throw new UsageError("Missing archive: pass --archive PATH, the file that ask, summarize or watch wrote with --archive");
  }
  // Read-only, so a running watch can keep writing; WAL mode shows whole committed batches only.
  const archive = await LineArchive.open(options.archive, { readOnly: true });
  let hits;
  try {
    hits = archive.search(query, options.limit);
  } finally {
    archive.close();
  }

  let output = "";
  hits.forEach((hit, index) => {
    if (options.json) {
      output += JSON.stringify(recalledRecord({ ...hit, rank: index + 1 })) + "\n";
    } else {
      const text = hit.text.endsWith("\n") ? hit.text.slice(0, -1) : hit.text;
      output += `${hit.lineNumber}\t${new Date(hit.arrivalTime).toISOString()}\t${text}\n`;
    }
  });
  if (output !== "") await writeStdout(output);
}
