#!/usr/bin/env bash
# Sets up (ci/setup-debian.sh) and runs the project's own tests.  Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup-debian.sh
# The tests render the docs and a report in a real browser (tests/test_browser_render.py): there, a
# missing chromium is a failure, not a skip.
if ! command -v chromium >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
export UDPSEND_NEED_CHROMIUM=1
.venv/bin/ruff check pytest_udpsend tests ci examples
.venv/bin/ruff format --check pytest_udpsend tests ci examples docs/hooks
.venv/bin/mypy pytest_udpsend
bash ci/docs.sh
# Tests that disturb the host on purpose run alone, after the others ran two at a time.
.venv/bin/python -m pytest tests -p no:cacheprovider -n 2 --udpsend-require-privileges -m "not isolated and not lane and not bpf and not nic" "$@"
.venv/bin/python -m pytest tests -p no:cacheprovider --udpsend-require-privileges -m "isolated" "$@"
# The main job: every example must hold on this host's kernel.
mkdir -p "${UDPSEND_RESULTS_DIR:-.results}"
bash ci/examples.sh -q --udpsend-json "${UDPSEND_RESULTS_DIR:-.results}/examples-host.json" --udpsend-label runner=host
.venv/bin/python ci/summarize.py "${UDPSEND_RESULTS_DIR:-.results}/examples-host.json"
# The eBPF tests and the lane examples in kernels that have kprobes (this host's may not): the
# kernel lane, on both sides of the upgrade the project exists for (6.1 -> 6.12).
if [ "${UDPSEND_SKIP_LANE:-0}" != 1 ]; then
  bash ci/lane.sh 6.1.0-56-amd64 --behaviour
  bash ci/lane.sh 6.12.95+deb12-amd64
  # Fan-in: this host's and the lanes' files as three runners, merged, reported, compared with the last run's
  bash ci/fanin.sh
fi
