#!/usr/bin/env bash
# This project's spelling of `udpsend prepare-kernel VERSION [DEST]` (see the script it runs).
set -euo pipefail
cd "$(dirname "$0")/.."
UDPSEND_PYTHON=.venv/bin/python exec bash pytest_udpsend/lane/prepare-kernel.sh "$@"
