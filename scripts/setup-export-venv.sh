#!/usr/bin/env bash
# Creates .venv-export with the pinned export requirements (PyTorch and friends).
# Needed only to export graphs and run the Python tests; the Rust binary never needs it.
# First run: about 3-5 minutes and 6 GB (PyPI's torch wheel pulls CUDA libraries). Re-runs are instant.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-export
stamp="$venv/.requirements.sha256"
want=$(sha256sum export/requirements.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -r export/requirements.txt
echo "$want" > "$stamp"
echo "export venv ready: $venv"
