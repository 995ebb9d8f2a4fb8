#!/usr/bin/env bash
# Installs headless Chromium and ChromeDriver from Debian's packages, for the test that drives
# `charrnn serve`'s page in a real browser (tests/serve.rs). Does nothing where both are there.
# Needs root (as in CI) and Debian's package mirror.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-browser: not root; install chromium and chromium-driver by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
echo "install-browser: $(/usr/bin/chromium --version)" >&2
