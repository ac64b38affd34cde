/*
 * embed.c -- a C program that embeds concur the way a user's tool would:
 * its own lua_State, concur_openlibs, and a thread initializer that puts the
 * host's own function into every thread's state. Exits 0 when all checks
 * pass; prints what failed otherwise. Built and run by `make test`.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <time.h>

#include "concur.h"

static int host_answer(lua_State *L) {
    lua_pushinteger(L, 42);
    return 1;
}

static void init_thread(lua_State *L, void *ud) {
    lua_pushcfunction(L, host_answer);
    lua_setglobal(L, (const char *)ud);
}

static const char *const script =
    "assert(type(process.spawn) == 'function' and type(thread.new) == 'function')\n"
    "assert(package.loaded.concur == concur)\n"
    "local t = thread.new(function() return host_answer() end)\n"
    "assert(t:join(10) == 42, 'initializer not run in the thread')\n"
    "-- this join waits: the next thread starts from a state made meanwhile\n"
    "thread.new(function() concur.sleep(0.05) end):join(10)\n"
    "assert(thread.new(function() return host_answer() end):join(10) == 42,\n"
    "       'initializer not run in a thread started from a ready state')\n"
    "local p = process.spawn(function(x) return x + 1 end, 1)\n"
    "assert(p:join(10) == 2)\n"
    "local ts = {}\n"
    "for i = 1, 8 do ts[i] = thread.new(function(n) return primes.count(0, n) end, 20000) end\n"
    "for i = 1, 8 do assert(ts[i]:join(10) == 2262) end\n"
    "-- one left running: lua_close must join it\n"
    "LEFT = thread.new(function() concur.sleep(0.05) return 1 end)\n";

static const char *const failing =
    "Q = queue()\n"
    "BLOCKED = thread.new(function(q) return q:get() end, Q)\n"
    "CHILD = process.spawn(function() concur.sleep(60) end)\n";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A host whose script failed: concur_stop_on_close makes lua_close stop
 * the blocked workers instead of joining them forever. */
static int stop_on_close(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    concur_openlibs(L);
    if (luaL_dostring(L, failing) != LUA_OK) {
        fprintf(stderr, "embed: %s\n", lua_tostring(L, -1));
        lua_close(L);
        return 1;
    }
    double t0 = now();
    concur_stop_on_close(1);
    lua_close(L);
    concur_stop_on_close(0);
    if (now() - t0 > 10) {
        fprintf(stderr, "embed: lua_close after concur_stop_on_close took %.1f s\n", now() - t0);
        return 1;
    }
    return 0;
}

/* concur_interrupt_here + concur_interrupt: a blocking wait in this thread
 * raises "...: interrupted" instead of waiting, and runs again once the
 * flag is cleared (what the concur host does on Ctrl-C). */
static int interrupt_wait(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    concur_openlibs(L);
    concur_interrupt_here();
    concur_interrupt(1);
    int failed = luaL_dostring(L, "local ok, err = pcall(queue().get, queue(), 30)\n"
                                  "assert(not ok and concur.interrupted(err), tostring(err))") != LUA_OK;
    concur_interrupt(0);
    if (!failed)
        failed = luaL_dostring(L, "local v, why = queue():get(0.01) assert(why == 'timeout')") != LUA_OK;
    if (failed) fprintf(stderr, "embed: interrupt: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return failed;
}

int main(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    concur_set_thread_init(init_thread, "host_answer");
    concur_openlibs(L);
    if (luaL_dostring(L, script) != LUA_OK) {
        fprintf(stderr, "embed: %s\n", lua_tostring(L, -1));
        lua_close(L);
        return 1;
    }
    lua_close(L);
    if (stop_on_close()) return 1;
    if (interrupt_wait()) return 1;
    puts("embed: ok");
    return 0;
}
