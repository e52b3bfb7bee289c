#!/usr/bin/env bash
# Sets up (ci/setup-debian.sh) and runs the project's own tests.  Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup-debian.sh
exec .venv/bin/python -m pytest tests -p no:cacheprovider -n 2 --udpsend-require-privileges "$@"
