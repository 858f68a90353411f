#!/usr/bin/env bash
# Creates .venv-export with the pinned export requirements (PyTorch and friends).
# Needed only to export graphs and run the Python tests; the Rust binary never needs it.
# First run: about 3-5 minutes and 6 GB (PyPI's torch wheel pulls CUDA libraries), plus about 3 GB of downloads
# while it installs (no pip cache is kept). Re-runs are instant.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-export
stamp="$venv/.requirements.sha256"
want=$(sha256sum export/requirements.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# Refuse early, with the reason, rather than fail half-way through torch with ENOSPC; a venv left by an install
# that failed part-way has most of it already, so it is completed whatever the free space.
need_gb=10
free_gb=$(( $(df --output=avail -k . | tail -1) / 1024 / 1024 ))
if [ ! -d "$venv" ] && [ "$free_gb" -lt "$need_gb" ]; then
  echo "setup-export-venv: $free_gb GB free on $(df --output=target . | tail -1), need about $need_gb GB" \
    "for $venv (free space, for example with 'cargo clean', and run again)" >&2
  exit 1
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --no-cache-dir --upgrade pip
"$venv/bin/pip" install --quiet --no-cache-dir -r export/requirements.txt
echo "$want" > "$stamp"
echo "export venv ready: $venv"
