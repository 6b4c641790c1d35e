#!/usr/bin/env bash
# Summarize a real log with the tiny TinyStories model, once every 500 lines and at the end.
# The model is read from ../shared/models/ when that folder is there, else downloaded from the
# Hugging Face hub into the cache; the log is a Loghub sample from ../shared/data/logs/, else
# this machine's dpkg log.
set -euo pipefail
cd "$(dirname "$0")/.."

model=../shared/models/stories260K.gguf
[ -f "$model" ] || model=ggml-org/models/tinyllamas/stories260K.gguf
log=../shared/data/logs/OpenSSH_2k.log
[ -f "$log" ] || log=/var/log/dpkg.log
if [ ! -f "$log" ]; then
  echo "demo: no log found; pipe any log into: node_modules/.bin/bun cli/main.ts summarize" >&2
  exit 4
fi

echo "demo: summarizing $log with $model" >&2
exec node_modules/.bin/bun cli/main.ts summarize --model "$model" --every 500 --max-tokens 48 < "$log"
