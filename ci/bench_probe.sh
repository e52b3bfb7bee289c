#!/usr/bin/env bash
# Run ci/bench_probe.py inside a kernel with kprobes (the lane's VM) and print its output.
#   ci/bench_probe.sh [VERSION]     default 6.1.0-56-amd64
set -euo pipefail
cd "$(dirname "$0")/.."
image=$(bash ci/prepare-kernel.sh "${1:-6.1.0-56-amd64}" | tail -n1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
PATH="$PWD/.venv/bin:$PATH" vng --run "$image" --disable-kvm --qemu-opts="-accel tcg,thread=single" --cpus 2 --memory 2G -v \
  --rwdir "$out" --exec "cd $PWD && .venv/bin/python ci/bench_probe.py > $out/bench.txt 2>&1" > "$out/console.log" 2>&1 || true
cat "$out/bench.txt" 2>/dev/null || { echo "the guest produced no output; console tail:"; tail -30 "$out/console.log"; exit 1; }
