#!/usr/bin/env bash
# Sets up (ci/setup-debian.sh) and runs the example suite in examples/ (the main job).  Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup-debian.sh
# examples/lane/ needs the lane's emulated NICs: collected only with --udpsend-kernel (ci/lane.sh runs it).
exec .venv/bin/python -m pytest examples -p no:cacheprovider --udpsend-require-privileges "$@"
