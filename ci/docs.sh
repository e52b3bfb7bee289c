#!/usr/bin/env bash
# Builds the docs site (mkdocs + Material, the `docs` extra) and fails on any warning.
# The reference pages are generated from the code at build time (docs/hooks/reference.py).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip install -q --disable-pip-version-check -e '.[docs]'
out=${UDPSEND_DOCS_DIR:-$(mktemp -d)}
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$out"
echo "docs built in $out"
