#!/usr/bin/env bash
# Where the server's CPU time goes under load (docs/PERFORMANCE.md, "Profile"): runs benches/http.rs with 1 and
# TASKS registered tasks and, while the second level is under load, samples the server process with
# `perf record -e cpu-clock` (software clock: works where hardware counters are not exposed). Prints the share of
# samples per library (ONNX Runtime vs deltaspace vs libc vs kernel) and the top symbols outside ONNX Runtime.
#   scripts/profile-serve.sh [TASKS] [SECONDS]        # defaults: 10000 tasks, 15 s of sampling
# Writes docs/performance/profile.md; raw output in bench-out/profile/ (perf.data). Needs perf (Debian: linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
command="scripts/profile-serve.sh $*"
tasks="${1:-10000}"
seconds="${2:-15}"
out=bench-out/profile
mkdir -p "$out"
scripts/setup-ort.sh >/dev/null
cargo build --quiet --release --locked --bin deltaspace
cargo bench --quiet --locked --bench http --no-run
rm -rf "$out/runs"
cargo bench --quiet --locked --bench http -- --counts "1,$tasks" --seconds $((seconds + 10)) --runs "$out/runs" \
  > "$out/http.txt" &
bench=$!
trap 'kill "$bench" 2>/dev/null || true' EXIT  # an early exit leaves no bench (and its server) running
log="$out/runs/tasks-$tasks/server.log"
until [ -s "$log" ] || ! kill -0 "$bench" 2>/dev/null; do sleep 0.5; done
pid=$(pgrep -f -n "deltaspace --config $out/runs/tasks-$tasks/deltaspace.toml") || { echo "no server found" >&2; exit 1; }
until grep -q ' ready' "$log"; do
  kill -0 "$pid" 2>/dev/null || { echo "the server exited before it was ready: $log" >&2; exit 1; }
  sleep 0.5
done
sleep 8  # past the warm-up
perf record -e cpu-clock -F 999 -p "$pid" -o "$out/perf.data" -- sleep "$seconds" 2> "$out/perf-record.txt"
wait "$bench"
set +o pipefail  # `perf report | head` ends with SIGPIPE by design
{
  echo "# Where the server's CPU time goes under load"
  echo
  echo "Written by \`${command% }\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(revision)."
  echo "Machine: $(machine). \`perf record -e cpu-clock -F 999\` on"
  echo "the \`deltaspace serve\` process only (MiniLM, CPU, $tasks registered tasks, closed-loop predictions from"
  echo "benches/http.rs), for $seconds s after the warm-up. Shares are of that process's samples."
  echo
  echo "## Samples by library"
  echo
  echo '```'
  perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
  echo '```'
  echo
  echo "## Top symbols outside ONNX Runtime"
  echo
  echo '```'
  perf report -i "$out/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' \
    | grep -v libonnxruntime | head -25
  echo '```'
  echo
  echo "The HTTP figures of that run (they are slower than docs/performance/http.md's: perf runs beside them):"
  echo
  grep '^|' "$out/http.txt"
} > docs/performance/profile.md
echo "wrote docs/performance/profile.md" >&2
