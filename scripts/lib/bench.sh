# What every benchmark script records beside its figures, so pages say where and how they were made.
# Sourced by scripts/bench-*.sh and scripts/profile-serve.sh (from the repository root).

# The load average (1, 5, 15 min).
load_average() { uptime | sed 's/.*load average: //'; }

# The three busiest processes now, as "name (N% CPU); ...".
busiest() { ps -eo pcpu=,comm= --sort=-pcpu | head -3 | awk '{printf "%s (%s%% CPU); ", $2, $1}'; }

# The commit, and whether the tree has uncommitted changes.
revision() {
  echo "$(git rev-parse --short HEAD)$([ -n "$(git status --porcelain)" ] && echo ", with uncommitted changes")"
}

# The CPU model and core count.
machine() { echo "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"; }

# The ONNX Runtime library scripts/setup-ort.sh installed, by file name.
ort_library() { basename "$(readlink -f third_party/onnxruntime/lib/libonnxruntime.so)"; }
