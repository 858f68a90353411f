#!/usr/bin/env bash
# Installs the browser that the page's test (tests/it/page.rs) drives: Debian's `chromium` and
# `chromium-driver` packages (/usr/bin/chromium, /usr/bin/chromedriver, the same version).
#   scripts/setup-browser.sh      as root, or as a user who may run sudo
# Idempotent: returns at once when both commands are already on PATH. A first install takes a
# minute or two (apt-get update, then about 100 MB of packages) and downloads nothing else.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=()
# sudo resets the environment: it gets DEBIAN_FRONTEND through env.
[ "$(id -u)" -eq 0 ] || sudo=(sudo env DEBIAN_FRONTEND=noninteractive)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version
chromedriver --version
