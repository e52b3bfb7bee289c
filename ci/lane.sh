#!/usr/bin/env bash
# The kernel lane in CI: prepare a Debian kernel with kprobes (ci/prepare-kernel.sh), then run,
# in one guest boot, the eBPF tests and the examples meant for the lane, as ordinary test results.
#   ci/lane.sh [VERSION] [--behaviour]
#     VERSION      default 6.1.0-56-amd64 (Debian 12); 6.12.95+deb12-amd64 from bookworm-backports
#     --behaviour  also run the lane's own behaviour tests (-m lane: deadlines, selection, usage errors)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-6.1.0-56-amd64}
[ -x .venv/bin/python ] || bash ci/setup-debian.sh
image=$(bash ci/prepare-kernel.sh "$version" | tail -n1)
if [ "${2:-}" = --behaviour ]; then
  UDPSEND_LANE_IMAGE="$image" .venv/bin/python -m pytest tests -p no:cacheprovider --udpsend-require-privileges -m lane
fi
# Every example in these files states a claim for the kernel it runs on (kernel= bounds where the
# truth differs), so a kernel that stops holding one fails here.
results=${UDPSEND_RESULTS_DIR:-.results}
mkdir -p "$results"
# tests/test_nic.py and the NIC incident run on the emulated NIC pairs the guest boots with.
# test_accounting and test_gso_checksum: a program's own EAGAIN and EIO counts against errno counted
# from outside (measure/sendtrace.py: sys_exit on 6.1, sock:sock_send_length from 6.3).
.venv/bin/python -m pytest tests/test_bpf.py tests/test_nic.py examples/test_eagain_story.py examples/test_wfree_timing.py \
  examples/lane/test_nic_incident.py examples/test_accounting.py examples/test_gso_checksum.py \
  -p no:cacheprovider --udpsend-require-privileges --udpsend-kernel "$image" --udpsend-backend bpf -rA \
  --udpsend-json "$results/lane-$version.json" --udpsend-label "runner=lane-$(echo "$version" | cut -d. -f1,2)"
.venv/bin/python ci/summarize.py "$results/lane-$version.json"
