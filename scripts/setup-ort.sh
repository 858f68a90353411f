#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library from PyPI into third_party/onnxruntime/lib.
#   scripts/setup-ort.sh          CPU build   (wheel `onnxruntime`,     ~30 MB library)
#   scripts/setup-ort.sh --gpu    CUDA 13     (wheel `onnxruntime-gpu`, adds the CUDA provider, ~300 MB)
# deltaspace loads the library at run time (ort's load-dynamic): nothing is compiled or linked.
# Idempotent: returns at once when the library is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.31.1
package=onnxruntime
[ "${1:-}" = "--gpu" ] && package=onnxruntime-gpu
lib=third_party/onnxruntime/lib
marker="$lib/.$package-$version"
# The GPU build runs on CPU too, so a CPU request is met by either; a GPU request only by its own.
ready() { [ -f "$lib/.$1-$version" ] && [ -f "$lib/libonnxruntime.so.$version" ]; }
if ready "$package" || { [ "$package" = onnxruntime ] && ready onnxruntime-gpu; }; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  --dest "$tmp" "$package==$version"
mkdir -p "$lib"
python3 - "$tmp" "$lib" <<'PY'
import os, pathlib, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(src.glob("*.whl"))
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        base = name.rsplit("/", 1)[-1]
        if "/capi/" in name and base.startswith("libonnxruntime") and ".so" in base:
            # Written beside, then renamed: a process that has the old library mapped (a long run) keeps
            # its own file, where writing over it in place could crash it.
            partial = dst / f"{base}.partial"
            partial.write_bytes(zf.read(name))
            os.replace(partial, dst / base)
            print("  extracted", base)
PY
ln -sf "libonnxruntime.so.$version" "$lib/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.$version" "$lib/libonnxruntime.so"
rm -f "$lib"/.onnxruntime-*   # one library, so one marker: the other build's is gone
touch "$marker"
echo "ONNX Runtime $version ($package) ready in $lib"
