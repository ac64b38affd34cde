/*
 * primes.c -- primes.is_prime(n), primes.count(from, to), primes.list(from, to)
 * over [from, to), the tutorial's CPU-bound kernel run in C.
 */
#include "cb.h"
#include "../runtime/primes.h"

#include <errno.h>

static int l_is_prime(lua_State *L) {
    lua_pushboolean(L, cc_is_prime((int64_t)cb_checkint(L, 1, 1, "primes.is_prime")));
    return 1;
}

static int l_count(lua_State *L) {
    int64_t from = (int64_t)cb_checkint(L, 1, 1, "primes.count"), to = (int64_t)cb_checkint(L, 2, 2, "primes.count");
    int64_t n = cc_primes(from, to, NULL, NULL);
    if (n == -EINTR) return luaL_error(L, "primes.count: interrupted");
    cb_pushinteger(L, n);
    return 1;
}

typedef struct { lua_State *L; lua_Integer i; } lister;

static int add_prime(int64_t p, void *ud) {
    lister *ls = ud;
    cb_pushinteger(ls->L, p);
    lua_rawseti(ls->L, -2, (int)++ls->i);
    return 0;
}

static int l_list(lua_State *L) {
    int64_t from = (int64_t)cb_checkint(L, 1, 1, "primes.list"), to = (int64_t)cb_checkint(L, 2, 2, "primes.list");
    lua_newtable(L);
    lister ls = {L, 0};
    if (cc_primes(from, to, add_prime, &ls) == -EINTR)
        return luaL_error(L, "primes.list: interrupted");
    return 1;
}

static const luaL_Reg funcs[] = {
    {"is_prime", l_is_prime}, {"count", l_count}, {"list", l_list}, {NULL, NULL},
};

int cb_open_primes(lua_State *L) {
    cb_newlib(L, funcs);
    return 1;
}
