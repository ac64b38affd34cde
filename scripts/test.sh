#!/bin/sh
# Run every busted spec three ways and print one closing line
# "N passed, N failed"; exit non-zero on any failure.
#
#   under build/concur            (the primitives are globals)
#   under lua5.4 + build/lua5.4/concur.so
#   under luajit + build/luajit/concur.so
#
# --with-asan (what `make test` runs) adds one pass under the ASan+UBSan
# build of the host, build/asan/concur, over ASAN_SPECS (default: every spec).
#
# --sanitize (`make sanitize`) runs the specs under sanitizer builds instead:
#   build/asan/concur                     ASan+UBSan host
#   lua5.4 + build/asan/lua5.4/concur.so  ASan+UBSan module, stock interpreter
#   luajit + build/asan/luajit/concur.so  ASan+UBSan module, stock interpreter
#   build/tsan/concur                     TSan host
# then scripts/valgrind.sh (one check per valgrind run; not when SPEC is set).
# The stock interpreters are not instrumented, so the ASan runtime is
# preloaded: build/asan/libasan-fork.so, the static runtime plus
# tests/asan_fork.c (see there why not clang's shared runtime). It carries
# the UBSan handlers too. It takes LD_PRELOAD out of the environment of the
# process it is loaded into, so set it with env right before the
# interpreter: `LD_PRELOAD=... timeout 9 lua5.4` preloads it into timeout,
# and lua5.4 then runs without it. Under LuaJIT only memory malloc'd by concur is
# checked: LuaJIT's own allocator (strings, tables, userdata) bypasses malloc.
#
# SPEC=spec/queue_spec.lua limits the run to some spec files.
set -u
cd "$(dirname "$0")/.."
busted=$(command -v busted || echo /usr/bin/busted)
specs=${SPEC:-spec}
limit=${SPEC_TIMEOUT:-600}
mode=${1:-}
case "$mode" in
"" | --with-asan | --sanitize) ;;
*)
    echo "usage: scripts/test.sh [--with-asan | --sanitize]" >&2
    exit 2
    ;;
esac
asan_env="ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
passed=0
failed=0
logdir=build/test-logs
mkdir -p "$logdir"

run() { # name, then the command and its arguments
    name=$1
    shift
    log="$logdir/$name.log"
    echo "== specs under $name"
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    # the summary line: "12 successes / 0 failures / 1 error / 0 pending : 1.2 seconds"
    summary=$(grep -E '^[0-9]+ success' "$log" | tail -n 1)
    cat "$log"
    if [ -z "$summary" ]; then
        echo "!! $name: no summary (exit $rc$( [ $rc -eq 124 ] && echo ', timed out'))"
        failed=$((failed + 1))
        return
    fi
    s=$(echo "$summary" | sed -E 's/^([0-9]+) success.*/\1/')
    f=$(echo "$summary" | sed -E 's/.* ([0-9]+) failure.*/\1/')
    e=$(echo "$summary" | sed -E 's/.* ([0-9]+) error.*/\1/')
    passed=$((passed + s))
    failed=$((failed + f + e))
    if [ "$rc" -ne 0 ] && [ $((f + e)) -eq 0 ]; then
        echo "!! $name: busted exited $rc"
        failed=$((failed + 1))
    fi
}

# the embedding test: a C program with its own state (tests/embed.c)
if [ "$mode" != "--sanitize" ] && [ -z "${SPEC:-}" ]; then
    echo "== embedding (build/embed)"
    if [ -x build/embed ] && timeout 60 build/embed; then
        passed=$((passed + 1))
    else
        echo "!! embedding test failed"
        failed=$((failed + 1))
    fi
    # the module unloaded by a host that goes on (tests/unload.c)
    echo "== unloading the module (build/unload)"
    if [ -x build/unload ] && timeout 60 build/unload build/lua5.4/concur.so; then
        passed=$((passed + 1))
    else
        echo "!! unloading test failed"
        failed=$((failed + 1))
    fi
    # the allocator on its own, SIGKILLs included (tests/arena_test.c)
    echo "== arena allocator (build/arena_test)"
    if [ -x build/arena_test ] && timeout 120 build/arena_test; then
        passed=$((passed + 1))
    else
        echo "!! arena allocator test failed"
        failed=$((failed + 1))
    fi
fi

if [ "$mode" = "--sanitize" ]; then
    # leaks are valgrind's job (scripts/valgrind.sh): LeakSanitizer would
    # report what each forked child inherited from its parent
    run asan env $asan_env CONCUR_TEST_FLAVOUR=asan build/asan/concur "$busted" $specs
    preload=build/asan/libasan-fork.so # made by make sanitize
    if [ ! -f "$preload" ]; then
        echo "!! $preload is missing (make sanitize builds it): modules not run"
        failed=$((failed + 1))
    else
        run asan-lua5.4 env $asan_env LD_PRELOAD="$PWD/$preload" CONCUR_TEST_FLAVOUR=asan-lua5.4 \
            LUA_CPATH="build/asan/lua5.4/?.so;;" lua5.4 "$busted" $specs
        if command -v luajit >/dev/null 2>&1; then
            run asan-luajit env $asan_env LD_PRELOAD="$PWD/$preload" CONCUR_TEST_FLAVOUR=asan-luajit \
                LUA_CPATH="build/asan/luajit/?.so;;" luajit "$busted" $specs
        fi
    fi
    # TSan: scripts/tsan.supp says which reports are its own limits (robust
    # mutex hand-over, process-shared mutexes across fork); thread leaks are
    # off because a forked child "inherits" its parent's threads in TSan's
    # bookkeeping (our own specs check that every thread is joined). The
    # whole pass takes 11-12 minutes on a 2-core machine: its own limit
    limit=${TSAN_TIMEOUT:-1200}
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 die_after_fork=0 report_signal_unsafe=0 report_thread_leaks=0 suppressions=$PWD/scripts/tsan.supp" \
        CONCUR_TEST_FLAVOUR=tsan run tsan build/tsan/concur "$busted" $specs
    if [ -z "${SPEC:-}" ]; then # a run limited to some specs is not the workload's
        echo "== valgrind (scripts/valgrind.sh)"
        sh scripts/valgrind.sh >"$logdir/valgrind.log" 2>&1
        cat "$logdir/valgrind.log"
        vs=$(tail -n 1 "$logdir/valgrind.log" | sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/p')
        if [ -n "$vs" ]; then
            passed=$((passed + ${vs% *}))
            failed=$((failed + ${vs#* }))
        else
            echo "!! valgrind: no closing line"
            failed=$((failed + 1))
        fi
    fi
else
    CONCUR_TEST_FLAVOUR=concur run concur build/concur "$busted" $specs
    CONCUR_TEST_FLAVOUR=lua5.4 LUA_CPATH="build/lua5.4/?.so;;" run lua5.4 lua5.4 "$busted" $specs
    if command -v luajit >/dev/null 2>&1; then
        CONCUR_TEST_FLAVOUR=luajit LUA_CPATH="build/luajit/?.so;;" run luajit luajit "$busted" $specs
    fi
    if [ "$mode" = "--with-asan" ]; then
        # the short sanitizer pass CI runs; a hang must not eat the budget
        limit=${ASAN_TIMEOUT:-300}
        run asan env $asan_env CONCUR_TEST_FLAVOUR=asan build/asan/concur "$busted" ${ASAN_SPECS:-$specs}
    fi
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
