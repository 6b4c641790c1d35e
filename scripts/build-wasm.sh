#!/bin/sh
# Build the KV ring kernel for wasm32 with SIMD128 and copy it to wasm/pkg/sinkstream_kv.wasm.
# Uses Debian's Rust 1.63 (/usr/bin), which ships the wasm32-unknown-unknown target; a rustup
# toolchain earlier on PATH may lack that target.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/wasm"

RUSTC=/usr/bin/rustc RUSTFLAGS="-C target-feature=+simd128" \
  /usr/bin/cargo build --release --target wasm32-unknown-unknown

mkdir -p pkg
cp target/wasm32-unknown-unknown/release/sinkstream_kv.wasm pkg/sinkstream_kv.wasm
echo "wrote wasm/pkg/sinkstream_kv.wasm ($(wc -c < pkg/sinkstream_kv.wasm) bytes)" >&2
