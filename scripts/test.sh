#!/usr/bin/env bash
# Sets up what the tests need and runs every test: Rust (unit + integration, on the committed
# tiny model) and the export's Python tests (ONNX vs PyTorch; MiniLM checks run when its export
# is present, otherwise they are skipped with the reason).
# First run on a fresh machine: ~10 minutes (torch venv ~4 min, cold cargo build ~4 min).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-system.sh   # Debian packages the build and scripts need (idempotent)
scripts/setup-ort.sh
scripts/setup-export-venv.sh
scripts/setup-browser.sh
scripts/setup-postgres.sh
cargo test --workspace --locked
# MiniLM against sentence-transformers, where the export is here (scripts/run-main.sh makes it).
if [ -f models/all-MiniLM-L6-v2/serve.onnx ]; then cargo test --locked --test it -- --ignored; fi
scripts/contract.sh target/debug/deltaspace   # the OpenAPI contract: schemathesis against a live server (issue 13)
scripts/check-deploy.sh                       # deploy/: hadolint, manifests validated offline (issue 12)
.venv-export/bin/python -m pytest export/tests -q
