#!/usr/bin/env bash
# Installs the Debian packages that building deltaspace and running its scripts need beyond Rust and
# Python 3.11 themselves:
#   gcc, make (build-essential)    crates that compile C (SQLite, bundled by rusqlite)
#   pkg-config, libssl-dev         openssl-sys, under native-tls (the PostgreSQL store's TLS)
#   python3-venv, python3-pip      scripts/setup-ort.sh (pip download) and the export venv
#   curl                           scripts/contract.sh and the README's session
#   scripts/setup-system.sh        as root, or as a user who may run sudo
# Idempotent: returns at once when every one is present. scripts/run-main.sh and scripts/test.sh call it first.
set -euo pipefail
missing=()
command -v cc >/dev/null && command -v make >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# openssl's headers, looked for where openssl-sys looks (pkg-config cannot answer before it is installed).
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v curl >/dev/null || missing+=(curl)
[ "${#missing[@]}" -eq 0 ] && exit 0
sudo=()
# sudo resets the environment: it gets DEBIAN_FRONTEND through env.
[ "$(id -u)" -eq 0 ] || sudo=(sudo env DEBIAN_FRONTEND=noninteractive)
export DEBIAN_FRONTEND=noninteractive
echo "setup-system: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
