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

#include "fastmsg.h"
#include "pool_lua.h"
#include "../runtime/array.h"
#include "../runtime/queue.h"

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

/* ---- packed chunks: the fast path for plain data ----
 * The codec spends a few hundred nanoseconds on every value and several
 * microseconds on every table (ids for cycles, paths for error messages).
 * Chunks of map items and results, and the arguments and results of
 * submitted tasks, are mostly flat scalars, so they travel as one string:
 *   'i' n int64s        (all integers)
 *   'd' n doubles       (all floats; LuaJIT: all numbers)
 *   'v' n tagged values: 'n' nil, 'f' false, 't' true, 'i' int64,
 *       'd' double, 's' u32 length + bytes
 * in native byte order (every reader is this program on this machine).
 * Anything else (a table, a function, a shared object) makes pack return
 * nil and the caller sends a table through the codec instead. */

enum { SC_NIL = 'n', SC_FALSE = 'f', SC_TRUE = 't', SC_INT = 'i', SC_DBL = 'd', SC_STR = 's' };

/* the tag of the value on top of the stack, 0 if it cannot be packed */
static int scalar_tag(lua_State *L) {
    switch (lua_type(L, -1)) {
    case LUA_TNIL: return SC_NIL;
    case LUA_TBOOLEAN: return lua_toboolean(L, -1) ? SC_TRUE : SC_FALSE;
    case LUA_TNUMBER: return cb_isinteger(L, -1) ? SC_INT : SC_DBL;
    case LUA_TSTRING: return cb_rawlen(L, -1) <= 0xffffffffu ? SC_STR : 0;
    default: return 0;
    }
}

/* Value k (0-based) of what is packed, on top of the stack: t[first + k]
 * of the table at index `table`, or the stack slot first + k when there is
 * no table (table 0: packv, singles). */
static void push_item(lua_State *L, int table, lua_Integer first, lua_Integer k) {
    if (table) lua_rawgeti(L, table, (int)(first + k));
    else lua_pushvalue(L, (int)(first + k));
}

/* The string of n values (see above), or nil when one is not a scalar.
 * Up to 256 bytes are built on the C stack: no scratch userdata. */
static int pack_items(lua_State *L, int table, lua_Integer first, lua_Integer n) {
    char small[256];
    /* all numbers (the usual map chunk): one pass */
    if (n > 0) {
        size_t need = 1 + 8 * (size_t)n;
        char *out = need <= sizeof small ? small : lua_newuserdata(L, need); /* scratch, collected */
        int ints = 0, dbls = 0;
        lua_Integer k = 0;
        for (; k < n; k++) {
            push_item(L, table, first, k);
            if (lua_type(L, -1) != LUA_TNUMBER) {
                lua_pop(L, 1);
                break;
            }
            if (cb_isinteger(L, -1)) {
                int64_t v = (int64_t)lua_tointeger(L, -1);
                memcpy(out + 1 + 8 * k, &v, 8);
                ints = 1;
            } else {
                double v = (double)lua_tonumber(L, -1);
                memcpy(out + 1 + 8 * k, &v, 8);
                dbls = 1;
            }
            lua_pop(L, 1);
            if (ints && dbls) break;
        }
        if (k == n) {
            out[0] = ints ? 'i' : 'd';
            lua_pushlstring(L, out, need);
            return 1;
        }
        if (out != small) lua_pop(L, 1);
    }
    /* pass 1: the format and the size */
    int ints = 0, dbls = 0, others = 0;
    size_t size = 1;
    for (lua_Integer k = 0; k < n; k++) {
        push_item(L, table, first, k);
        int tag = scalar_tag(L);
        if (!tag) {
            lua_pushnil(L);
            return 1;
        }
        ints += tag == SC_INT;
        dbls += tag == SC_DBL;
        others += tag != SC_INT && tag != SC_DBL;
        size += 1 + (tag == SC_INT || tag == SC_DBL ? 8 : tag == SC_STR ? 4 + (size_t)cb_rawlen(L, -1) : 0);
        lua_pop(L, 1);
    }
    char fmt = others || (ints && dbls) ? 'v' : ints ? 'i' : 'd';
    if (fmt != 'v') size = 1 + 8 * (size_t)n;
    char *out = size <= sizeof small ? small : lua_newuserdata(L, size); /* scratch, collected */
    char *w = out;
    *w++ = fmt;
    /* pass 2: the values */
    for (lua_Integer k = 0; k < n; k++) {
        push_item(L, table, first, k);
        int tag = scalar_tag(L);
        if (fmt == 'v') *w++ = (char)tag;
        if (tag == SC_INT) {
            int64_t v = (int64_t)lua_tointeger(L, -1);
            memcpy(w, &v, 8);
            w += 8;
        } else if (tag == SC_DBL) {
            double v = (double)lua_tonumber(L, -1);
            memcpy(w, &v, 8);
            w += 8;
        } else if (tag == SC_STR) {
            size_t len;
            const char *str = lua_tolstring(L, -1, &len);
            uint32_t l32 = (uint32_t)len;
            memcpy(w, &l32, 4);
            memcpy(w + 4, str, len);
            w += 4 + len;
        }
        lua_pop(L, 1);
    }
    lua_pushlstring(L, out, size);
    return 1;
}

/* pack(t, first, n) -> string, or nil when t[first..first+n-1] hold a
 * value that is not a scalar */
static int l_pack(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer first = luaL_checkinteger(L, 2), n = luaL_checkinteger(L, 3);
    if (n < 0 || n > (lua_Integer)1 << 28) return luaL_error(L, "pool.pack: bad count");
    return pack_items(L, 1, first, n);
}

/* packv(...) -> string of its arguments, or nil (as pack) */
static int l_packv(lua_State *L) {
    int n = lua_gettop(L);
    luaL_checkstack(L, 4, "pool.packv");
    return pack_items(L, 0, 1, n);
}

static int corrupt(lua_State *L) { return luaL_error(L, "pool.unpack: corrupt chunk"); }

/* Pushes the value at r of a packed string of format fmt ending at end:
 * the position after it, or NULL when the bytes are not a value. */
static const char *push_packed(lua_State *L, char fmt, const char *r, const char *end) {
    char tag = fmt == 'v' ? (r < end ? *r++ : 0) : fmt == 'i' ? SC_INT : SC_DBL;
    if (tag == SC_NIL || tag == SC_FALSE || tag == SC_TRUE) {
        if (tag == SC_NIL) lua_pushnil(L);
        else lua_pushboolean(L, tag == SC_TRUE);
        return r;
    }
    if (tag == SC_INT || tag == SC_DBL) {
        if (end - r < 8) return NULL;
        if (tag == SC_INT) {
            int64_t v;
            memcpy(&v, r, 8);
            cb_pushinteger(L, v);
        } else {
            double v;
            memcpy(&v, r, 8);
            lua_pushnumber(L, (lua_Number)v);
        }
        return r + 8;
    }
    if (tag == SC_STR) {
        uint32_t l32;
        if (end - r < 4) return NULL;
        memcpy(&l32, r, 4);
        if ((size_t)(end - r - 4) < l32) return NULL;
        lua_pushlstring(L, r + 4, l32);
        return r + 4 + l32;
    }
    return NULL;
}

/* unpack(s, [dst, first]) -> dst (a new table when absent), count:
 * dst[first + k - 1] = value k, nil ones too (dst may hold an earlier
 * message's values: a nil must not leave one of them in place) */
static int l_unpack(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (len < 1 || (s[0] != 'i' && s[0] != 'd' && s[0] != 'v')) return corrupt(L);
    if (s[0] != 'v' && (len - 1) % 8) return corrupt(L);
    const char *r = s + 1, *end = s + len;
    lua_Integer first = 1;
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        lua_createtable(L, s[0] != 'v' ? (int)((len - 1) / 8) : 0, 0);
    } else {
        luaL_checktype(L, 2, LUA_TTABLE);
        first = luaL_checkinteger(L, 3);
        lua_settop(L, 2);
    }
    lua_Integer k = 0;
    if (s[0] == 'i') { /* a map chunk's items or results: the hot case */
        for (; r < end; k++, r += 8) {
            int64_t v;
            memcpy(&v, r, 8);
            cb_pushinteger(L, v);
            lua_rawseti(L, 2, (int)(first + k));
        }
    }
    for (; r < end; k++) {
        r = push_packed(L, s[0], r, end);
        if (!r) return corrupt(L);
        lua_rawseti(L, 2, (int)(first + k));
    }
    cb_pushinteger(L, k);
    return 2;
}

/* An integer of a packed string at r (format fmt): the position after it,
 * or NULL when the value there is not an integer (LuaJIT packs every
 * number as a double: an integral one counts). */
static const char *read_int(char fmt, const char *r, const char *end, int64_t *out) {
    char tag = fmt == 'v' ? (r < end ? *r++ : 0) : fmt == 'i' ? SC_INT : SC_DBL;
    if ((tag != SC_INT && tag != SC_DBL) || end - r < 8) return NULL;
    if (tag == SC_INT) {
        memcpy(out, r, 8);
    } else {
        double d;
        memcpy(&d, r, 8);
        if (!(d >= -9.2e18 && d <= 9.2e18) || d != (double)(int64_t)d) return NULL;
        *out = (int64_t)d;
    }
    return r + 8;
}

/* The first n integers of the packed message at idx into h: the position
 * after them, *endp set to the message's end; NULL when idx is not a
 * packed string or they are not integers. */
static const char *packed_head(lua_State *L, int idx, int n, int64_t *h, const char **endp) {
    size_t len = 0;
    const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &len) : NULL;
    if (!s || len == 0) return NULL;
    const char *r = s + 1;
    *endp = s + len;
    for (int x = 0; x < n && r; x++) r = read_int(s[0], r, *endp, &h[x]);
    return r;
}

/* singles(group, gi, gn, fcache, st, b, cancels, put, rq, slot, traceback,
 *         finish, limit) -> done, long
 * The worker's loop over quick submits (lib/concur/pool.lua, worker_main),
 * in C: from group[gi + 1], at most limit of them, while each is a packed
 * single {0, cid, j, nargs, args...} whose function is fcache[j]. Each one
 * is marked as Lua marks it -- st[b + 1] = cid, then a look at cancels (a
 * cancel pending stops the loop before it: Lua looks at the skip marks),
 * st[b + 2] = 1 -- taken out of the group, run as fn(args) under
 * traceback, and answered: {slot, -cid, nres, results...} packed goes out
 * with put(rq, s); an error, or results that do not pack, go to
 * finish(cid, ok, ...), which answers in the codec's forms. Then the marks
 * are cleared. It stops after one that ran LONG seconds (long true: Lua
 * hands the rest of the group back). Per submit, callgrind counted 14.7k
 * instructions in a thread worker on the Lua path, 5.9k on this one. */
#define LONG 0.002
static int l_singles(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer gi = luaL_checkinteger(L, 2), gn = luaL_checkinteger(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    cc_array *st = (cc_array *)cb_check(L, 5, CC_T_ARRAY, "pool.singles");
    lua_Integer b = luaL_checkinteger(L, 6);
    cc_array *cancels = (cc_array *)cb_check(L, 7, CC_T_ARRAY, "pool.singles");
    lua_Integer slot = luaL_checkinteger(L, 10);
    lua_Integer limit = luaL_checkinteger(L, 13);
    if (st->elem != CC_F64 || b < 0 || b + 4 > st->n || cancels->elem != CC_I64 || cancels->n < 1)
        return luaL_error(L, "pool.singles: bad state arrays");
    double *mark = (double *)(void *)st->data + b;
    const int64_t *pending = (const int64_t *)(const void *)cancels->data;
    lua_Integer done = 0;
    int slow = 0;
    lua_settop(L, 13);
    for (lua_Integer k = gi + 1; k <= gn && done < limit && !slow; k++) {
        lua_rawgeti(L, 1, (int)k); /* 14: the message */
        int64_t h[4]; /* gen, cid, j, nargs */
        const char *end = NULL, *r = packed_head(L, 14, 4, h, &end);
        if (!r || h[0] != 0 || h[1] <= 0 || h[2] >= 0 || h[3] < 0 || h[3] > end - r) break;
        char fmt = *lua_tostring(L, 14);
        lua_rawgeti(L, 4, (int)h[2]); /* 15: fn */
        if (!lua_isfunction(L, 15)) break;
        double cid = (double)h[1], one = 1, zero = 0;
        __atomic_store(&mark[0], &cid, __ATOMIC_SEQ_CST); /* the mark, then the look */
        if (__atomic_load_n(pending, __ATOMIC_SEQ_CST) > 0) break;
        __atomic_store(&mark[1], &one, __ATOMIC_RELAXED);
        lua_pushnil(L);
        lua_rawseti(L, 1, (int)k);
        double t0 = cc_now();
        luaL_checkstack(L, (int)h[3] + 8, "pool.singles");
        lua_pushinteger(L, (lua_Integer)slot); /* 16-18: the reply's head */
        lua_pushinteger(L, (lua_Integer)-h[1]);
        lua_pushinteger(L, 0);
        lua_pushvalue(L, 15);
        int na = 0;
        for (; r && r < end; na++) r = push_packed(L, fmt, r, end);
        if (!r || na != h[3]) return luaL_error(L, "pool.singles: corrupt message");
        int ok = lua_pcall(L, na, LUA_MULTRET, 11) == LUA_OK;
        int nres = lua_gettop(L) - 18;
        if (ok) {
            lua_pushinteger(L, nres);
            lua_replace(L, 18);
            pack_items(L, 0, 16, nres + 3);
        }
        if (ok && lua_type(L, -1) == LUA_TSTRING) {
            lua_pushvalue(L, 8);
            lua_pushvalue(L, 9);
            lua_pushvalue(L, -3);
            lua_call(L, 2, 0);
        } else {
            if (ok) lua_pop(L, 1); /* the nil of pack */
            luaL_checkstack(L, nres + 4, "pool.singles");
            lua_pushvalue(L, 12);
            lua_pushinteger(L, (lua_Integer)h[1]);
            lua_pushboolean(L, ok);
            for (int x = 0; x < nres; x++) lua_pushvalue(L, 19 + x);
            lua_call(L, 2 + nres, 0);
        }
        __atomic_store(&mark[1], &zero, __ATOMIC_RELAXED);
        __atomic_store(&mark[0], &zero, __ATOMIC_RELAXED);
        lua_settop(L, 13);
        done++;
        slow = cc_now() - t0 > LONG;
    }
    cb_pushinteger(L, done);
    lua_pushboolean(L, slow);
    return 2;
}

/* The field names submit1 and deliver use, their upvalues in this order:
 * made once, then a push and a raw access (lua_setfield looks each literal
 * up in the API's string cache and compares it: 1.4k instructions a
 * submit). */
enum { K_POOL = 1, K_STATE, K_SINGLE, K_CID, K_M, K_OK, K_VALUE, K_NR, K_SKIPPED, K_RUNNING, K_DONE, K_CANCELLED };
static const char *const keys[] = {"pool", "state", "single", "cid", "m", "ok", "value", "nr", "skipped",
                                   "running", "done", "cancelled"};
#define NKEYS ((int)(sizeof keys / sizeof *keys))
#define KEY(k) lua_upvalueindex(k)

/* t[key] = what `push` pushes (t at an absolute index) */
#define SET_KEY(t, key, push) (lua_pushvalue(L, KEY(key)), (push), lua_rawset(L, (t)))

/* pushes t[key] (raw) */
static void get_key(lua_State *L, int t, int key) {
    lua_pushvalue(L, KEY(key));
    lua_rawget(L, t);
}

/* Pushes a new submit's future: {pool = p, state = "running", single =
 * true, cid = cid, m = msg, ok = false, value = false, nr = 0} with Future
 * as its metatable -- every field it will have, so its table is made at
 * its size, 8, and never rehashed. p, Future, cid and msg at absolute
 * indices. */
static void push_future(lua_State *L, int p, int future, int cid, int msg) {
    lua_createtable(L, 0, 8);
    int f = lua_gettop(L);
    SET_KEY(f, K_POOL, lua_pushvalue(L, p));
    SET_KEY(f, K_STATE, lua_pushvalue(L, KEY(K_RUNNING)));
    SET_KEY(f, K_SINGLE, lua_pushboolean(L, 1));
    SET_KEY(f, K_CID, lua_pushvalue(L, cid));
    SET_KEY(f, K_M, lua_pushvalue(L, msg));
    SET_KEY(f, K_OK, lua_pushboolean(L, 0));
    SET_KEY(f, K_VALUE, lua_pushboolean(L, 0));
    SET_KEY(f, K_NR, lua_pushinteger(L, 0));
    lua_pushvalue(L, future);
    lua_setmetatable(L, f);
}

/* future(p, Future) -> a submit's future as submit1 makes it, cid 0 and m
 * false until Lua's send_single sets them */
static int l_future(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_pushinteger(L, 0);
    lua_pushboolean(L, 0);
    push_future(L, 1, 2, 3, 4);
    return 1;
}

/* submit1(p, out, Future, tq, cid, j, ...) -> the future, or nil when the
 * arguments do not pack (nothing done: Lua sends it as a table)
 * A submit of a registered function (j) into a pool's task queue, the
 * caller's side of singles: packs {0, cid, j, nargs, args...}, makes the
 * future (push_future), puts the message into tq and sets out[cid]. Lua keeps the checks and the counts
 * (Pool:submit). The put comes before out[cid]: one that raises leaves
 * nothing recorded. */
static int l_submit1(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    cc_queue *q = (cc_queue *)cb_check(L, 4, CC_T_QUEUE, "pool.submit1");
    lua_Integer cid = luaL_checkinteger(L, 5);
    luaL_checkinteger(L, 6);
    int n = lua_gettop(L) - 6;
    luaL_checkstack(L, n + 16, "pool.submit1");
    int base = lua_gettop(L) + 1;
    lua_pushinteger(L, 0);
    lua_pushvalue(L, 5);
    lua_pushvalue(L, 6);
    lua_pushinteger(L, n);
    for (int i = 0; i < n; i++) lua_pushvalue(L, 7 + i);
    pack_items(L, 0, base, n + 4);
    if (lua_type(L, -1) != LUA_TSTRING) return 1; /* nil */
    int msg = lua_gettop(L);
    push_future(L, 1, 3, 5, msg);
    unsigned char small[FM_SMALL];
    size_t len = fm_encode(L, msg, small);
    if (!len || cc_queue_put(q, small, len, CC_FOREVER) != 0) {
        /* longer than a small message, or the put failed (full memory, a
         * closed queue): through the queue's own put, which has the
         * codec's path and raises the right error */
        lua_getfield(L, 4, "put");
        lua_pushvalue(L, 4);
        lua_pushvalue(L, msg);
        lua_call(L, 2, 0);
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, 2, (int)cid);
    return 1;
}

/* deliver(got, n, out) -> left, taken, settled
 * The caller's side of singles: of the n replies in got, each packed
 * {slot, -cid, nres, results...} whose record out[cid] is a single future
 * not marked skipped is dealt with here -- out[cid] = nil and, unless the
 * future is settled already (cancelled), state "done", ok true, m nil,
 * value (the one result, nil, or a table of them) and nr, as
 * Future:_settle does -- and one whose record is gone is dropped. The
 * others move to got[1..left] for Lua's deliver. taken and settled are
 * for the pool's inflight and futs counts. */
static int l_deliver(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    lua_Integer left = 0, taken = 0, settled = 0;
    for (lua_Integer k = 1; k <= n; k++) {
        lua_rawgeti(L, 1, (int)k); /* 4: the reply */
        int64_t h[3]; /* slot, -cid, nres */
        const char *end = NULL, *r = packed_head(L, 4, 3, h, &end);
        int mine = r && h[1] < 0 && h[1] > INT32_MIN && h[2] >= 0 && h[2] <= end - r;
        if (mine) {
            lua_rawgeti(L, 3, (int)-h[1]); /* 5: its record */
            if (lua_isnil(L, 5)) { /* gone (terminated, or settled by a worker's death) */
                lua_settop(L, 3);
                continue;
            }
            mine = lua_istable(L, 5);
            if (mine) {
                get_key(L, 5, K_SINGLE);
                get_key(L, 5, K_SKIPPED);
                mine = lua_toboolean(L, 6) && !lua_toboolean(L, 7);
            }
        }
        if (!mine) {
            lua_settop(L, 4);
            lua_rawseti(L, 1, (int)++left);
            continue;
        }
        lua_pushnil(L);
        lua_rawseti(L, 3, (int)-h[1]);
        taken++;
        get_key(L, 5, K_STATE); /* 8 */
        if (lua_rawequal(L, 8, KEY(K_DONE)) || lua_rawequal(L, 8, KEY(K_CANCELLED))) {
            lua_settop(L, 3);
            continue;
        }
        int nres = (int)h[2];
        char fmt = *lua_tostring(L, 4);
        lua_pushvalue(L, KEY(K_VALUE));
        if (nres == 1) r = push_packed(L, fmt, r, end);
        else if (nres == 0) lua_pushnil(L);
        else {
            lua_createtable(L, nres, 0);
            for (int x = 1; x <= nres && r; x++) {
                r = push_packed(L, fmt, r, end);
                if (r) lua_rawseti(L, -2, x);
            }
        }
        if (!r || r != end) return luaL_error(L, "pool.deliver: corrupt reply");
        lua_rawset(L, 5);
        SET_KEY(5, K_NR, lua_pushinteger(L, nres));
        SET_KEY(5, K_STATE, lua_pushvalue(L, KEY(K_DONE)));
        SET_KEY(5, K_OK, lua_pushboolean(L, 1));
        SET_KEY(5, K_M, lua_pushnil(L));
        settled++;
        lua_settop(L, 3);
    }
    cb_pushinteger(L, left);
    cb_pushinteger(L, taken);
    cb_pushinteger(L, settled);
    return 3;
}

/* move(src, n, dst, first): dst[first + k - 1] = src[k], holes included */
static int l_move(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer first = luaL_checkinteger(L, 4);
    for (lua_Integer k = 1; k <= n; k++) {
        lua_rawgeti(L, 1, (int)k);
        lua_rawseti(L, 3, (int)(first + k - 1));
    }
    return 0;
}

/* run(fn, items, n, res, st, b, first, k): the worker's loop over one
 * chunk, from item k + 1 on, for the plain case (no seed, no timeout, no
 * spread arguments): res[j] = fn(items[j]). Before each item it stores the
 * item's index in st[b + 2] and its position in the chunk in st[b + 4]
 * (the shared.array the caller reads when a worker dies); an error
 * propagates, and the caller resumes after st[b + 4]. `first` is the first
 * item's index, or a table of the indices. */
static int l_run(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer n = luaL_checkinteger(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    cc_array *st = (cc_array *)cb_check(L, 5, CC_T_ARRAY, "pool.run");
    lua_Integer b = luaL_checkinteger(L, 6);
    int list = lua_istable(L, 7);
    lua_Integer first = list ? 0 : luaL_checkinteger(L, 7);
    lua_Integer k = luaL_checkinteger(L, 8);
    if (st->elem != CC_F64 || b < 0 || b + 4 > st->n) return luaL_error(L, "pool.run: bad state array");
    double *slot = (double *)(void *)st->data + b;
    for (k = k + 1; k <= n; k++) {
        lua_Integer i = first + k - 1;
        if (list) {
            lua_rawgeti(L, 7, (int)k);
            i = (lua_Integer)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
        double di = (double)i, dk = (double)k;
        __atomic_store(&slot[1], &di, __ATOMIC_RELAXED);
        __atomic_store(&slot[3], &dk, __ATOMIC_RELAXED);
        lua_pushvalue(L, 1);
        lua_rawgeti(L, 2, (int)k);
        lua_call(L, 1, 1);
        lua_rawseti(L, 4, (int)k);
    }
    return 0;
}

/* table(n): an empty table with room for n array items, so results that
 * arrive out of order still land in the array part */
static int l_table(lua_State *L) {
    lua_Integer n = luaL_optinteger(L, 1, 0);
    lua_createtable(L, n > 0 && n < (1 << 28) ? (int)n : 0, 0);
    return 1;
}

static const luaL_Reg helpers[] = {
    {"table", l_table},
    {"isatty", l_isatty}, {"fnv", l_fnv},   {"nap", l_nap}, {"pack", l_pack}, {"packv", l_packv},
    {"unpack", l_unpack}, {"move", l_move}, {"run", l_run}, {"singles", l_singles}, {NULL, NULL},
};

/* The pool is loaded on first use, not when concur opens: every thread
 * opens concur in a state of its own, and compiling the chunk there would
 * cost each thread.new about a millisecond. concur.pool (also the global
 * `pool` and package.loaded["concur.pool"]) starts as an empty table whose
 * __index runs the chunk once, copies the module's fields into it and
 * drops the metatable: from then on it is the module itself. */
static int load_pool(lua_State *L) {
    /* upvalue 1: the concur table */
    if (luaL_loadbuffer(L, pool_lua, sizeof pool_lua - 1, "@lib/concur/pool.lua") != 0)
        return lua_error(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    cb_newlib(L, helpers);
    static const luaL_Reg keyed[] = {{"future", l_future}, {"submit1", l_submit1}, {"deliver", l_deliver}};
    for (size_t i = 0; i < sizeof keyed / sizeof *keyed; i++) {
        luaL_checkstack(L, NKEYS + 2, "pool");
        for (int k = 0; k < NKEYS; k++) lua_pushstring(L, keys[k]);
        lua_pushcclosure(L, keyed[i].func, NKEYS);
        lua_setfield(L, -2, keyed[i].name);
    }
    lua_call(L, 2, 1);
    return 1;
}

static int pool_index(lua_State *L) {
    /* 1: the proxy, 2: the key; upvalue 1: the concur table */
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, load_pool, 1);
    lua_call(L, 0, 1); /* the module */
    lua_pushnil(L);
    while (lua_next(L, 3)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, 1);
    }
    lua_pushnil(L);
    lua_setmetatable(L, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, 1);
    return 1;
}

/* Called by luaopen_concur with the concur table at lib: pushes the pool
 * table (the proxy above). */
int cb_open_pool(lua_State *L, int lib) {
    lib = cb_absindex(L, lib);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, lib);
    lua_pushcclosure(L, pool_index, 1);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    return 1;
}
