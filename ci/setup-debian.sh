#!/usr/bin/env bash
# Installs what pytest-udpsend needs on a fresh Debian 12 machine, as root:
# Debian packages with apt-get, then a venv (with system site-packages, so that
# Debian's python3-bpfcc is importable for the eBPF backend) holding the project.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
# sockperf and iperf3: real senders that examples/test_real_programs.py measures.  python3-bpfcc: the
# tracepoint backend on this host (without it, every host figure is the timestamp estimate and the
# examples' release-context claims are skipped).
for pkg in python3 python3-venv python3-dev gcc libc6-dev iproute2 util-linux procps sockperf iperf3 python3-bpfcc; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,examples]'
