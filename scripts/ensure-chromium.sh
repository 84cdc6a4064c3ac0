#!/usr/bin/env bash
# Debian's chromium for the browser tests (tests/ui): Playwright drives /usr/bin/chromium and
# never downloads a browser of its own. Installs it with apt-get when missing (as root on
# Debian); elsewhere says what to do.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
	exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "installing chromium with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq chromium >/dev/null ||
		{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	[ -x "$CHROMIUM" ] && exit 0
fi
echo "chromium is missing at $CHROMIUM: install it (Debian: apt-get install chromium); the" \
	"browser tests use it, not a browser downloaded by Playwright" >&2
exit 1
