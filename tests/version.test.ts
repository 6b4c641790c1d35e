import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeGitCommit, setBuildCommit, versionText } from "../cli/version.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;

let repository: string;

function git(...args: string[]): string {
  return execFileSync("git", ["-C", repository, "-c", "user.name=test", "-c", "user.email=test@example.invalid", ...args], {
    encoding: "utf8",
  }).trim();
}

beforeAll(() => {
  repository = mkdtempSync(join(tmpdir(), "sinkstream-version-"));
  git("init", "--quiet");
  writeFileSync(join(repository, "tracked.txt"), "one\n");
  mkdirSync(join(repository, "sub"));
  writeFileSync(join(repository, "sub", "file.txt"), "x\n");
  git("add", ".");
  git("commit", "--quiet", "-m", "first");
});

afterAll(() => rmSync(repository, { recursive: true, force: true }));

describe("describeGitCommit", () => {
  test("clean tree gives the short HEAD", () => {
    expect(describeGitCommit(repository)).toBe(git("rev-parse", "--short=12", "HEAD"));
  });

  test("untracked file keeps the tree clean", () => {
    writeFileSync(join(repository, "untracked.txt"), "new\n");
    try {
      expect(describeGitCommit(repository)).toBe(git("rev-parse", "--short=12", "HEAD"));
    } finally {
      rmSync(join(repository, "untracked.txt"));
    }
  });

  test("changed tracked file appends -dirty", () => {
    writeFileSync(join(repository, "tracked.txt"), "two\n");
    try {
      expect(describeGitCommit(repository)).toBe(`${git("rev-parse", "--short=12", "HEAD")}-dirty`);
    } finally {
      writeFileSync(join(repository, "tracked.txt"), "one\n");
    }
  });

  test("subfolder of a work tree gives undefined", () => {
    expect(describeGitCommit(join(repository, "sub"))).toBeUndefined();
  });

  test("folder outside git gives undefined", () => {
    const plain = mkdtempSync(join(tmpdir(), "sinkstream-nogit-"));
    try {
      expect(describeGitCommit(plain)).toBeUndefined();
    } finally {
      rmSync(plain, { recursive: true });
    }
  });
});

describe("--version", () => {
  test("from source names the checkout's commit", () => {
    const run = spawnSync(join(ROOT, "node_modules/.bin/bun"), [join(ROOT, "cli/main.ts"), "--version"], {
      cwd: tmpdir(),
      encoding: "utf8",
    });
    expect(run.status).toBe(0);
    expect(run.stdout).toBe(`${VERSION} (commit ${describeGitCommit(ROOT) ?? "unknown"})\n`);
  });

  test("build commit takes precedence over git", () => {
    setBuildCommit("0123456789ab");
    expect(versionText()).toBe(`${VERSION} (commit 0123456789ab)`);
  });
});
