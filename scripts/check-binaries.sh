#!/usr/bin/env bash
# Builds the single binaries, copies each into an empty temporary folder outside the checkout,
# and runs `generate` and `summarize` there on a real log with the stories model. Each binary
# must print exactly what the CLI prints when run from source, and llama.cpp's greedy
# continuation for the fixture prompt. Under strace, a binary must open no file of the checkout.
#
# deno compile downloads its `denort` runtime from dl.deno.land unless DENORT_BIN names a local
# copy or one is cached in DENO_DIR. Without either, the Deno binary is not built, and the files
# it would embed are checked instead by running them with `deno run` from the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUN=$ROOT/node_modules/.bin/bun
DENO=$ROOT/node_modules/.bin/deno
MODEL=$(realpath ../shared/models/stories260K.gguf)
LOG=$(realpath ../shared/data/logs/Linux_2k.log)
LOG_LINES=300
MAX_TOKENS=48
# The launchers in node_modules/.bin need node; the binaries need nothing from PATH.
RUN_PATH="$(dirname "$(command -v node)"):/usr/bin:/bin"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/home"
head -n 3 "$LOG" >"$WORK/prompt.txt"
head -n "$LOG_LINES" "$LOG" >"$WORK/log.txt"
FIXTURE_PROMPT=$(node -p 'require("./tests/fixtures/llamacpp_stories260K.json").greedy.prompt')
FIXTURE_TOKENS=$(node -p 'require("./tests/fixtures/llamacpp_stories260K.json").greedy.continuation.length')
node -p 'require("./tests/fixtures/llamacpp_stories260K.json").greedy.continuationText' >"$WORK/fixture.expected"
VERSION=$(node -p 'require("./package.json").version')
COMMIT=$(git rev-parse --short=12 HEAD)

# Runs one command line of sinkstream (given as the words before the subcommand) in the empty
# folder with a clean environment, and writes <name>.out and <name>.err there.
run_cli() {
  local name=$1
  shift
  (cd "$WORK/run" && env -i PATH="$RUN_PATH" HOME="$WORK/home" "$@") >"$WORK/$name.out" 2>"$WORK/$name.err" || {
    echo "FAIL: $name exited with status $?" >&2
    cat "$WORK/$name.err" >&2
    exit 1
  }
}

# Runs generate, summarize and --version with the command line given as arguments, under the
# label $1, and compares the output with the source run and the llama.cpp fixture.
check_cli() {
  local label=$1
  shift
  run_cli "$label.generate" "$@" generate --model "$MODEL" --max-tokens "$MAX_TOKENS" <"$WORK/prompt.txt"
  run_cli "$label.summarize" "$@" summarize --model "$MODEL" --max-tokens "$MAX_TOKENS" <"$WORK/log.txt"
  run_cli "$label.fixture" "$@" generate --model "$MODEL" --prompt "$FIXTURE_PROMPT" --max-tokens "$FIXTURE_TOKENS"
  run_cli "$label.version" "$@" --version
  for command in generate summarize; do
    grep -q "^sinkstream: ingested" "$WORK/$label.$command.err" ||
      { echo "FAIL: $label $command printed no stats line" >&2; cat "$WORK/$label.$command.err" >&2; exit 1; }
    [ -s "$WORK/$label.$command.out" ] || { echo "FAIL: $label $command printed nothing" >&2; exit 1; }
    if [ "$label" != source ]; then
      cmp -s "$WORK/source.$command.out" "$WORK/$label.$command.out" || {
        echo "FAIL: $label $command output differs from the source run" >&2
        diff "$WORK/source.$command.out" "$WORK/$label.$command.out" >&2 || true
        exit 1
      }
    fi
  done
  cmp -s "$WORK/fixture.expected" "$WORK/$label.fixture.out" ||
    { echo "FAIL: $label generate differs from llama.cpp's greedy continuation" >&2; diff "$WORK/fixture.expected" "$WORK/$label.fixture.out" >&2 || true; exit 1; }
  grep -Eq "^$VERSION \\(commit $COMMIT(-dirty)?\\)\$" "$WORK/$label.version.out" ||
    { echo "FAIL: $label --version printed '$(cat "$WORK/$label.version.out")'; expected $VERSION and commit $COMMIT" >&2; exit 1; }
  echo "$label: generate, summarize and --version match ($(wc -c <"$WORK/$label.summarize.out") bytes of summary)"
}

# Fails if the binary at $1, run on the stories model, opens any file of the checkout.
check_no_checkout_files() {
  command -v strace >/dev/null || { echo "strace not found: skipped the check for files opened in the checkout"; return; }
  (cd "$WORK/run" && strace -f -qq -e trace=open,openat -o "$WORK/strace.txt" "$1" generate --model "$MODEL" --prompt "Once" --max-tokens 4 --quiet >/dev/null)
  if grep -F "\"$ROOT/" "$WORK/strace.txt" >&2; then
    echo "FAIL: $1 opened files of the checkout (listed above)" >&2
    exit 1
  fi
}

# Copies the binary at $1 into a new empty folder and prints its path there.
install_binary() {
  rm -rf "$WORK/run"
  mkdir -p "$WORK/run"
  cp "$1" "$WORK/run/"
  echo "$WORK/run/$(basename "$1")"
}

mkdir -p "$WORK/run"
check_cli source "$BUN" "$ROOT/cli/main.ts"

echo "== bun binary"
start=$(date +%s)
"$DENO" run -A scripts/compile.ts bun
echo "built in $(($(date +%s) - start)) s"
binary=$(install_binary dist/sinkstream-bun)
check_cli bun "$binary"
check_no_checkout_files "$binary"

echo "== deno binary"
deno_dir=$("$DENO" info --json | node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(0, "utf8")).denoDir)')
deno_version=$("$DENO" --version | head -n 1 | cut -d " " -f 2)
if [ -n "${DENORT_BIN:-}" ] || compgen -G "$deno_dir/dl/release/v$deno_version/denort-*.zip" >/dev/null; then
  start=$(date +%s)
  "$DENO" run -A scripts/compile.ts deno
  echo "built in $(($(date +%s) - start)) s"
  binary=$(install_binary dist/sinkstream)
  check_cli deno "$binary"
  check_no_checkout_files "$binary"
else
  echo "SKIPPED building dist/sinkstream: no denort runtime (set DENORT_BIN, or let deno compile download it once)"
  rm -rf "$WORK/run"
  mkdir -p "$WORK/run"
  "$DENO" run -A scripts/compile.ts deno --stage-only "$WORK/stage"
  check_cli deno-staged "$DENO" run -A "$WORK/stage/deno_entry.ts"
fi
