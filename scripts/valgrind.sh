#!/bin/sh
# make valgrind: tests/valgrind_workload.lua under memcheck, with build/concur,
# with stock lua5.4 + build/lua5.4/concur.so and with luajit +
# build/luajit/concur.so. Fails on any invalid
# access, use of uninitialised memory, bad free or "definitely lost" block,
# in the main process or in any forked child (valgrind follows fork by
# itself; --trace-children=yes also follows exec, and the skip list keeps
# the system programs that process.run starts out of it).
#
# Every process writes its own log, build/valgrind/<run>.<pid>.log; a log
# with errors is printed whole. Closing line "N passed, N failed", exit
# non-zero on any failure, like scripts/test.sh.
#
# Leaks are counted in the root process only. A forked child is a copy of
# its parent's heap, threads excepted: the lua_State of every thread that
# was running at the fork is reachable only from that thread's stack, which
# the child does not have, so each child would report it "definitely lost"
# (and repeat every leak its parent had made before the fork). Invalid
# accesses, uninitialised values and bad frees count in every process.
#
# The arena is kept small (CONCUR_SHM=64M): memcheck's leak scan reads every
# mapped page, and scanning the default 1 GiB reservation in every process
# took 25 s of a 27 s run.
#
# Under LuaJIT memcheck sees concur's own mallocs; LuaJIT serves Lua objects
# from its own allocator, so an overread of a Lua string is not seen there
# (it is under lua5.4, whose objects come from malloc).
set -u
cd "$(dirname "$0")/.."
out=build/valgrind
limit=${VALGRIND_TIMEOUT:-300}
passed=0
failed=0
rm -rf "$out"
mkdir -p "$out"
CONCUR_SHM=${CONCUR_SHM:-64M}
export CONCUR_SHM

if ! command -v valgrind >/dev/null 2>&1; then
    echo "!! valgrind is not installed (make deps installs it)"
    echo "0 passed, 1 failed"
    exit 1
fi

# The reports in one log, minus leak records when skip_leaks is 1
reports() { # log, skip_leaks
    awk -v skip_leaks="$2" '
        skip_leaks && /lost in loss record/ { skip = 1; next }
        skip && /^==[0-9]+== *$/ { skip = 0; next }
        skip { next }
        /^==[0-9]+== ./ { print }' "$1"
}

check() { # name, then the command and its arguments
    name=$1
    shift
    echo "== valgrind: $name"
    start=$(date +%s)
    # sh records its pid, then becomes valgrind: the root process's log
    timeout -k 10 "$limit" sh -c 'echo $$ >"$0"; exec "$@"' "$out/$name.pid" \
        valgrind -q --tool=memcheck --leak-check=full \
        --show-leak-kinds=definite --errors-for-leak-kinds=definite \
        --error-exitcode=99 --track-origins=yes --num-callers=12 --keep-debuginfo=yes \
        --trace-children=yes --trace-children-skip='/bin/*,/usr/bin/*,/usr/local/bin/*' \
        --log-file="$out/$name.%p.log" "$@" tests/valgrind_workload.lua \
        >"$out/$name.stdout" 2>"$out/$name.stderr"
    rc=$?
    root="$out/$name.$(cat "$out/$name.pid").log"
    bad=""
    nlogs=0
    for log in "$out/$name".*.log; do
        nlogs=$((nlogs + 1))
        skip_leaks=1
        [ "$log" = "$root" ] && skip_leaks=0
        [ -n "$(reports "$log" "$skip_leaks")" ] || continue
        bad="$bad $log"
        echo "-- $log$([ "$log" = "$root" ] && echo ' (the root process)')"
        cat "$log"
    done
    secs=$(($(date +%s) - start))
    if [ -z "$bad" ] && grep -q '^workload ok$' "$out/$name.stdout" &&
        { [ "$rc" -eq 0 ] || [ "$rc" -eq 99 ]; }; then
        echo "ok: $name (${secs} s, $nlogs processes)"
        passed=$((passed + 1))
    else
        cat "$out/$name.stdout" "$out/$name.stderr"
        echo "!! $name: exit $rc$([ "$rc" -eq 124 ] && echo ', timed out')$([ -n "$bad" ] && echo ", reports in:$bad") (${secs} s)"
        failed=$((failed + 1))
    fi
}

check concur build/concur
LUA_CPATH="build/lua5.4/?.so;;"
export LUA_CPATH
check lua5.4 lua5.4
if command -v luajit >/dev/null 2>&1; then
    LUA_CPATH="build/luajit/?.so;;"
    check luajit luajit
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
