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

#include <math.h>
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

/* The bytes of n values packed (see above), *len set, or NULL when one is
 * not a scalar. Up to `cap` bytes are built in `small`; more in a scratch
 * userdata left on the stack (the caller resets the stack). */
static const char *pack_to(lua_State *L, int table, lua_Integer first, lua_Integer n, char *small, size_t cap,
                           size_t *len) {
    /* all numbers (the usual map chunk): one pass */
    if (n > 0) {
        size_t need = 1 + 8 * (size_t)n;
        char *out = need <= cap ? small : lua_newuserdata(L, need); /* scratch, collected */
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
            *len = need;
            return out;
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
            lua_pop(L, 1);
            return NULL;
        }
        ints += tag == SC_INT;
        dbls += tag == SC_DBL;
        others += tag != SC_INT && tag != SC_DBL;
        size += 1 + (tag == SC_INT || tag == SC_DBL ? 8 : tag == SC_STR ? 4 + (size_t)cb_rawlen(L, -1) : 0);
        lua_pop(L, 1);
    }
    char fmt = others || (ints && dbls) ? 'v' : ints ? 'i' : 'd';
    if (fmt != 'v') size = 1 + 8 * (size_t)n;
    char *out = size <= cap ? small : lua_newuserdata(L, size); /* scratch, collected */
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
    *len = size;
    return out;
}

/* The string of n values (see above) on top of the stack, or nil when
 * one is not a scalar */
static int pack_items(lua_State *L, int table, lua_Integer first, lua_Integer n) {
    char small[256];
    size_t len;
    int top = lua_gettop(L);
    const char *s = pack_to(L, table, first, n, small, sizeof small, &len);
    if (!s) {
        lua_settop(L, top);
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, s, len);
    if (lua_gettop(L) > top + 1) lua_replace(L, top + 1); /* over the scratch */
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

/* The tag of the value at *r of a packed string of format fmt: read there
 * (*r moves past it) for 'v', the format's own otherwise; 0 at the end. */
static char tag_at(char fmt, const char **r, const char *end) {
    if (fmt != 'v') return fmt == 'i' ? SC_INT : SC_DBL;
    return *r < end ? *(*r)++ : 0;
}

/* Pushes the value at r of a packed string of format fmt ending at end:
 * the position after it, or NULL when the bytes are not a value. */
static const char *push_packed(lua_State *L, char fmt, const char *r, const char *end) {
    char tag = tag_at(fmt, &r, end);
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
    char tag = tag_at(fmt, &r, end);
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

/* The first n integers of the packed string s (len bytes) into h: the
 * position after them, or NULL when s is not packed or they are not
 * integers. */
static const char *head_of(const char *s, size_t len, int n, int64_t *h) {
    if (len == 0 || (s[0] != 'i' && s[0] != 'd' && s[0] != 'v')) return NULL;
    const char *r = s + 1, *end = s + len;
    for (int x = 0; x < n && r; x++) r = read_int(s[0], r, end, &h[x]);
    return r;
}

/* head_of the packed message at idx, *endp set to its end; NULL when idx
 * is not a string */
static const char *packed_head(lua_State *L, int idx, int n, int64_t *h, const char **endp) {
    size_t len = 0;
    const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &len) : NULL;
    if (!s) return NULL;
    *endp = s + len;
    return head_of(s, len, n, h);
}

/* singles(group, gi, gn, fcache, st, b, cancels, rq, slot, traceback,
 *         finish, limit) -> done, long
 * The worker's loop over quick submits (lib/concur/pool.lua, worker_main),
 * in C: from group[gi + 1], at most limit of them, while each is a packed
 * single {0, cid, j, nargs, args...} whose function is fcache[j]. Each one
 * is marked as Lua marks it -- st[b + 1] = cid, then a look at cancels (a
 * cancel pending stops the loop before it: Lua looks at the skip marks),
 * st[b + 2] = 1 -- taken out of the group, run as fn(args) under
 * traceback, and answered: {slot, -cid, nres, results...} packed goes
 * into the result queue rq from C (put_packed: no Lua string made for
 * it); an error, or results that do not pack, go to
 * finish(cid, ok, ...), which answers in the codec's forms. Then the marks
 * are cleared. It stops after one that ran LONG seconds (long true: Lua
 * hands the rest of the group back). Per submit, callgrind counted 14.7k
 * instructions in a thread worker on the Lua path, 3.2k on this one. */
#define LONG 0.002
static int put_packed(lua_State *L, cc_queue *q, int qi, const char *m, size_t mlen);
static int l_singles(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer gi = luaL_checkinteger(L, 2), gn = luaL_checkinteger(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    cc_array *st = (cc_array *)cb_check(L, 5, CC_T_ARRAY, "pool.singles");
    lua_Integer b = luaL_checkinteger(L, 6);
    cc_array *cancels = (cc_array *)cb_check(L, 7, CC_T_ARRAY, "pool.singles");
    cc_queue *rq = (cc_queue *)cb_check(L, 8, CC_T_QUEUE, "pool.singles");
    lua_Integer slot = luaL_checkinteger(L, 9);
    lua_Integer limit = luaL_checkinteger(L, 12);
    if (st->elem != CC_F64 || b < 0 || b + 4 > st->n || cancels->elem != CC_I64 || cancels->n < 1)
        return luaL_error(L, "pool.singles: bad state arrays");
    double *mark = (double *)(void *)st->data + b;
    const int64_t *pending = (const int64_t *)(const void *)cancels->data;
    lua_Integer done = 0;
    int slow = 0;
    lua_settop(L, 12);
    for (lua_Integer k = gi + 1; k <= gn && done < limit && !slow; k++) {
        lua_rawgeti(L, 1, (int)k); /* 13: the message */
        int64_t h[4]; /* gen, cid, j, nargs */
        const char *end = NULL, *r = packed_head(L, 13, 4, h, &end);
        if (!r || h[0] != 0 || h[1] <= 0 || h[2] >= 0 || h[3] < 0 || h[3] > end - r) break;
        char fmt = *lua_tostring(L, 13);
        lua_rawgeti(L, 4, (int)h[2]); /* 14: fn */
        if (!lua_isfunction(L, 14)) break;
        double cid = (double)h[1], one = 1, zero = 0;
        __atomic_store(&mark[0], &cid, __ATOMIC_SEQ_CST); /* the mark, then the look */
        if (__atomic_load_n(pending, __ATOMIC_SEQ_CST) > 0) break;
        __atomic_store(&mark[1], &one, __ATOMIC_RELAXED);
        lua_pushnil(L);
        lua_rawseti(L, 1, (int)k);
        double t0 = cc_now();
        luaL_checkstack(L, (int)h[3] + 8, "pool.singles");
        lua_pushinteger(L, (lua_Integer)slot); /* 15-17: the reply's head */
        lua_pushinteger(L, (lua_Integer)-h[1]);
        lua_pushinteger(L, 0);
        lua_pushvalue(L, 14);
        int na = 0;
        for (; r && r < end; na++) r = push_packed(L, fmt, r, end);
        if (!r || na != h[3]) return luaL_error(L, "pool.singles: corrupt message");
        int ok = lua_pcall(L, na, LUA_MULTRET, 10) == LUA_OK;
        int nres = lua_gettop(L) - 17;
        const char *reply = NULL;
        size_t rlen = 0;
        char rbuf[256];
        if (ok) {
            lua_pushinteger(L, nres);
            lua_replace(L, 17);
            reply = pack_to(L, 0, 15, nres + 3, rbuf, sizeof rbuf, &rlen);
        }
        if (reply) { /* straight into the result queue: no Lua string */
            if (put_packed(L, rq, 8, reply, rlen) != LUA_OK) return lua_error(L);
        } else {
            lua_settop(L, 17 + nres);
            luaL_checkstack(L, nres + 4, "pool.singles");
            lua_pushvalue(L, 11);
            lua_pushinteger(L, (lua_Integer)h[1]);
            lua_pushboolean(L, ok);
            for (int x = 0; x < nres; x++) lua_pushvalue(L, 18 + x);
            lua_call(L, 2 + nres, 0);
        }
        __atomic_store(&mark[1], &zero, __ATOMIC_RELAXED);
        __atomic_store(&mark[0], &zero, __ATOMIC_RELAXED);
        lua_settop(L, 12);
        done++;
        slow = cc_now() - t0 > LONG;
    }
    cb_pushinteger(L, done);
    lua_pushboolean(L, slow);
    return 2;
}

/* ---- futures ----
 * A submit's future is a userdata, not a table: one allocation where a
 * table of its eight fields took two and eight hash insertions, and the
 * packed message it keeps for a resend is held in its own bytes instead of
 * an interned Lua string. pool.lua still reads and writes it as a table
 * (f.state, f.cid, f.err ...): Future's __index and __newindex are
 * fut_index and fut_newindex below, which map the fields pool.c also
 * touches to the struct and keep any other key in a table of its own
 * (user value UV_EXTRA). Futures of a backend that batches its submits
 * stay Lua tables with the same metatable: there the two only look up
 * Future's methods and store new keys raw.
 *
 * The closures below share these upvalues: the names of the states and of
 * the pool's fields they read, made once (lua_setfield looks every literal
 * up in the API's string cache and compares it: 1.4k instructions a
 * submit), then Pool and Future (set by bind). */
enum { K_PENDING = 1, K_RUNNING, K_DONE, K_CANCELLED, K_OWNER, K_BROKEN, K_CLOSED, K_DIRECT, K_FCACHE, K_OUT,
       K_NEXTCID, K_ID, K_N, K_UPS, K_POOLMT, K_FUTMT };
static const char *const keys[] = {"pending", "running", "done",   "cancelled", "owner", "broken", "closed",
                                   "direct",  "fcache",  "out",    "nextcid",   "id",    "n",      "ups"};
#define NKEYS ((int)(sizeof keys / sizeof *keys))
#define NUPS (NKEYS + 2) /* + Pool and Future */
#define KEY(k) lua_upvalueindex(k)

/* t[key] = what `push` pushes (t at an absolute index) */
#define SET_KEY(t, key, push) (lua_pushvalue(L, KEY(key)), (push), lua_rawset(L, (t)))

/* pushes t[key] (raw) */
static void get_key(lua_State *L, int t, int key) {
    lua_pushvalue(L, KEY(key));
    lua_rawget(L, t);
}

#define FUT_MAGIC 0x46757431u
#define NO_INT INT64_MIN /* an integer field that is nil */
typedef struct pfut {
    uint32_t magic;
    int32_t state;            /* K_PENDING .. K_CANCELLED */
    int64_t cid, nr;          /* NO_INT: nil */
    uint8_t ok, single, skipped;
    uint8_t m_uv;             /* m was set from Lua: it is in UV_M */
    uint32_t mlen;            /* the packed message kept in m[], 0 when none */
    char m[];
} pfut;
enum { UV_POOL = 1, UV_VALUE, UV_M, UV_EXTRA, NUV = UV_EXTRA };

/* the future at idx, or NULL when it is anything else (a table future too) */
static pfut *to_fut(lua_State *L, int idx) {
    if (lua_type(L, idx) != LUA_TUSERDATA || cb_rawlen(L, idx) < sizeof(pfut)) return NULL;
    pfut *f = (pfut *)lua_touserdata(L, idx);
    return f->magic == FUT_MAGIC ? f : NULL;
}

enum { FLD_NONE, FLD_STATE, FLD_OK, FLD_NR, FLD_CID, FLD_SINGLE, FLD_SKIPPED, FLD_POOL, FLD_VALUE, FLD_M };
static int field_of(lua_State *L, int k) {
    if (lua_type(L, k) != LUA_TSTRING) return FLD_NONE;
    size_t n;
    const char *s = lua_tolstring(L, k, &n);
    switch (n) {
    case 1: return s[0] == 'm' ? FLD_M : FLD_NONE;
    case 2: return s[0] == 'o' && s[1] == 'k' ? FLD_OK : s[0] == 'n' && s[1] == 'r' ? FLD_NR : FLD_NONE;
    case 3: return memcmp(s, "cid", 3) ? FLD_NONE : FLD_CID;
    case 4: return memcmp(s, "pool", 4) ? FLD_NONE : FLD_POOL;
    case 5: return !memcmp(s, "state", 5) ? FLD_STATE : !memcmp(s, "value", 5) ? FLD_VALUE : FLD_NONE;
    case 6: return memcmp(s, "single", 6) ? FLD_NONE : FLD_SINGLE;
    case 7: return memcmp(s, "skipped", 7) ? FLD_NONE : FLD_SKIPPED;
    default: return FLD_NONE;
    }
}

static void push_int_field(lua_State *L, int64_t v) {
    if (v == NO_INT) lua_pushnil(L);
    else cb_pushinteger(L, v);
}

/* fut_index(f, key): Future's __index */
static int l_fut_index(lua_State *L) {
    pfut *f = to_fut(L, 1);
    if (f) {
        switch (field_of(L, 2)) {
        case FLD_STATE: lua_pushvalue(L, KEY(f->state)); return 1;
        case FLD_OK: lua_pushboolean(L, f->ok); return 1;
        case FLD_NR: push_int_field(L, f->nr); return 1;
        case FLD_CID: push_int_field(L, f->cid); return 1;
        case FLD_SINGLE: lua_pushboolean(L, f->single); return 1;
        case FLD_SKIPPED: if (f->skipped) lua_pushboolean(L, 1); else lua_pushnil(L); return 1;
        case FLD_POOL: cb_getiuv(L, 1, UV_POOL); return 1;
        case FLD_VALUE: cb_getiuv(L, 1, UV_VALUE); return 1;
        case FLD_M:
            if (f->mlen) lua_pushlstring(L, f->m, f->mlen);
            else cb_getiuv(L, 1, UV_M);
            return 1;
        default: break;
        }
    }
    /* a method (Future's own fields), then a key of its own */
    if (lua_getmetatable(L, 1)) {
        lua_pushvalue(L, 2);
        lua_rawget(L, -2);
        if (!lua_isnil(L, -1) || !f) return 1;
        lua_pop(L, 2);
    } else if (!f) {
        lua_pushnil(L);
        return 1;
    }
    cb_getiuv(L, 1, UV_EXTRA);
    if (!lua_istable(L, -1)) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

/* the integer of a field being set (nil: NO_INT) */
static int64_t int_field(lua_State *L, int v, const char *name) {
    if (lua_isnil(L, v)) return NO_INT;
    int ok = 0;
    lua_Integer i = cb_tointegerx(L, v, &ok);
    if (!ok) luaL_error(L, "pool future: %s must be an integer", name);
    return (int64_t)i;
}

/* fut_newindex(f, key, value): Future's __newindex */
static int l_fut_newindex(lua_State *L) {
    pfut *f = to_fut(L, 1);
    if (!f) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 3);
        lua_rawset(L, 1);
        return 0;
    }
    lua_settop(L, 3);
    switch (field_of(L, 2)) {
    case FLD_STATE:
        for (int k = K_PENDING; k <= K_CANCELLED; k++)
            if (lua_rawequal(L, 3, KEY(k))) {
                f->state = k;
                return 0;
            }
        return luaL_error(L, "pool future: bad state");
    case FLD_OK: f->ok = (uint8_t)lua_toboolean(L, 3); return 0;
    case FLD_NR: f->nr = int_field(L, 3, "nr"); return 0;
    case FLD_CID: f->cid = int_field(L, 3, "cid"); return 0;
    case FLD_SINGLE: f->single = (uint8_t)lua_toboolean(L, 3); return 0;
    case FLD_SKIPPED: f->skipped = (uint8_t)lua_toboolean(L, 3); return 0;
    case FLD_POOL: cb_setiuv(L, 1, UV_POOL); return 0;
    case FLD_VALUE: cb_setiuv(L, 1, UV_VALUE); return 0;
    case FLD_M:
        f->mlen = 0;
        f->m_uv = !lua_isnil(L, 3);
        cb_setiuv(L, 1, UV_M);
        return 0;
    default: break;
    }
    cb_getiuv(L, 1, UV_EXTRA); /* 4 */
    if (!lua_istable(L, 4)) {
        if (lua_isnil(L, 3)) return 0;
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, 4);
        cb_setiuv(L, 1, UV_EXTRA);
    }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, 4);
    return 0;
}

/* Pushes a new submit's future: state "running", single, cid (NO_INT:
 * nil), ok false, nr 0, pool p (an absolute index), keeping the mlen
 * bytes at m (its packed message). Future is the metatable. */
static pfut *push_future(lua_State *L, int p, int64_t cid, const char *m, size_t mlen) {
    pfut *f = (pfut *)cb_newuserdatauv(L, sizeof(pfut) + mlen, NUV);
    f->magic = FUT_MAGIC;
    f->state = K_RUNNING;
    f->cid = cid;
    f->nr = 0;
    f->ok = 0;
    f->single = 1;
    f->skipped = 0;
    f->m_uv = 0;
    f->mlen = (uint32_t)mlen;
    if (mlen) memcpy(f->m, m, mlen);
    lua_pushvalue(L, p);
    cb_setiuv(L, -2, UV_POOL);
    lua_pushvalue(L, KEY(K_FUTMT));
    lua_setmetatable(L, -2);
    return f;
}

/* future(p) -> a submit's future as submit makes it, with no cid and no
 * message until Lua's send_single sets them */
static int l_future(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    push_future(L, 1, NO_INT, NULL, 0);
    return 1;
}

/* value(f) -> nr, value: a future settled with results (nr of them; value
 * the one, or a table of them), or nothing -- Future:result's quick look */
static int l_value(lua_State *L) {
    pfut *f = to_fut(L, 1);
    if (!f || f->state != K_DONE || !f->ok || f->nr == NO_INT) return 0;
    cb_pushinteger(L, f->nr);
    cb_getiuv(L, 1, UV_VALUE);
    return 2;
}

/* Puts the packed message m (mlen bytes) into the queue at qi: straight
 * when its message fits the buffer, else (and when that put fails: a
 * closed queue, full memory) through the queue's own put, which takes the
 * codec's path and has the right error: LUA_OK, or another status with
 * that error on the stack. */
static int put_packed(lua_State *L, cc_queue *q, int qi, const char *m, size_t mlen) {
    unsigned char buf[512];
    size_t len = fm_encode_bytes(m, mlen, buf, sizeof buf);
    if (len && cc_queue_put(q, buf, len, CC_FOREVER) == 0) return LUA_OK;
    lua_getfield(L, qi, "put");
    lua_pushvalue(L, qi);
    lua_pushlstring(L, m, mlen);
    return lua_pcall(L, 2, 0, 0);
}

/* p.out[cid] = the value on top (nil: none) */
static void record(lua_State *L, int p, int64_t cid) {
    int f = lua_gettop(L);
    get_key(L, p, K_OUT);
    lua_pushvalue(L, f);
    cb_rawseti(L, -2, cid);
    lua_pop(L, 1);
}

/* Packs {0, cid, j, nargs, args...} (the args at first..first+nargs-1),
 * makes the future, records it (p.out[cid]: before the put, as a finalizer
 * run by the put may pump its reply) and puts the message into the queue at
 * qi (q): the future on top, or NULL (nothing pushed, nothing done) when an
 * argument does not pack or there are too many to copy onto the stack (the
 * Lua path packs them where they are). A put that fails takes the record
 * back and raises. */
#define MAXPACKED 200
static pfut *send_packed(lua_State *L, int p, cc_queue *q, int qi, int64_t cid, int64_t j, int first, int nargs) {
    if (nargs > MAXPACKED) return NULL;
    luaL_checkstack(L, nargs + 16, "pool:submit");
    int top = lua_gettop(L);
    cb_pushinteger(L, 0);
    cb_pushinteger(L, cid);
    cb_pushinteger(L, j);
    cb_pushinteger(L, nargs);
    for (int i = 0; i < nargs; i++) lua_pushvalue(L, first + i);
    char small[256];
    size_t len;
    const char *m = pack_to(L, 0, top + 1, nargs + 4, small, sizeof small, &len);
    if (!m) {
        lua_settop(L, top);
        return NULL;
    }
    pfut *f = push_future(L, p, cid, m, len);
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    record(L, p, cid);
    if (put_packed(L, q, qi, f->m, f->mlen) != LUA_OK) {
        lua_pushnil(L);
        record(L, p, cid);
        lua_pop(L, 1);
        lua_error(L);
        return NULL;
    }
    return f;
}

/* p.nextcid = cid: taken before anything is allocated, since a collection
 * may run a finalizer that submits too and must get an id of its own */
static void take_cid(lua_State *L, int p, int64_t cid) { SET_KEY(p, K_NEXTCID, cb_pushinteger(L, cid)); }

/* a and b the same upvalue: raw equal and, for numbers, the same subtype
 * and the same sign of zero (0.0 and -0.0, 1 and 1.0 are raw equal), as
 * pool.lua's `same` */
static int same_value(lua_State *L, int a, int b) {
    if (!lua_rawequal(L, a, b)) return 0;
    if (lua_type(L, a) != LUA_TNUMBER) return 1;
    if (cb_isinteger(L, a) != cb_isinteger(L, b)) return 0;
    if (cb_isinteger(L, a)) return 1;
    lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
    return x != 0 || signbit(x) == signbit(y);
}

/* submit(p, fn, ...) -> the future, or nothing when this is not the plain
 * case, which Pool:submit then takes in Lua: p a pool of this process,
 * open and not broken, that puts submits straight into its task queue
 * (p.direct); fn registered (p.fcache[fn].id) with its upvalues unchanged;
 * arguments that pack. Takes the next id (take_cid), then send_packed:
 * pack, future, record (p.out[cid]), put, as Lua's path does; a put that
 * raises takes its record back. Lua's path calls it again for a function
 * it has just registered. */
static int l_submit(lua_State *L) {
    int top = lua_gettop(L);
    if (top < 2 || !lua_istable(L, 1) || !lua_isfunction(L, 2) || !lua_getmetatable(L, 1)) return 0;
    int ok = lua_rawequal(L, -1, KEY(K_POOLMT));
    lua_settop(L, top);
    if (!ok) return 0;
    luaL_checkstack(L, 24, "pool:submit");
    get_key(L, 1, K_OWNER);
    get_key(L, 1, K_BROKEN);
    get_key(L, 1, K_CLOSED);
    get_key(L, 1, K_DIRECT); /* top + 4 */
    int qi = top + 4;
    cc_obj *o = cb_test(L, qi);
    if (lua_tointeger(L, top + 1) != (lua_Integer)cc_pid() || lua_toboolean(L, top + 2) || lua_toboolean(L, top + 3) ||
        !o || o->type != CC_T_QUEUE)
        return 0;
    get_key(L, 1, K_FCACHE);
    if (!lua_istable(L, -1)) return 0;
    lua_pushvalue(L, 2);
    lua_rawget(L, -2); /* e = fcache[fn] */
    int e = lua_gettop(L);
    if (!lua_istable(L, e)) return 0;
    get_key(L, e, K_ID);
    int isint = 0;
    int64_t j = (int64_t)cb_tointegerx(L, -1, &isint);
    get_key(L, e, K_N);
    int nups = (int)lua_tointeger(L, -1);
    if (!isint || j >= 0) return 0;
    if (nups > 0) { /* each upvalue still the one it was registered with */
        get_key(L, e, K_UPS);
        int ups = lua_gettop(L);
        if (!lua_istable(L, ups)) return 0;
        for (int i = 1; i <= nups; i++) {
            if (!lua_getupvalue(L, 2, i)) return 0;
            lua_rawgeti(L, ups, i);
            if (!same_value(L, -1, -2)) return 0;
            lua_pop(L, 2);
        }
    }
    get_key(L, 1, K_NEXTCID);
    int64_t cid = (int64_t)lua_tointeger(L, -1) + 1;
    lua_settop(L, qi);
    take_cid(L, 1, cid);
    if (!send_packed(L, 1, (cc_queue *)o, qi, cid, j, 3, top - 2)) return 0;
    return 1;
}

/* One reply, the packed string s (len bytes), for the caller's side of
 * singles: when it is {slot, -cid, nres, results...} and its record
 * out[cid] is a single future not marked skipped, out[cid] = nil and,
 * unless the future is settled already (cancelled), it is settled as
 * Future:_settle does -- state "done", ok true, m nil, value (the one
 * result, nil, or a table of them) and nr -- and 1 comes back; also 1,
 * dropped, when its record is gone (terminated, or settled by a worker's
 * death). 0 for any other reply: Lua's deliver takes it. out is an
 * absolute index; so is list, when not 0: a future settled here is
 * appended to it, at ++*nlist. */
static int deliver_one(lua_State *L, int out, int list, lua_Integer *nlist, const char *s, size_t len) {
    int64_t h[3]; /* slot, -cid, nres */
    const char *end = s + len, *r = head_of(s, len, 3, h);
    if (!r || h[1] >= 0 || h[1] == INT64_MIN || h[2] < 0 || h[2] > end - r) return 0;
    int top = lua_gettop(L);
    int64_t cid = -h[1];
    cb_rawgeti(L, out, cid);
    int fi = lua_gettop(L);
    pfut *f = to_fut(L, fi);
    if (!lua_isnil(L, fi) && (!f || !f->single || f->skipped)) {
        lua_settop(L, top);
        return 0;
    }
    if (f) {
        lua_pushnil(L);
        cb_rawseti(L, out, cid);
    }
    if (f && f->state != K_DONE && f->state != K_CANCELLED) {
        /* (the values may run a finalizer, which may cancel f: its state
         * is looked at again before it is set) */
        int nres = (int)h[2];
        if (nres == 1) r = push_packed(L, s[0], r, end);
        else if (nres == 0) lua_pushnil(L);
        else {
            lua_createtable(L, nres, 0);
            for (int x = 1; x <= nres && r; x++) {
                r = push_packed(L, s[0], r, end);
                if (r) lua_rawseti(L, -2, x);
            }
        }
        if (!r || r != end) return luaL_error(L, "pool.deliver: corrupt reply");
        if (f->state == K_DONE || f->state == K_CANCELLED) {
            lua_settop(L, top);
            return 1;
        }
        cb_setiuv(L, fi, UV_VALUE);
        f->nr = nres;
        f->state = K_DONE;
        f->ok = 1;
        f->mlen = 0;
        if (f->m_uv) {
            lua_pushnil(L);
            cb_setiuv(L, fi, UV_M);
            f->m_uv = 0;
        }
        if (list) {
            lua_pushvalue(L, fi);
            lua_rawseti(L, list, (int)++*nlist);
        }
    }
    lua_settop(L, top);
    return 1;
}

/* deliver(got, n, out, list) -> left
 * Of the n replies in got, those deliver_one takes are dealt with (the
 * futures it settles appended to list); the others move to got[1..left]
 * for Lua's deliver. (A backend's own channel; the queue backends take
 * their replies with take.) */
static int l_deliver(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_settop(L, 4);
    lua_Integer left = 0, nlist = (lua_Integer)cb_rawlen(L, 4);
    for (lua_Integer k = 1; k <= n; k++) {
        lua_rawgeti(L, 1, (int)k); /* 5: the reply */
        size_t len;
        const char *s = lua_type(L, 5) == LUA_TSTRING ? lua_tolstring(L, 5, &len) : NULL;
        if (!s || !deliver_one(L, 3, 4, &nlist, s, len)) lua_rawseti(L, 1, (int)++left);
        lua_settop(L, 4);
    }
    cb_pushinteger(L, left);
    return 1;
}

/* take(rq, max, wait, out, list) -> got, left, n
 * The caller's side of the queue backends: up to max replies from the
 * result queue rq, waiting up to `wait` seconds for one when there is none.
 * Each one deliver_one takes is dealt with from the queue's bytes, with
 * no Lua string made for it (the futures it settles appended to list);
 * the others (left of the n taken) are decoded into got[1..left] for
 * Lua's deliver. Errors as queue:get_many's. */
static int l_take(lua_State *L) {
    cc_queue *q = (cc_queue *)cb_check(L, 1, CC_T_QUEUE, "pool.take");
    lua_Integer max = luaL_checkinteger(L, 2);
    double wait = (double)luaL_checknumber(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TTABLE);
    if (max < 1) max = 1;
    lua_settop(L, 5);
    lua_Integer nlist = (lua_Integer)cb_rawlen(L, 5);
    cb_batch *all = cb_batch_new(L); /* 6 */
    lua_newtable(L);                  /* 7: got */
    size_t n = 0;
    int r = cc_queue_get_many(q, (size_t)max, &all->all, &all->lens, &n, cc_deadline(0));
    if (r == -ETIMEDOUT && wait > 0)
        r = cc_queue_get_many(q, (size_t)max, &all->all, &all->lens, &n, cc_deadline(wait));
    if (r == -ETIMEDOUT || r == -EPIPE) n = 0;
    else if (r) return cb_fail(L, r, "queue:get_many");
    all->n = all->cap = n;
    size_t off = 0;
    lua_Integer left = 0;
    for (size_t i = 0; i < n; i++) {
        const char *msg = all->all.data + off, *s;
        size_t len = all->lens[i], sl;
        int mine = fm_peek_str(msg, len, &s, &sl) && deliver_one(L, 4, 5, &nlist, s, sl);
        if (!mine) {
            if (fm_decode(L, msg, len) < 0) cb_batch_decode(L, all, i, off, "queue:get_many");
            lua_rawseti(L, 7, (int)++left);
        }
        if (all->next == i) { /* a scalar holds no references: nothing left to release */
            all->next++;
            all->off += len;
        }
        off += len;
    }
    cb_batch_free(L, all);
    lua_settop(L, 7);
    cb_pushinteger(L, left);
    cb_pushinteger(L, (lua_Integer)n);
    return 3;
}

/* the closures with the upvalues above */
static const luaL_Reg keyed[] = {{"fut_index", l_fut_index}, {"fut_newindex", l_fut_newindex}, {"future", l_future},
                                 {"value", l_value},         {"submit", l_submit},             {"deliver", l_deliver}};
#define NKEYED (sizeof keyed / sizeof *keyed)

/* bind(C, Pool, Future): gives the closures above their last two upvalues */
static int l_bind(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    for (size_t i = 0; i < NKEYED; i++) {
        lua_getfield(L, 1, keyed[i].name);
        lua_pushvalue(L, 2);
        lua_setupvalue(L, -2, K_POOLMT);
        lua_pushvalue(L, 3);
        lua_setupvalue(L, -2, K_FUTMT);
        lua_pop(L, 1);
    }
    return 0;
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
    {"unpack", l_unpack}, {"move", l_move}, {"run", l_run}, {"singles", l_singles}, {"take", l_take},
    {NULL, NULL},
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
    for (size_t i = 0; i < NKEYED; i++) {
        luaL_checkstack(L, NUPS + 2, "pool");
        for (int k = 0; k < NKEYS; k++) lua_pushstring(L, keys[k]);
        lua_pushnil(L); /* Pool and Future: bind */
        lua_pushnil(L);
        lua_pushcclosure(L, keyed[i].func, NUPS);
        lua_setfield(L, -2, keyed[i].name);
    }
    lua_pushcfunction(L, l_bind);
    lua_setfield(L, -2, "bind");
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
