#!/usr/bin/env bash
# Sets up (ci/setup-debian.sh) and runs the example suite in examples/ (the main job).  Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup-debian.sh
# test_nic_incident.py needs the lane's emulated vmxnet3 pair: ci/lane.sh runs it in the guest.
exec .venv/bin/python -m pytest examples -p no:cacheprovider --udpsend-require-privileges \
  --ignore=examples/test_nic_incident.py "$@"
