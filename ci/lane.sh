#!/usr/bin/env bash
# The kernel lane in CI: prepare a Debian kernel with kprobes (ci/prepare-kernel.sh),
# then run the eBPF tests inside it through --udpsend-kernel, as ordinary test results.
#   ci/lane.sh [VERSION]      default 6.1.0-56-amd64 (Debian 12); 6.12.95+deb12-amd64 from backports
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-6.1.0-56-amd64}
[ -x .venv/bin/python ] || bash ci/setup-debian.sh
image=$(bash ci/prepare-kernel.sh "$version" | tail -n1)
# how the lane reports a guest that cannot finish: no hang, the console tail
UDPSEND_LANE_IMAGE="$image" .venv/bin/python -m pytest tests -p no:cacheprovider --udpsend-require-privileges -m lane
.venv/bin/python -m pytest tests/test_bpf.py -p no:cacheprovider --udpsend-require-privileges \
  --udpsend-kernel "$image" --udpsend-backend bpf -rA
