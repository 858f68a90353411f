#!/usr/bin/env bash
# Sets up everything the default needs and runs the main job on all-MiniLM-L6-v2 (CPU):
#   0. Debian packages the build needs (scripts/setup-system.sh)
#   1. ONNX Runtime's library from PyPI (scripts/setup-ort.sh)
#   2. the export venv (scripts/setup-export-venv.sh) and the MiniLM export (export/export.py)
#   3. a release build of deltaspace
#   4. the main job: `deltaspace serve` on 127.0.0.1:8080 with the bundled example tasks.
# Extra arguments go to `deltaspace serve` (e.g. --bind 0.0.0.0:8080).
# First run on a fresh machine: about 15 minutes (venv ~4, export ~2, release build ~9). Later: seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-system.sh   # Debian packages the build and scripts need (idempotent)
model=models/all-MiniLM-L6-v2
scripts/setup-ort.sh
# Export when the graphs are missing or older than the interface this build speaks (logit_bias: heads;
# serve_lora: the one-DET serving graphs; grad_z.onnx: a graph since removed, which the export's tests reject).
if [ ! -f "$model/serve.onnx" ] || [ ! -f "$model/grad.onnx" ] || ! grep -q '"logit_bias"' "$model/manifest.json" \
  || ! grep -q '"serve_lora"' "$model/manifest.json" || grep -q '"grad_z.onnx"' "$model/manifest.json"; then
  scripts/setup-export-venv.sh
  rm -f "$model/grad_z.onnx"  # the export writes the graphs it has and leaves others
  .venv-export/bin/python export/export.py --out "$model"
fi
cargo build --release --locked
# The main job: the HTTP server on 127.0.0.1:8080 with the default subspace and the bundled example
# tasks (config/deltaspace.toml). Ctrl-C stops it gracefully. The README has a curl session to paste.
exec target/release/deltaspace serve "$@"
