/**
 * The `--version` text: the package version and the git commit of the code.
 *
 * A single binary records its commit at build time with {@linkcode setBuildCommit}. From
 * source the commit comes from `git` in the checkout, and is "unknown" without git or when the
 * package does not sit at the top of a git work tree (an npm install, for example).
 *
 * @module
 */

import { execFileSync } from "node:child_process";
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import pkg from "../package.json" with { type: "json" };

/** Root of the package: the folder that contains `package.json`. */
const PACKAGE_ROOT = fileURLToPath(new URL("..", import.meta.url));

let buildCommit: string | undefined;

/** Records the commit a single binary was built from; the binary's entry module calls it. */
export function setBuildCommit(commit: string): void {
  buildCommit = commit;
}

/** Returns `<version> (commit <hash>)`, for example `0.1.0 (commit 1a2b3c4d5e6f)`. */
export function versionText(): string {
  const commit = buildCommit ?? describeGitCommit(PACKAGE_ROOT) ?? "unknown";
  return `${pkg.version} (commit ${commit})`;
}

/**
 * Returns the abbreviated commit of HEAD in `directory`, with `-dirty` appended when tracked
 * files differ from it, or undefined when git is missing or `directory` is not the top of a
 * git work tree.
 */
export function describeGitCommit(directory: string): string | undefined {
  const git = (...args: string[]) =>
    execFileSync("git", ["-C", directory, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  try {
    // An enclosing repository (a project that installed this package) must not lend its commit.
    if (realpathSync(git("rev-parse", "--show-toplevel")) !== realpathSync(directory)) return undefined;
    const commit = git("rev-parse", "--short=12", "HEAD");
    const dirty = git("status", "--porcelain", "--untracked-files=no") !== "";
    return dirty ? `${commit}-dirty` : commit;
  } catch {
    return undefined;
  }
}
