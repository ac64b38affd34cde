#!/bin/sh
# make bench [QUICK=1]: runs scripts/bench/run.lua under build/concur.
cd "$(dirname "$0")/../.." || exit 1
exec build/concur scripts/bench/run.lua "$@"
