#!/usr/bin/env bash
# Installs what the PostgreSQL store's tests (tests/it/pg.rs, tests/it/postgres.rs, tests/it/store.rs)
# need: Debian's PostgreSQL server binaries (/usr/lib/postgresql/*/bin) and openssl (a self-signed
# certificate for the TLS test). The tests use no system service: each run starts its own servers
# with initdb and pg_ctl in a temporary directory, as the `postgres` user when run as root. (On a
# host running systemd, Debian's package also starts its own `15/main` cluster on port 5432; the
# tests choose free ports, so it is left alone.)
#   scripts/setup-postgres.sh      as root, or as a user who may run sudo
# Idempotent: returns at once when both are present.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && command -v openssl >/dev/null; then
  exit 0
fi
sudo=()
# sudo resets the environment: it gets DEBIAN_FRONTEND through env.
[ "$(id -u)" -eq 0 ] || sudo=(sudo env DEBIAN_FRONTEND=noninteractive)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql openssl >/dev/null
ls -d /usr/lib/postgresql/*/bin
