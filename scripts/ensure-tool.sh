#!/usr/bin/env bash
# ensure-tool.sh COMMAND [DEBIAN_PACKAGE]: make sure COMMAND is on PATH; as root on Debian,
# install its package with apt-get when it is missing (refreshing the index if needed).
set -euo pipefail
command_name=$1
package=${2:-$1}
command -v "$command_name" >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "installing $package with apt-get" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null; }
else
	echo "$command_name is missing: install it (Debian: apt-get install $package)" >&2
	exit 1
fi
