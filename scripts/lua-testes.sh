#!/bin/sh
# Lua's own test of the stand-alone interpreter, testes/main.lua, against
# build/concur: the check that concur is a drop-in lua5.4 (flags, LUA_INIT,
# the arg table, -W and warn's control messages, the REPL's prompts and
# printing, error objects, exit codes, Ctrl-C).
#
#   sh scripts/lua-testes.sh /path/to/lua-5.4.4 [interpreter]
#
# The path is a Lua source tree that has the tests: a checkout of
# github.com/lua/lua at tag v5.4.4 (testes/main.lua) or the unpacked
# lua-5.4.4-tests tarball from lua.org (main.lua at its top). Lua's code is
# not in this repository, so it is read from there. The interpreter
# defaults to build/concur; give lua5.4 to see the reference pass.
#
# main.lua is run as its header intends, `lua main.lua`: it takes the
# interpreter under test from arg[-1], so the interpreter runs the test
# itself and every command it starts. Exit status 0 when the test ends
# with "OK", else 1 (2 for bad arguments). It takes a few seconds.
set -u
usage() {
    echo "usage: sh scripts/lua-testes.sh /path/to/lua-5.4.4 [interpreter]" >&2
    exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
cd "$(dirname "$0")/.." || exit 2
tree=$1
if [ -f "$tree/testes/main.lua" ]; then
    dir=$tree/testes
elif [ -f "$tree/main.lua" ]; then
    dir=$tree
else
    echo "lua-testes.sh: no testes/main.lua or main.lua under '$tree'" >&2
    usage
fi
lua=${2:-build/concur}
case "$lua" in
*/*) lua=$(cd "$(dirname "$lua")" && pwd)/$(basename "$lua") ;; # the test runs elsewhere
*) lua=$(command -v "$lua") || { echo "lua-testes.sh: '$2' not found" >&2; exit 2; } ;;
esac
[ -x "$lua" ] || { echo "lua-testes.sh: '$lua' is not built (run make)" >&2; exit 2; }
dir=$(cd "$dir" && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# One run in a session of its own, so that whatever the test leaves running
# (its Ctrl-C part leaves a looping script behind when it fails) is killed
# by session id afterwards and cannot hold the output open.
run() {
    setsid sh -c 'cd "$1" && exec timeout 300 "$2" main.lua' sh "$dir" "$lua" >"$log" 2>&1 &
    sid=$!
    wait "$sid"
    left=$(ps -o pid= -s "$sid" 2>/dev/null)
    [ -n "$left" ] && kill -KILL $left 2>/dev/null
    cat "$log"
    [ "$(tail -n 1 "$log")" = "OK" ]
}

# The Ctrl-C part reads the pid that `lua -e script & echo $!` prints; when
# the script prints its first line (12 or 15) before the shell's echo (a
# loaded machine), the test takes that line for the pid and fails. That
# race is main.lua's, not the interpreter's: run again, up to 3 times.
for try in 1 2 3; do
    if run; then
        echo "lua-testes.sh: $dir/main.lua passed under $lua"
        exit 0
    fi
    grep -Eq 'in background, pid (12|15)\)$' "$log" || break
    echo "lua-testes.sh: try $try lost main.lua's pid race (the script printed before 'echo \$!'); again" >&2
done
echo "lua-testes.sh: $dir/main.lua FAILED under $lua" >&2
exit 1
