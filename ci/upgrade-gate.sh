#!/usr/bin/env bash
# Gate a kernel upgrade: run examples/upgrade_gate under the fleet's kernel and the
# candidate (both through the kernel lane), then compare.  Exit 1 on regression.
#   ci/upgrade-gate.sh [OLD] [NEW] [OUTDIR]   default 6.1.0-56-amd64 -> 6.12.95+deb12-amd64
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:-6.1.0-56-amd64}
new=${2:-6.12.95+deb12-amd64}
out=${3:-gate-results}
repeat=${UDPSEND_REPEAT:-5}
bash ci/setup-debian.sh
mkdir -p "$out"
old_image=$(bash ci/prepare-kernel.sh "$old" | tail -n1)
new_image=$(bash ci/prepare-kernel.sh "$new" | tail -n1)
run() {  # image json [more pytest args]
  local image=$1 json=$2; shift 2
  .venv/bin/python -m pytest examples/upgrade_gate -p no:cacheprovider --udpsend-require-privileges \
    --udpsend-kernel "$image" --udpsend-backend bpf --udpsend-repeat "$repeat" --udpsend-json "$json" "$@"
}
run "$old_image" "$out/baseline.json"
status=0
run "$new_image" "$out/candidate.json" --udpsend-baseline "$out/baseline.json" \
  --udpsend-html "$out/report.html" || status=$?
.venv/bin/udpsend compare "$out/baseline.json" "$out/candidate.json" | tee "$out/compare.txt" || status=1
exit $status
