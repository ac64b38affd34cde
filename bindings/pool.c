/*
 * pool.c -- concur.pool: loads lib/concur/pool.lua, compiled into the
 * library as a string ($(B)/gen/pool_lua.h, made by scripts/embed.lua), and
 * gives it the two things plain Lua lacks: isatty (progress draws a line on
 * a terminal, plain lines elsewhere) and a 64-bit FNV-1a digest (a journal
 * remembers which item list it was written for).
 *
 * The orchestration is Lua on purpose: it is light and changes often; the
 * heavy parts (queues, the codec, processes, threads) are C already.
 */
#include "cb.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>

#include "pool_lua.h"

static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)cb_checkint(L, 1, 1, "pool.isatty")));
    return 1;
}

/* fnv(s, [previous hex digest]) -> 16 hex digits: chains across strings */
static int l_fnv(lua_State *L) {
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    uint64_t h = 0xcbf29ce484222325ULL;
    const char *prev = lua_tostring(L, 2);
    if (prev && strlen(prev) == 16) sscanf(prev, "%16llx", (unsigned long long *)&h);
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    char out[17];
    snprintf(out, sizeof out, "%016llx", (unsigned long long)h);
    lua_pushstring(L, out);
    return 1;
}

/* nap(seconds): a sleep that an interruption does not cut short, for
 * the few milliseconds terminate waits for a killed worker after Ctrl-C
 * (every concur wait raises "interrupted" then) */
static int l_nap(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    if (!(s > 0) || s > 1) return 0;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    return 0;
}

static const luaL_Reg helpers[] = {{"isatty", l_isatty}, {"fnv", l_fnv}, {"nap", l_nap}, {NULL, NULL}};

/* Called by luaopen_concur with the concur table complete but for pool:
 * runs the chunk with (concur, helpers) and leaves the pool table. */
int cb_open_pool(lua_State *L, int lib) {
    lib = cb_absindex(L, lib);
    if (luaL_loadbuffer(L, pool_lua, sizeof pool_lua - 1, "@lib/concur/pool.lua") != 0)
        return lua_error(L);
    lua_pushvalue(L, lib);
    cb_newlib(L, helpers);
    lua_call(L, 2, 1);
    return 1;
}
