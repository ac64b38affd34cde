#!/bin/sh
# Install the Debian packages listed in vendor/debian-packages.txt that are
# missing. Does nothing (and needs no network) when all are present.
# Runs apt-get update once, only when a package must be installed.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
list="$here/vendor/debian-packages.txt"
missing=""
for pkg in $(grep -v '^#' "$list" | awk 'NF {print $1}'); do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        # python3 may come from elsewhere (pyenv); a working python3 is enough
        if [ "$pkg" = python3 ] && command -v python3 >/dev/null 2>&1; then continue; fi
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
