#!/usr/bin/env bash
# Debian's Chromium for the App tests (Playwright drives it; its own browser download is not used).
# Installs with apt-get when run as root; otherwise says how, and the browser tests are skipped.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian's chromium for the App tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "== chromium is missing: 'sudo apt-get install chromium' to run the App tests (skipped now)"
fi
