#!/bin/sh
# Run every busted spec three ways and print one closing line
# "N passed, N failed"; exit non-zero on any failure.
#
#   under build/concur            (the primitives are globals)
#   under lua5.4 + build/lua5.4/concur.so
#   under luajit + build/luajit/concur.so
#
# --sanitize runs the specs under the ASan+UBSan and the TSan builds of the
# host instead (build/asan/concur, build/tsan/concur).
# SPEC=spec/queue_spec.lua limits the run to some spec files.
set -u
cd "$(dirname "$0")/.."
busted=$(command -v busted || echo /usr/bin/busted)
specs=${SPEC:-spec}
limit=${SPEC_TIMEOUT:-600}
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
if [ "${1:-}" != "--sanitize" ] && [ -z "${SPEC:-}" ]; then
    echo "== embedding (build/embed)"
    if [ -x build/embed ] && timeout 60 build/embed; then
        passed=$((passed + 1))
    else
        echo "!! embedding test failed"
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

if [ "${1:-}" = "--sanitize" ]; then
    # TSan: scripts/tsan.supp says which reports are its own limits (robust
    # mutex hand-over, process-shared mutexes across fork); thread leaks are
    # off because a forked child "inherits" its parent's threads in TSan's
    # bookkeeping (our own specs check that every thread is joined)
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        CONCUR_TEST_FLAVOUR=asan run asan build/asan/concur "$busted" $specs
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 die_after_fork=0 report_signal_unsafe=0 report_thread_leaks=0 suppressions=$PWD/scripts/tsan.supp" \
        CONCUR_TEST_FLAVOUR=tsan run tsan build/tsan/concur "$busted" $specs
else
    CONCUR_TEST_FLAVOUR=concur run concur build/concur "$busted" $specs
    CONCUR_TEST_FLAVOUR=lua5.4 LUA_CPATH="build/lua5.4/?.so;;" run lua5.4 lua5.4 "$busted" $specs
    if command -v luajit >/dev/null 2>&1; then
        CONCUR_TEST_FLAVOUR=luajit LUA_CPATH="build/luajit/?.so;;" run luajit luajit "$busted" $specs
    fi
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
