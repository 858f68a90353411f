#!/usr/bin/env bash
# Crash-safety soak (docs/RELIABILITY.md): SIGKILLs `deltaspace serve` KILLS times (default 200)
# in the middle of concurrent uploads (creates, replacements, deletes from 4 clients), restarting
# it on the same data directory each time. After every kill the SQLite file must pass
# `PRAGMA integrity_check` with every row a whole task; after every restart every acknowledged
# write must be served exactly as sent, every served task must be one a client sent, and a probe
# task must answer exactly as before. CI runs the same test with 5 kills.
#   scripts/soak-crash.sh [KILLS] [SEED]        loopback only; about 0.3 s per kill on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-200}"
seed="${2:-1}"
scripts/setup-ort.sh
echo "crash soak: $kills kills, seed $seed, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >&2
DELTASPACE_CRASH_KILLS="$kills" DELTASPACE_CRASH_SEED="$seed" \
  nice -n 19 cargo test --locked --test it -- reliability::crash --nocapture
