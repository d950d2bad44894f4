#!/usr/bin/env bash
# Install the browser of the dashboard's browser test (crates/saelab-cli/tests/browser.rs):
# Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver).
# Idempotent: does nothing when both are there. Needs root (or sudo) and apt; exits
# non-zero with a one-line reason otherwise, so that scripts/test.sh stops here rather
# than skipping the browser test.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "setup-browser: $(chromium --version 2>/dev/null | head -n 1); $(chromedriver --version | cut -d' ' -f1-2)"
  exit 0
fi
die() { echo "setup-browser: $*" >&2; exit 1; }
command -v apt-get >/dev/null || die "apt-get not found: install chromium and chromedriver by hand (or set SAELAB_CHROMIUM and SAELAB_CHROMEDRIVER)"
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "installing chromium needs root or sudo"
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup-browser: installing chromium and chromium-driver from Debian"
log="${TMPDIR:-/tmp}/saelab-setup-browser.log"
if ! $sudo apt-get install -y --no-install-recommends chromium chromium-driver >"$log" 2>&1; then
  $sudo apt-get update >>"$log" 2>&1 || die "apt-get update failed: $(tail -n 1 "$log")"
  $sudo apt-get install -y --no-install-recommends chromium chromium-driver >>"$log" 2>&1 \
    || die "could not install chromium and chromium-driver: $(tail -n 1 "$log")"
fi
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || die "chromium or chromedriver still missing after apt-get install"
echo "setup-browser: $(chromium --version 2>/dev/null | head -n 1)"
