#!/usr/bin/env bash
# Sets up everything the default needs and runs the main job on all-MiniLM-L6-v2 (CPU):
#   1. ONNX Runtime's library from PyPI (scripts/setup-ort.sh)
#   2. the export venv (scripts/setup-export-venv.sh) and the MiniLM export (export/export.py)
#   3. a release build of deltaspace
#   4. the main job: classify example sentences with the bundled example task.
# First run on a fresh machine: ~20 minutes (venv ~4, export ~5, release build ~9). Later: seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
model=models/all-MiniLM-L6-v2
scripts/setup-ort.sh
if [ ! -f "$model/serve.onnx" ] || [ ! -f "$model/grad.onnx" ]; then
  scripts/setup-export-venv.sh
  .venv-export/bin/python export/export.py --out "$model"
fi
cargo build --release --locked
bin=target/release/deltaspace
if [ ! -f "$model/subspaces/random-d16-seed42.safetensors" ]; then
  "$bin" subspace random --model "$model" --dim 16 --seed 42 --out "$model/subspaces/random-d16-seed42.safetensors"
fi
"$bin" predict --model "$model" --subspace "$model/subspaces/random-d16-seed42.safetensors" \
  --task "$model/tasks/sst2.json" \
  "a gorgeous, witty, seductive movie." \
  "the plot is nowhere near as clever as it thinks it is." \
  "an utterly forgettable exercise in tedium."
