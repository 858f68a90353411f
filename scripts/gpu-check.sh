#!/usr/bin/env bash
# The GPU check of issue #5 (docs/performance/gpu.md): CUDA vs CPU parity, then forward time over the batch × seq
# grid for the plain graph and the serving graph (1 task; 32 tasks all LoRA; 32 tasks with mixed DETs), with U and
# base sent from the host each run, resident on the device (IoBinding), and resident with CUDA graphs, in fp32 and
# fp16; one markdown table at the end, also written to $OUT/gpu-check.md.
#
#   scripts/gpu-check.sh prepare [DATA_DIR]
#                                  here, on the development machine (no GPU): builds and packs everything into
#                                  .gpu/c0 .. .gpu/cN (git-ignored) and writes the call plan to .gpu/plan.md; with
#                                  DATA_DIR (the task directories), also what stage 2 needs (below)
#   scripts/gpu-check.sh plan      prints .gpu/plan.md again
#   scripts/gpu-check.sh run       on the GPU machine, after the chunks were copied to /tmp/gc (the plan's last call)
#   scripts/gpu-check.sh selftest  here: unpacks the chunks into a scratch directory and runs `run` on the CPU with
#                                  small shapes, to check the packing, the steps and the summary before a device call
#
# What travels. A device call carries at most 64 MiB, the working tree included (about 10 MiB). The payload is one
# tar of three compressed members: ONNX Runtime's CUDA build (the PyPI wheel onnxruntime-gpu 1.31.1, packed by
# pack_ort_gpu below: 194 MB of xz), the bench binary (stripped, xz) and the MiniLM model directory
# with its serving graphs (serve, its one-DET variants serve_lora, serve_adapter, serve_prefix, plain, serve_fp16,
# plain_fp16) stored as ONNX external data in one weights.bin in
# which tensors shared between graphs are stored once (fp32 weights once for serve and plain, fp16 weights once
# for both fp16 graphs: 135 MB before xz). Nothing is exported on the GPU machine: its torch (2.11) is not the
# export's (2.15), and the packed graphs are byte-for-byte the ones tested here. The payload is cut into chunks of
# (61 MiB − the working tree) at most, one chunk per call.
#
# The device calls (prepare prints them with the actual chunk count; every call names no kind, so the first gets
# nvidia-h100-x1 and the rest keep it; make them one right after the other, the machine stays warm 30 s):
#   calls 1 .. N-1: run(carry=[".gpu/cK"], command="mkdir -p /tmp/gc && cp .gpu/cK/* /tmp/gc/ && ls -l /tmp/gc",
#                   timeout_s=120)
#   call N:         run(carry=[".gpu/cN"], command="mkdir -p /tmp/gc && cp .gpu/cN/* /tmp/gc/ && scripts/gpu-check.sh run",
#                   timeout_s=540)
#   then give_back. Budget (15 minutes of device time): a start (about 1 minute), N-1 transfers of about 20 s each,
#   the check itself (about 3 minutes expected, at most 8: every step has its own timeout), the idle 30 s after.
#   If the last call fails, the chunks are still in /tmp/gc while the machine is warm: rerun only
#   `scripts/gpu-check.sh run` (carry nothing), with GPU_CHECK_STEPS to pick steps (see below).
#
# Stage 2 on the GPU (issue 10), first when packed: `deltaspace tune` of z alone (the paper's setting) through LoRA
# in the default subspace, at the paper's budget of 5,000 steps, one seed, on the task(s) GPU_CHECK_STAGE2_TASKS
# (default trec) of DATA_DIR, with --provider cuda and a wall-time cap (GPU_CHECK_STAGE2_SECONDS, default 240: the
# host decodes δ = U z each step, about 60 ms at d = 1,024, so the cap may end it first; the trace shows how far it
# got). For it the payload adds the release `deltaspace` (stripped, xz), grad.onnx (its weights are serve's,
# stored once), the subspace (GPU_CHECK_SUBSPACE, default the model's default.safetensors) and the tasks' data.
# Its lines come back as stage2.jsonl (the tune output) and stage2-trace.jsonl (dev accuracy every 250 steps);
# the same command with --provider cpu and tune's default steps (1,000 since 2026-12-01; the pipeline's committed
# tables ran 500) is the CPU run to set beside it (docs/RESULTS.md).
#
# `run` settings (environment): GPU_CHECK_DIR (/tmp/gc), GPU_CHECK_PROVIDER (cuda), GPU_CHECK_SHAPES
# (1x64,8x64,32x64,128x64,256x64,64x128), GPU_CHECK_PARITY_SHAPES (8x64,64x128,256x64), GPU_CHECK_ROUNDS (20),
# GPU_CHECK_STEPS (stage2,parity-fp32,parity-fp16,time-fp32,time-fp16), GPU_CHECK_STEP_TIMEOUT (150 s; stage 2:
# its cap + 180 s), GPU_CHECK_STAGE2_STEPS (5000), GPU_CHECK_STAGE2_EVAL_EVERY (250), GPU_CHECK_STAGE2_FLAGS (more
# `tune` flags, for the selftest),
# GPU_CHECK_THREADS (8), GPU_CHECK_SITE_PACKAGES (the site-packages whose nvidia/ holds CUDA 13's libraries;
# default: the lent machine's PyTorch). Results: $OUT (default ./gpu-check-out): gpu-check.md, results.jsonl, one log per step.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
command=${1:-}

model=models/all-MiniLM-L6-v2
python=.venv-export/bin/python
gpu=.gpu
stage=$gpu/stage
ort_version=1.31.1

# pack_ort_gpu DIR: ONNX Runtime's CUDA libraries from the PyPI wheel onnxruntime-gpu, as one xz tar cut into
# four parts DIR/p0 .. DIR/p3 (a part per folder), with the whole tar's sha256 in DIR/p3/sha256.
pack_ort_gpu() {
  local dest=$1 scratch size
  scratch=$(mktemp -d)
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$scratch" "onnxruntime-gpu==$ort_version"
  "$python" -m zipfile -e "$scratch"/onnxruntime_gpu-*.whl "$scratch/wheel" > /dev/null
  tar -C "$scratch/wheel/onnxruntime/capi" -cf - "libonnxruntime.so.$ort_version" \
    libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so | nice xz -9 -T2 > "$scratch/ort-gpu.tar.xz"
  size=$(stat -c %s "$scratch/ort-gpu.tar.xz")
  rm -rf "$dest"
  (cd "$scratch" && split -b $(((size + 3) / 4)) -d -a 1 ort-gpu.tar.xz part-)
  for i in 0 1 2 3; do mkdir -p "$dest/p$i" && mv "$scratch/part-$i" "$dest/p$i/"; done
  sha256sum "$scratch/ort-gpu.tar.xz" | cut -d' ' -f1 > "$dest/p3/sha256"
  rm -rf "$scratch"
}

# pack_stage2 DATA_DIR: what stage 2 adds to the payload: the release deltaspace, the subspace, the tasks' data.
pack_stage2() {
  local data=$1 task
  local tasks=${GPU_CHECK_STAGE2_TASKS:-trec} subspace=${GPU_CHECK_SUBSPACE:-$model/subspaces/default.safetensors}
  for task in $tasks; do
    [ -f "$data/$task/train.jsonl" ] || { echo "no $data/$task/train.jsonl: DATA_DIR holds the task directories" >&2; exit 2; }
  done
  log "stage 2: the release deltaspace, $subspace, the data of $tasks"
  nice cargo build --quiet --release --locked --bin deltaspace
  strip -o "$stage/deltaspace" target/release/deltaspace
  xz -6 -T2 -c "$stage/deltaspace" > "$stage/deltaspace.xz"
  rm "$stage/deltaspace"
  cp "$subspace" "$stage/subspace.safetensors"
  tar -C "$data" -cf - $tasks | xz -6 -T2 > "$stage/data.tar.xz"
}

log() { echo "[gpu-check $(date -u +%H:%M:%S)] $*" >&2; }

# Bytes of the working tree that travels with every device call (tracked and untracked-not-ignored files).
tree_bytes() {
  # A tracked file deleted in the tree (a finished run's committed checkpoint) does not travel: not counted.
  (git ls-files -z; git ls-files -z --others --exclude-standard) | { xargs -0 stat -c %s 2>/dev/null || true; } \
    | awk '{s += $1} END {print s + 0}'
}

write_plan() {
  local n=$1 chunk_mib=$2 tree_mib=$3 stage2=$4 last=$(($1 - 1))
  {
    echo "# GPU check: the device calls"
    echo
    echo "Written by \`scripts/gpu-check.sh prepare\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit" \
      "$(git rev-parse --short HEAD)$([ -n "$(git status --porcelain)" ] && echo ', with uncommitted changes')."
    echo "$n chunks of at most $chunk_mib MiB; the working tree was $tree_mib MiB, so each call carries at most" \
      "$((chunk_mib + tree_mib)) MiB (limit 64). Make the calls one right after the other (the machine stays warm 30 s)."
    echo
    for ((k = 0; k < last; k++)); do
      echo "$((k + 1)). run(carry=[\".gpu/c$k\"], timeout_s=120, command=\"mkdir -p /tmp/gc && cp .gpu/c$k/* /tmp/gc/ && ls -l /tmp/gc\")"
    done
    if [ "$stage2" = 1 ]; then
      echo "$n. run(carry=[\".gpu/c$last\"], timeout_s=540, command=\"mkdir -p /tmp/gc && cp .gpu/c$last/* /tmp/gc/ && GPU_CHECK_STEPS=stage2 scripts/gpu-check.sh run\")"
      echo "$((n + 1)). run(carry=[], timeout_s=540, command=\"GPU_CHECK_STEPS=parity-fp32,parity-fp16,time-fp32,time-fp16 scripts/gpu-check.sh run\") — the performance check, if device time is left"
    else
      echo "$n. run(carry=[\".gpu/c$last\"], timeout_s=540, command=\"mkdir -p /tmp/gc && cp .gpu/c$last/* /tmp/gc/ && scripts/gpu-check.sh run\")"
    fi
    echo "$((n + 1 + stage2)). give_back() — unless rerunning at once: the chunks stay in /tmp/gc while the machine is warm, so a"
    echo "   rerun is run(carry=[], timeout_s=540, command=\"GPU_CHECK_STEPS=time-fp32 scripts/gpu-check.sh run\")."
    echo
    echo "The table is the end of the last call's output and \$OUT/gpu-check.md; copy it with the card's name into"
    echo "docs/PERFORMANCE.md and docs/performance/gpu.md."
  } > "$gpu/plan.md"
}

prepare() {
  local data=${1:-} stage2=0
  [ -z "$data" ] || stage2=1
  [ -f "$model/serve.onnx" ] && [ -f "$model/plain.onnx" ] \
    || { echo "no MiniLM export in $model: run scripts/run-main.sh (or export/export.py) first" >&2; exit 2; }
  [ -x "$python" ] || { echo "no $python: run scripts/setup-export-venv.sh" >&2; exit 2; }
  mkdir -p "$stage"

  for graph in serve plain; do
    if [ ! -f "$model/${graph}_fp16.onnx" ] || [ "$model/$graph.onnx" -nt "$model/${graph}_fp16.onnx" ]; then
      log "fp16 graphs (export/fp16.py, with the CPU accuracy check)"
      nice "$python" export/fp16.py --model "$model" --check 2> >(grep -v "shape inference" >&2)
      break
    fi
  done

  log "release build of the bench"
  local exe
  exe=$(nice cargo bench --bench forward --no-run --message-format=json 2>/dev/null \
    | "$python" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "forward" and m.get("executable"):
        print(m["executable"])' | tail -1)
  [ -x "$exe" ] || { echo "could not find the bench executable (cargo bench --bench forward --no-run)" >&2; exit 1; }
  strip -o "$stage/bench" "$exe"
  xz -6 -T2 -c "$stage/bench" > "$stage/bench.xz"
  rm "$stage/bench"

  if [ ! -f "$gpu/ort/p3/sha256" ]; then
    log "ONNX Runtime's CUDA build (pip download and xz -9, a few minutes)"
    pack_ort_gpu "$gpu/ort"
  fi
  cat "$gpu"/ort/p*/part-* > "$stage/ort-gpu.tar.xz"
  echo "$(cat "$gpu/ort/p3/sha256")  $stage/ort-gpu.tar.xz" | sha256sum -c --quiet

  rm -f "$stage/deltaspace.xz" "$stage/subspace.safetensors" "$stage/data.tar.xz"
  if [ "$stage2" = 1 ]; then pack_stage2 "$data"; fi

  log "packing the model (shared external data) and checking the packed graphs against the originals"
  rm -rf "$stage/model"
  GPU_CHECK_GRAD=$stage2 nice "$python" - "$model" "$stage/model" <<'PY'
"""Writes the serving graphs (and grad.onnx, for stage 2, when GPU_CHECK_GRAD=1) to OUT with their large
initializers in one weights.bin, each distinct tensor once, then checks with ONNX Runtime (CPU) that every packed
serving graph gives the same embeddings as its original, and that grad.onnx's initializers read back equal."""
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
for name in ("manifest.json", "tokenizer.json", "theta0.safetensors"):
    shutil.copyfile(src / name, out / name)
graphs = ("serve.onnx", "plain.onnx", "serve_fp16.onnx", "plain_fp16.onnx")
# The one-DET serving graphs, which the manifest lists and the loader checks for (their weights are serve's).
graphs += tuple(f"serve_{det}.onnx" for det in ("lora", "adapter", "prefix") if (src / f"serve_{det}.onnx").is_file())
grad = ("grad.onnx",) if os.environ.get("GPU_CHECK_GRAD") == "1" else ()
offsets, align = {}, 4096
with open(out / "weights.bin", "wb") as blob:
    for graph in graphs + grad:
        model = onnx.load(str(src / graph))
        for tensor in model.graph.initializer:
            data = tensor.raw_data
            if len(data) < 1024:
                continue
            key = hashlib.sha256(data).hexdigest()
            if key not in offsets:
                blob.write(b"\0" * (-blob.tell() % align))
                offsets[key] = blob.tell()
                blob.write(data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for k, v in (("location", "weights.bin"), ("offset", str(offsets[key])), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v
        onnx.save(model, str(out / graph))
        print(f"  {graph}: {(out / graph).stat().st_size:,} bytes without its weights", file=sys.stderr)
print(f"  weights.bin: {(out / 'weights.bin').stat().st_size:,} bytes, {len(offsets)} distinct tensors", file=sys.stderr)

rng = np.random.default_rng(0)
rows, seq, d = 3, 24, 4
feeds = {"input_ids": rng.integers(1000, 30000, (rows, seq)), "attention_mask": np.ones((rows, seq), np.int64)}
feeds["token_type_ids"] = np.zeros((rows, seq), np.int64)
feeds["z"] = rng.standard_normal((rows, d), dtype=np.float32)
feeds["det_select"] = np.eye(3, dtype=np.float32)[:rows]
for det in ("lora", "adapter", "prefix"):
    feeds[f"U_{det}"] = rng.standard_normal((73728, d), dtype=np.float32) * np.float32(0.01)
    feeds[f"base_{det}"] = rng.standard_normal(73728, dtype=np.float32) * np.float32(0.02)
options = ort.SessionOptions()
options.intra_op_num_threads = 2
for graph in graphs:
    results = []
    for path in (src / graph, out / graph):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        results.append(session.run(["embeddings"], {k: v for k, v in feeds.items() if k in names})[0])
    if not np.array_equal(results[0], results[1]):
        sys.exit(f"{graph}: the packed graph differs from the original")
    print(f"  {graph}: packed = original (identical embeddings)", file=sys.stderr)
for graph in grad:
    original = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(src / graph)).graph.initializer}
    packed = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out / graph)).graph.initializer}
    if original.keys() != packed.keys() or any(not np.array_equal(original[k], packed[k]) for k in original):
        sys.exit(f"{graph}: the packed initializers differ from the original's")
    print(f"  {graph}: packed = original ({len(original)} initializers equal)", file=sys.stderr)
PY
  tar -C "$stage" -cf - model | xz -6 -T2 > "$stage/model.tar.xz"
  rm -rf "$stage/model"

  log "payload and chunks"
  (cd "$stage" && tar -cf ../payload.tar ort-gpu.tar.xz bench.xz model.tar.xz \
    $([ "$stage2" = 1 ] && echo deltaspace.xz subspace.safetensors data.tar.xz))
  local tree_mib chunk_mib n
  tree_mib=$(( ($(tree_bytes) + 1048575) / 1048576 ))
  chunk_mib=$(( 61 - tree_mib ))
  [ "$chunk_mib" -gt 56 ] && chunk_mib=56
  [ "$chunk_mib" -ge 16 ] || { echo "the working tree is $tree_mib MiB: too large to carry chunks" >&2; exit 1; }
  rm -rf "$gpu"/c[0-9]*
  mkdir -p "$gpu/split"
  split -b "${chunk_mib}M" -d -a 1 "$gpu/payload.tar" "$gpu/split/part-"
  n=$(ls "$gpu/split" | wc -l)
  [ "$n" -le 10 ] || { echo "$n chunks: more than the 10 one-digit names" >&2; exit 1; }
  for ((k = 0; k < n; k++)); do
    mkdir -p "$gpu/c$k"
    mv "$gpu/split/part-$k" "$gpu/c$k/"
  done
  rmdir "$gpu/split"
  { echo "parts=$n"; (cd "$gpu" && sha256sum payload.tar); } > "$gpu/c$((n - 1))/payload.sha256"
  rm "$gpu/payload.tar"
  ls -l "$stage" "$gpu"/c*/ >&2
  write_plan "$n" "$chunk_mib" "$tree_mib" "$stage2"
  cat "$gpu/plan.md"
}

run() {
  local dir=${GPU_CHECK_DIR:-/tmp/gc}
  local provider=${GPU_CHECK_PROVIDER:-cuda}
  local shapes=${GPU_CHECK_SHAPES:-1x64,8x64,32x64,128x64,256x64,64x128}
  local parity_shapes=${GPU_CHECK_PARITY_SHAPES:-8x64,64x128,256x64}
  local rounds=${GPU_CHECK_ROUNDS:-20}
  local steps=${GPU_CHECK_STEPS:-stage2,parity-fp32,parity-fp16,time-fp32,time-fp16}
  local step_timeout=${GPU_CHECK_STEP_TIMEOUT:-150}
  local threads=${GPU_CHECK_THREADS:-8}
  # Step outputs go to $dir/out; $OUT gets four files (a device call returns at most eight).
  local out=$dir/out final=${OUT:-$repo/gpu-check-out}
  rm -rf "$out" && mkdir -p "$out" "$final"
  local x=$dir/x
  [ -f "$dir/payload.sha256" ] || { echo "no $dir/payload.sha256: the last chunk has not been copied there" >&2; exit 2; }
  # Unpacked once per payload: a rerun on the same warm machine starts at the steps.
  if ! cmp -s "$dir/payload.sha256" "$x/payload.sha256"; then
    local n
    n=$(sed -n 's/^parts=//p' "$dir/payload.sha256")
    for ((k = 0; k < n; k++)); do
      [ -f "$dir/part-$k" ] || { echo "chunk $k of $n is missing in $dir: carry .gpu/c$k again" >&2; exit 2; }
    done
    log "assembling $n chunks"
    for ((k = 0; k < n; k++)); do cat "$dir/part-$k"; done > "$dir/payload.tar"
    (cd "$dir" && tail -1 payload.sha256 | sha256sum -c --quiet)
    rm -rf "$x" && mkdir -p "$x/ort"
    tar -C "$x" -xf "$dir/payload.tar" && rm "$dir/payload.tar"
    tar -C "$x/ort" -xJf "$x/ort-gpu.tar.xz" && rm "$x/ort-gpu.tar.xz"
    tar -C "$x" -xJf "$x/model.tar.xz" && rm "$x/model.tar.xz"
    xz -dc "$x/bench.xz" > "$x/bench" && chmod +x "$x/bench" && rm "$x/bench.xz"
    if [ -f "$x/deltaspace.xz" ]; then
      xz -dc "$x/deltaspace.xz" > "$x/deltaspace" && chmod +x "$x/deltaspace" && rm "$x/deltaspace.xz"
      mkdir -p "$x/data" && tar -C "$x/data" -xJf "$x/data.tar.xz" && rm "$x/data.tar.xz"
    fi
    cp "$dir/payload.sha256" "$x/payload.sha256"
  fi
  export ORT_DYLIB_PATH=$x/ort/libonnxruntime.so.$ort_version
  # The CUDA 13 libraries of a PyTorch install (docs/design/gpu.md), the toolkit's copies as a fallback.
  # GPU_CHECK_SITE_PACKAGES names that install's site-packages; the default is where the lent GPU machine has it.
  local sp=${GPU_CHECK_SITE_PACKAGES:-/opt/torch/.venv/lib/python3.12/site-packages}
  export LD_LIBRARY_PATH=$sp/nvidia/cu13/lib:$sp/nvidia/cudnn/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  local card="no GPU (provider $provider)"
  if command -v nvidia-smi > /dev/null; then
    card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
  fi
  log "card: $card; ORT $ORT_DYLIB_PATH; steps $steps"
  if [ "$provider" = cuda ]; then
    # Libraries the CUDA provider cannot find say at once why CUDA will not start.
    ldd "$x/ort/libonnxruntime_providers_cuda.so" | grep "not found" >&2 && log "missing libraries above" || true
  fi
  local bench=("$x/bench" --model "$x/model" --provider "$provider" --threads "$threads"
    --cases plain,serve_one,serve_32_lora,serve_mixed --resident --cuda-graphs)
  local fp16=(--serve-graph serve_fp16.onnx --plain-graph plain_fp16.onnx --label fp16)
  # step NAME [--timeout S] COMMAND...: runs COMMAND if NAME is in the steps; its stdout goes to NAME.txt.
  step() {
    local name=$1 limit=$step_timeout; shift
    [ "$1" = --timeout ] && { limit=$2; shift 2; }
    [[ ",$steps," == *",$name,"* ]] || return 0
    log "step $name: $*"
    local started=$SECONDS rc=0
    timeout "$limit" "$@" > "$out/$name.txt" 2> "$out/$name.log" || rc=$?
    echo "$name rc=$rc $((SECONDS - started))s" >> "$out/steps.txt"
    [ "$rc" = 0 ] || { log "step $name failed (rc $rc); its log ends:"; tail -5 "$out/$name.log" >&2; }
    grep -h '^warning' "$out/$name.log" >&2 || true
  }
  : > "$out/steps.txt"
  if [ -x "$x/deltaspace" ]; then
    local cap=${GPU_CHECK_STAGE2_SECONDS:-240} tasks=() t
    for t in "$x"/data/*/; do tasks+=(--data "${t%/}"); done
    # The tune lines go to stage2.jsonl, not stage2.txt: the summary reads the bench's lines from *.txt.
    step stage2 --timeout $((cap + 180)) bash -c '"$@" > "'"$out"'/stage2.jsonl"' stage2 \
      "$x/deltaspace" tune --model "$x/model" --subspace "$x/subspace.safetensors" "${tasks[@]}" --det lora \
      --head none --init normal --steps "${GPU_CHECK_STAGE2_STEPS:-5000}" --seed 1 --provider "$provider" --threads "$threads" \
      --eval-every "${GPU_CHECK_STAGE2_EVAL_EVERY:-250}" --patience 0 --max-seconds "$cap" \
      --trace "$out/stage2-trace.jsonl" --trace-split dev \
      ${GPU_CHECK_STAGE2_FLAGS:-} --out "$out/stage2-tasks"
  fi
  step parity-fp32 "${bench[@]}" --parity --shapes "$parity_shapes"
  step parity-fp16 "${bench[@]}" "${fp16[@]}" --parity --shapes "$parity_shapes"
  step time-fp32 "${bench[@]}" --shapes "$shapes" --rounds "$rounds" --warmup 3 --label fp32
  step time-fp16 "${bench[@]}" "${fp16[@]}" --shapes "$shapes" --rounds "$rounds" --warmup 3
  summary "$out" "$card"
  cp "$out/gpu-check.md" "$out/results.jsonl" "$final/"
  for f in stage2.jsonl stage2-trace.jsonl; do [ ! -f "$out/$f" ] || cp "$out/$f" "$final/"; done
  for f in "$out"/*.txt; do echo "== $(basename "$f")"; cat "$f"; done > "$final/raw.txt"
  for f in "$out"/*.log; do echo "== $(basename "$f")"; cat "$f"; done > "$final/logs.txt"
  log "results in $final: gpu-check.md (the table above), results.jsonl, raw.txt (step outputs), logs.txt"
}

summary() {
  local out=$1 card=$2
  local py=python3
  command -v "$py" > /dev/null || py=$repo/$python
  "$py" - "$out" "$card" <<'PY'
"""One markdown table (three parts) from the JSON lines of the steps; goals from issue #5."""
import json
import sys
from pathlib import Path

out, card = Path(sys.argv[1]), sys.argv[2]
records = []
for path in sorted(out.glob("*.txt")):
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
(out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
timing = [r for r in records if not r.get("parity")]
parity = [r for r in records if r.get("parity")]
steps = (out / "steps.txt").read_text().split("\n") if (out / "steps.txt").exists() else []
provider = next((r["provider"] for r in timing + parity if "provider" in r), "?")
lines = [f"## GPU check: {card}", "", f"Provider {provider}; steps: " + "; ".join(s for s in steps if s) + ".", ""]
CASES = ("plain", "serve_one", "serve_32_lora", "serve_mixed")
if timing:
    rounds = timing[0]["rounds"]
    lines += [
        f"Median ms per run over {rounds} interleaved rounds (min in brackets); rows of 'mixed' are 32 tasks with "
        "LoRA/Adapter/Prefix cycling. ×plain = plain median / case median through the same variant and path "
        "(the throughput ratio; the goal is ≥ 0.9), ×best = against the fastest plain of any variant and path.",
        "",
        "| variant | path | batch × seq | plain | serve_one | serve_32_lora | serve_mixed | mixed ×plain | mixed ×best | mixed seq/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = {}
    for r in timing:
        base = r["case"].split("+")[0]
        table.setdefault((r["variant"], r["path"], r["batch"], r["seq"]), {})[base] = r
    best_plain = {}
    for (variant, path, b, s), cells in table.items():
        if "plain" in cells:
            best_plain[(b, s)] = min(best_plain.get((b, s), 1e18), cells["plain"]["median_ms"])
    order = {"host": 0, "resident": 1, "graph": 2}
    for key in sorted(table, key=lambda k: (k[0] != "fp32", k[0], order.get(k[1], 9), k[2] * k[3], k[2])):
        cells = table[key]
        text = [f"{cells[c]['median_ms']:.2f} ({cells[c]['min_ms']:.2f})" if c in cells else "–" for c in CASES]
        mixed, plain = cells.get("serve_mixed"), cells.get("plain")
        ratio = f"{plain['median_ms'] / mixed['median_ms']:.2f}" if mixed and plain else "–"
        best = f"{best_plain[key[2:]] / mixed['median_ms']:.2f}" if mixed and key[2:] in best_plain else "–"
        rate = f"{mixed['seq_per_s']:,.0f}" if mixed else "–"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} × {key[3]} | " + " | ".join(text) + f" | {ratio} | {best} | {rate} |")
    lines += ["", "Goals (serve_mixed):", ""]
    combos = sorted({k[:2] for k in table})
    for variant, path in combos:
        ratios = [c["plain"]["median_ms"] / c["serve_mixed"]["median_ms"] for k, c in table.items()
                  if k[:2] == (variant, path) and "plain" in c and "serve_mixed" in c]
        if ratios:
            verdict = "met" if min(ratios) >= 0.9 else "not met"
            lines.append(f"- {variant}, {path}: lowest mixed ×plain over the batch sizes {min(ratios):.2f} "
                         f"(≥ 0.9: {verdict})")
    for (b, s), limit in (((256, 64), 2.0), ((1, 64), 0.5)):
        runs = [(c["serve_mixed"]["median_ms"], k[0], k[1]) for k, c in table.items()
                if k[2:] == (b, s) and "serve_mixed" in c]
        if runs:
            ms, variant, path = min(runs)
            lines.append(f"- {b} × {s} in ≤ {limit} ms: best {ms:.2f} ms ({variant}, {path}): "
                         f"{'met' if ms <= limit else 'not met'}")
    lines.append("")
if parity:
    lines += [
        f"Parity: embeddings of each variant and path on {provider} against fp32 on "
        f"{parity[0].get('reference_provider', 'the CPU')} (host path), worst over "
        "shapes " + ", ".join(sorted({f"{r['batch']}×{r['seq']}" for r in parity if 'batch' in r})) + " and the "
        "four cases.",
        "",
        "| variant | path | max abs | max rel | min cosine | all finite | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = {}
    for r in parity:
        groups.setdefault((r.get("variant", "?"), r.get("path", "?")), []).append(r)
    for (variant, path), rs in sorted(groups.items()):
        ok = [r for r in rs if "error" not in r]
        failures = len(rs) - len(ok)
        if ok:
            lines.append(f"| {variant} | {path} | {max(r['max_abs'] for r in ok):.1e} | "
                         f"{max(r['max_rel'] for r in ok):.1e} | {min(r['min_cosine'] for r in ok):.6f} | "
                         f"{all(r['finite'] for r in ok)} | {failures} |")
        else:
            lines.append(f"| {variant} | {path} | – | – | – | – | {failures}: {rs[0]['error'][:120]} |")
    lines.append("")
if not records:
    lines.append("No step produced results: see the step logs in $OUT.")
text = "\n".join(lines)
(out / "gpu-check.md").write_text(text + "\n")
print(text)
PY
}

selftest() {
  [ -f "$gpu/plan.md" ] || { echo "run scripts/gpu-check.sh prepare first" >&2; exit 2; }
  local scratch=${GPU_CHECK_SELFTEST_DIR:-/tmp/gpu-check-selftest}
  rm -rf "$scratch" && mkdir -p "$scratch/gc"
  cp "$gpu"/c*/* "$scratch/gc/"
  log "selftest: the run step on the CPU, small shapes, in $scratch"
  OUT=$scratch/out GPU_CHECK_DIR=$scratch/gc GPU_CHECK_PROVIDER=cpu GPU_CHECK_THREADS=2 \
    GPU_CHECK_SHAPES=${GPU_CHECK_SHAPES:-2x16,4x32} GPU_CHECK_PARITY_SHAPES=${GPU_CHECK_PARITY_SHAPES:-2x16} \
    GPU_CHECK_ROUNDS=${GPU_CHECK_ROUNDS:-2} GPU_CHECK_STAGE2_STEPS=${GPU_CHECK_STAGE2_STEPS:-4} \
    GPU_CHECK_STAGE2_EVAL_EVERY=2 GPU_CHECK_STAGE2_FLAGS=${GPU_CHECK_STAGE2_FLAGS:---max-examples 48} nice "$0" run
}

case "$command" in
  prepare) prepare "${2:-}" ;;
  plan) cat "$gpu/plan.md" ;;
  run) run ;;
  selftest) selftest ;;
  *) echo "usage: $0 prepare|plan|run|selftest (see the header of this script)" >&2; exit 2 ;;
esac
