#!/usr/bin/env bash
# Fan-in for real: the result files of three "runners" (this host, the 6.1 lane, the 6.12 lane), each
# labelled --udpsend-label runner=NAME, merged (udpsend merge), reported (udpsend report: the upgrade
# view across their kernels) and compared with the previous run's files, grouped by runner (udpsend
# compare: one table per runner, one exit status).  Prints where the outputs are.
#   ci/fanin.sh [--measure] [RESULTS_DIR]      RESULTS_DIR default ${UDPSEND_RESULTS_DIR:-.results}
#     reads   RESULTS_DIR/examples-host.json, lane-6.1.0-56-amd64.json, lane-6.12.95+deb12-amd64.json
#             (ci/test.sh and ci/lane.sh write them; one sample per test, so compare can only refuse)
#     --measure  first writes those three files itself from ci/fanin_suite.py with --udpsend-repeat
#             ${FANIN_REPEAT:-6} (host, then one VM boot per lane kernel), so compare has samples to judge
#     writes  RESULTS_DIR/fanin/{fleet.json,fleet.html,compare.txt,compare.html}; keeps this run's files in
#             RESULTS_DIR/fanin/baseline/ as the next run's baseline unless compare found a regression
# Exit status: 1 if compare found a regression in any runner's group, else 0 (a refusal is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
measure=0
if [ "${1:-}" = --measure ]; then measure=1; shift; fi
results=${1:-${UDPSEND_RESULTS_DIR:-.results}}
out="$results/fanin"
mkdir -p "$out/baseline"
udpsend=(.venv/bin/udpsend)
declare -A files=([host]=examples-host.json [lane-6.1]=lane-6.1.0-56-amd64.json [lane-6.12]=lane-6.12.95+deb12-amd64.json)
declare -A kernels=([lane-6.1]=6.1.0-56-amd64 [lane-6.12]=6.12.95+deb12-amd64)
runners=(host lane-6.1 lane-6.12)

if [ "$measure" = 1 ]; then
  for runner in "${runners[@]}"; do
    args=(ci/fanin_suite.py -p no:cacheprovider -q --udpsend-require-privileges --udpsend-repeat "${FANIN_REPEAT:-6}"
          --udpsend-label "runner=$runner" --udpsend-json "$results/${files[$runner]}")
    if [ "$runner" != host ]; then
      image=$(bash ci/prepare-kernel.sh "${kernels[$runner]}" | tail -n1)
      args+=("--udpsend-kernel=$image")
    fi
    echo "fanin: measuring runner $runner"
    .venv/bin/python -m pytest "${args[@]}" | tail -n1
  done
fi

inputs=()
for runner in "${runners[@]}"; do
  path="$results/${files[$runner]}"
  if [ ! -f "$path" ]; then
    echo "fanin: $path is missing: run ci/test.sh (or ci/fanin.sh --measure) first" >&2
    exit 2
  fi
  inputs+=("$path")
done

"${udpsend[@]}" merge "$out/fleet.json" "${inputs[@]}"
"${udpsend[@]}" report "$out/fleet.json" -o "$out/fleet.html"

status=0
if compgen -G "$out/baseline/*.json" > /dev/null; then
  "${udpsend[@]}" compare "$out/baseline/*.json" --new "${inputs[@]}" > "$out/compare.txt" 2>&1 || status=$?
  "${udpsend[@]}" report "${inputs[@]}" --baseline "$out/baseline/*.json" -o "$out/compare.html"
  sed -n '1p;/^summary:/p;/^udpsend compare: refused/p' "$out/compare.txt"
  echo "fanin: udpsend compare exit $status (0 ok, 1 regression, 2 refused)"
else
  echo "fanin: no baseline in $out/baseline yet: this run's files become it (compare runs from the next run on)"
  : > "$out/compare.txt"
fi
if [ "$status" != 1 ]; then
  cp "${inputs[@]}" "$out/baseline/"
fi
echo "fanin: merged   $out/fleet.json"
echo "fanin: report   $out/fleet.html (upgrade view: tests x kernels, one matrix per runner group)"
[ -s "$out/compare.txt" ] && echo "fanin: compare  $out/compare.txt, $out/compare.html (baseline: $out/baseline, the previous run)"
[ "$status" = 1 ] && exit 1
exit 0
