#!/usr/bin/env bash
# Replicas on a shared PostgreSQL task store (scripts/bench_replicas.py): propagation delay p50/p99 from an
# acknowledged PUT on replica A to the new generation served by replica B, and uploads per second through
# PostgreSQL against the embedded SQLite store. Writes docs/performance/replicas.md.
#   scripts/bench-replicas.sh [--writes 300] [--uploads 2000] [--clients 4]
# Needs the MiniLM export (scripts/run-main.sh makes it) and PostgreSQL's binaries (scripts/setup-postgres.sh);
# starts and stops its own PostgreSQL. A few minutes on 2 cores; run it on an otherwise idle machine (the page
# records the load average).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
command="scripts/bench-replicas.sh $*"
out=bench-out/replicas
mkdir -p "$out" docs/performance
scripts/setup-ort.sh >/dev/null
scripts/setup-postgres.sh >/dev/null
if [ ! -f models/all-MiniLM-L6-v2/serve.onnx ]; then
  echo "models/all-MiniLM-L6-v2/serve.onnx is missing: run scripts/run-main.sh once (it exports the model)" >&2
  exit 2
fi
# Build first, so no compile runs beside the timings.
cargo build --quiet --release --locked --bin deltaspace
load_before=$(load_average)
busy=$(busiest)
python3 scripts/bench_replicas.py --json "$out/result.json" "$@" | tee "$out/result.md"
load_after=$(load_average)
{
  echo "# Replicas on a shared PostgreSQL task store"
  echo
  echo "Written by \`${command% }\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(revision)."
  echo "Machine: $(machine); ONNX Runtime $(ort_library), CPU execution provider; PostgreSQL on the same machine."
  echo "Load average (1, 5, 15 min) before: $load_before; after: $load_after. Busiest processes at the start: ${busy%; }."
  echo
  echo "What runs (scripts/bench_replicas.py): two release \`deltaspace serve\` replicas on MiniLM sharing one"
  echo "PostgreSQL database (fsync on), then one server on its SQLite store (\`synchronous = FULL\`). A write is"
  echo "acknowledged after its commit; B hears of it through LISTEN/NOTIFY, reads the change from the store and"
  echo "serves it. B is polled every 0.5 ms, so a delay includes up to that and one GET."
  echo
  cat "$out/result.md"
} > docs/performance/replicas.md
echo "wrote docs/performance/replicas.md"
