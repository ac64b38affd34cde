/*
 * codec_encode.c -- Lua values -> a message (the format is in codec.h), in
 * the manner of Lua's ldump.c: one encoder state on the C stack, one
 * function per kind of value.
 *
 * Encoding can run Lua code (any allocation may run a __gc finalizer) and
 * that code may send something too; it then encodes with a state of its
 * own. What must grow (the seen-table, the module index, a long table of
 * shared objects) goes into Lua stack slots reserved by cb_encode, so a
 * refusal that longjmps out leaves nothing to free.
 *
 * Refusals name where the bad value was: "queue:put: cannot send a
 * coroutine (argument 1, field "job.co")".
 */
#include "codec.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct seg {
    int kind;          /* 'f' field (key at stack index), 'u' upvalue name, 'm' metatable */
    int idx;
    const char *name;
} seg;

typedef struct enc {
    lua_State *L;
    cc_buf *b;
    const char *fname;
    int arg;           /* current argument number, for messages */
    int seen;          /* stack slot of the table -> id map (nil until needed) */
    int modindex;      /* stack slot of the module index (nil until needed) */
    int refslot;       /* stack slot of the grown shared-object table (nil until needed) */
    int nextid;
    cc_obj **refs;     /* refs_inline, or the userdata in refslot once it outgrew it */
    uint32_t nrefs, refcap;
    cc_obj *refs_inline[16];
    int depth;
    seg path[CB_MAX_DEPTH + 1];
} enc;

static void put(enc *e, const void *p, size_t n) {
    if (cc_buf_reserve(e->b, e->b->len + n) != 0) luaL_error(e->L, "%s: out of memory", e->fname);
    memcpy(e->b->data + e->b->len, p, n);
    e->b->len += n;
}

static void put_byte(enc *e, int c) {
    if (e->b->len < e->b->cap) e->b->data[e->b->len++] = (char)c;
    else {
        unsigned char ch = (unsigned char)c;
        put(e, &ch, 1);
    }
}

static void put_varint(enc *e, uint64_t v) {
    unsigned char tmp[CB_VARINT_MAX];
    size_t n = 0;
    do {
        unsigned char c = v & 0x7f;
        v >>= 7;
        tmp[n++] = c | (v ? 0x80 : 0);
    } while (v);
    put(e, tmp, n);
}

static void put_str(enc *e, const char *s, size_t n) {
    put_varint(e, n);
    put(e, s, n);
}

/* Build "(argument 2, field "a.b")" from the path, push it. */
static void push_where(enc *e) {
    lua_State *L = e->L;
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    lua_pushfstring(L, "argument %d", e->arg);
    luaL_addvalue(&B);
    int infield = 0;
    for (int i = 0; i < e->depth; i++) {
        seg *s = &e->path[i];
        if (s->kind == 'f') {
            int t = lua_type(L, s->idx);
            if (!infield) luaL_addstring(&B, ", field \"");
            else luaL_addchar(&B, '.');
            infield = 1;
            if (t == LUA_TSTRING) luaL_addstring(&B, lua_tostring(L, s->idx));
            else if (t == LUA_TNUMBER) {
                lua_pushfstring(L, "[%s]", lua_tostring(L, s->idx) ? lua_tostring(L, s->idx) : "?");
                luaL_addvalue(&B);
            } else {
                lua_pushfstring(L, "[%s]", luaL_typename(L, s->idx));
                luaL_addvalue(&B);
            }
        } else {
            if (infield) luaL_addchar(&B, '"');
            infield = 0;
            lua_pushfstring(L, s->kind == 'u' ? ", upvalue \"%s\"" : ", %s", s->name);
            luaL_addvalue(&B);
        }
    }
    if (infield) luaL_addchar(&B, '"');
    luaL_pushresult(&B);
}

static int refuse(enc *e, const char *what) {
    push_where(e);
    return luaL_error(e->L, "%s: cannot send %s (%s)", e->fname, what, lua_tostring(e->L, -1));
}

/* If the value at idx was met before, write REF id and return 1; else write
 * tag and a new id and return 0. */
static int seen_before(enc *e, int idx, int tag) {
    lua_State *L = e->L;
    if (lua_isnil(L, e->seen)) { /* in its reserved slot, made on first use */
        lua_newtable(L);
        lua_replace(L, e->seen);
    }
    lua_pushvalue(L, idx);
    lua_rawget(L, e->seen);
    if (!lua_isnil(L, -1)) {
        int id = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        put_byte(e, T_REF);
        put_varint(e, (uint64_t)id);
        return 1;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    cb_pushinteger(L, e->nextid);
    lua_rawset(L, e->seen);
    put_byte(e, tag);
    put_varint(e, (uint64_t)e->nextid++);
    return 0;
}

static void encode_value(enc *e, int idx);

static void enter(enc *e, int kind, int idx, const char *name) {
    if (e->depth >= CB_MAX_DEPTH) refuse(e, "a value nested too deeply");
    e->path[e->depth].kind = kind;
    e->path[e->depth].idx = idx;
    e->path[e->depth].name = name;
    e->depth++;
    luaL_checkstack(e->L, 8, "value nested too deeply");
}

static int is_globals(lua_State *L, int idx) {
    cb_pushglobaltable(L);
    int r = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return r;
}

static void encode_table(enc *e, int idx) {
    lua_State *L = e->L;
    if (is_globals(L, idx)) {
        put_byte(e, T_GLOBALS);
        return;
    }
    int mc = cb_modindex(L, e->modindex);
    lua_pushvalue(L, idx);
    lua_rawget(L, mc);
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        put_byte(e, T_MODULE);
        put_str(e, s, n);
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    if (seen_before(e, idx, T_TABLE)) return;
    size_t narr = cb_rawlen(L, idx), nhash = 0;
    /* the array part must be a proper sequence 1..narr with no nils */
    for (size_t i = 1; i <= narr; i++) {
        lua_rawgeti(L, idx, (int)i);
        int isnil = lua_isnil(L, -1);
        lua_pop(L, 1);
        if (isnil) {
            narr = i - 1;
            break;
        }
    }
    /* every key 1..narr is present once, so the rest are the hash part */
    size_t total = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        total++;
    }
    nhash = total - narr;
    put_varint(e, narr);
    put_varint(e, nhash);
    for (size_t i = 1; i <= narr; i++) {
        lua_rawgeti(L, idx, (int)i);
        int t = lua_type(L, -1);
        if (t == LUA_TNUMBER || t == LUA_TSTRING || t == LUA_TBOOLEAN) {
            /* a scalar cannot be refused: no path needed */
            encode_value(e, lua_gettop(L));
            lua_pop(L, 1);
            continue;
        }
        cb_pushinteger(L, i);
        enter(e, 'f', lua_gettop(L), NULL);
        encode_value(e, lua_gettop(L) - 1);
        e->depth--;
        lua_pop(L, 2);
    }
    size_t nput = 0;
    if (nhash) lua_pushnil(L);
    while (nhash && lua_next(L, idx)) {
        int kidx = lua_gettop(L) - 1, ok = 0;
        lua_Integer k = cb_tointegerx(L, kidx, &ok);
        if (!(lua_type(L, kidx) == LUA_TNUMBER && ok && k >= 1 && (size_t)k <= narr)) {
            if (++nput > nhash) break;
            enter(e, 'f', kidx, NULL);
            encode_value(e, kidx);
            encode_value(e, kidx + 1);
            e->depth--;
        }
        lua_pop(L, 1);
    }
    /* a finalizer run by an allocation above could have changed the table:
     * the counts written before its items must still hold */
    if (nput != nhash || cb_rawlen(L, idx) < narr) refuse(e, "a table that changed while it was being sent");
    if (lua_getmetatable(L, idx)) {
        enter(e, 'm', 0, "metatable");
        encode_value(e, lua_gettop(L));
        e->depth--;
        lua_pop(L, 1);
    } else {
        put_byte(e, T_NIL);
    }
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
    cc_buf *b = ud;
    (void)L;
    if (cc_buf_reserve(b, b->len + n) != 0) return 1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void encode_cfunction(enc *e, int idx) {
    lua_State *L = e->L;
    for (int pass = 0; pass < 2; pass++) {
        int mc = cb_modindex(L, e->modindex);
        lua_pushvalue(L, idx);
        lua_rawget(L, mc);
        if (lua_istable(L, -1)) { /* {module, field} */
            int names = lua_gettop(L);
            size_t n;
            put_byte(e, T_CFUNC);
            lua_rawgeti(L, names, 1);
            const char *s = lua_tolstring(L, -1, &n);
            put_str(e, s, n);
            lua_rawgeti(L, names, 2);
            s = lua_tolstring(L, -1, &n);
            put_str(e, s, n);
            lua_settop(L, names - 1);
            return;
        }
        lua_pop(L, 1);
        if (pass == 0) cb_modindex_rebuild(L, mc); /* a module loaded since it was built? */
    }
    refuse(e, "a C function that is not in a loaded module");
}

static void encode_function(enc *e, int idx) {
    lua_State *L = e->L;
    if (lua_iscfunction(L, idx)) {
        encode_cfunction(e, idx);
        return;
    }
    if (seen_before(e, idx, T_FUNC)) return;
    cc_buf code = {0};
    lua_pushvalue(L, idx);
    int r = cb_dump(L, dump_writer, &code);
    lua_pop(L, 1);
    if (r != 0) {
        cc_buf_free(&code);
        refuse(e, "a function that cannot be dumped");
    }
    uint32_t len = (uint32_t)code.len;
    uint64_t sum = cb_code_checksum(code.data, code.len);
    put(e, &len, CB_FUNC_LEN_BYTES);
    put(e, &sum, CB_CHECKSUM_BYTES);
    put(e, code.data, code.len);
    cc_buf_free(&code);
    int nups = 0;
    while (lua_getupvalue(L, idx, nups + 1)) {
        lua_pop(L, 1);
        nups++;
    }
    put_varint(e, (uint64_t)nups);
    for (int i = 1; i <= nups; i++) {
        const char *name = lua_getupvalue(L, idx, i);
        if (name && strcmp(name, "_ENV") == 0) {
            /* A function's environment is the receiver's globals, always:
             * each thread and process has its own, and copying a sandbox
             * (busted's, say) would drag a whole world along. */
            put_byte(e, T_GLOBALS);
            lua_pop(L, 1);
            continue;
        }
        enter(e, 'u', 0, (name && *name) ? name : "?");
        encode_value(e, lua_gettop(L));
        e->depth--;
        lua_pop(L, 1);
    }
}

/* Is the value at idx of the userdata type registered as mt (by its very
 * metatable, not its __name, which anyone can copy)? */
static int is_type(lua_State *L, int idx, const char *mt) {
    if (!lua_getmetatable(L, idx)) return 0;
    luaL_getmetatable(L, mt);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

/* What a userdata that is not a shared object is, and why it cannot be
 * sent: concur's own handles are named with the way around. */
static const char *unsendable(lua_State *L, int idx) {
    if (lua_type(L, idx) == LUA_TLIGHTUSERDATA) return "a light userdata";
    if (is_type(L, idx, "concur.process"))
        return "a process handle (it belongs to the process that spawned it; send its pid, or "
               "results through a queue)";
    if (is_type(L, idx, "concur.thread"))
        /* "a userdata" kept: spec/thread_spec.lua pins that wording */
        return "a userdata that is a thread handle (only the state that started it can join "
               "it; send results through a queue)";
    return "a userdata that is not concur's";
}

static void encode_userdata(enc *e, int idx) {
    cc_obj *o = cb_test(e->L, idx);
    if (!o) refuse(e, unsendable(e->L, idx));
    uint32_t i;
    for (i = 0; i < e->nrefs; i++)
        if (e->refs[i] == o) break;
    if (i == e->nrefs) {
        if (e->nrefs == CB_MAX_REFS) refuse(e, "more than " CB_STR(CB_MAX_REFS) " shared objects in one value");
        if (e->nrefs == e->refcap) { /* grow into a userdata anchored in its slot */
            uint32_t cap = e->refcap * 4 < CB_MAX_REFS ? e->refcap * 4 : CB_MAX_REFS;
            cc_obj **grown = lua_newuserdata(e->L, cap * sizeof *grown);
            memcpy(grown, e->refs, e->nrefs * sizeof *grown);
            lua_replace(e->L, e->refslot);
            e->refs = grown;
            e->refcap = cap;
        }
        e->refs[e->nrefs++] = o;
    }
    put_byte(e, T_SHARED);
    put_varint(e, i);
}

static void encode_value(enc *e, int idx) {
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: put_byte(e, T_NIL); break;
    case LUA_TBOOLEAN: put_byte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER:
        if (cb_isinteger(L, idx)) {
            int64_t v = (int64_t)lua_tointeger(L, idx);
            put_byte(e, T_INT);
            put_varint(e, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
        } else {
            double d = (double)lua_tonumber(L, idx);
            put_byte(e, T_FLOAT);
            put(e, &d, CB_FLOAT_BYTES);
        }
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        put_byte(e, T_STR);
        put_str(e, s, n);
        break;
    }
    case LUA_TTABLE: encode_table(e, cb_absindex(L, idx)); break;
    case LUA_TFUNCTION: encode_function(e, cb_absindex(L, idx)); break;
    case LUA_TUSERDATA:
    case LUA_TLIGHTUSERDATA: encode_userdata(e, idx); break;
    case LUA_TTHREAD: refuse(e, "a coroutine"); break;
    default: refuse(e, lua_typename(L, lua_type(L, idx)));
    }
}

/* The encoder's state lives on the C stack (see the top of the file). */
void cb_encode(lua_State *L, int first, int n, cc_buf *out, const char *fname, int argbase) {
    first = cb_absindex(L, first);
    int top = lua_gettop(L);
    enc E, *e = &E;
    e->L = L;
    e->b = out;
    e->fname = fname;
    luaL_checkstack(L, 8, "too many values");
    lua_pushnil(L); /* reserved slots: the seen-table, the module cache, the refs */
    e->seen = lua_gettop(L);
    lua_pushnil(L);
    e->modindex = lua_gettop(L);
    lua_pushnil(L);
    e->refslot = lua_gettop(L);
    e->refs = e->refs_inline;
    e->refcap = sizeof e->refs_inline / sizeof e->refs_inline[0];
    e->nextid = 1;
    e->nrefs = 0;
    e->depth = 0;
    out->len = 0;
    if (cc_buf_reserve(out, 64) != 0) luaL_error(L, "%s: out of memory", fname);
    out->len = sizeof(cc_msghdr);
    for (int i = 0; i < n; i++) {
        e->arg = argbase + i;
        if (i == 0) put_varint(e, (uint64_t)n);
        encode_value(e, first + i);
    }
    if (n == 0) put_varint(e, 0);
    cc_msghdr h = {e->nrefs, CB_FORMAT};
    if (e->nrefs) {
        size_t extra = (size_t)e->nrefs * sizeof(cc_obj *);
        size_t plen = out->len - sizeof(cc_msghdr);
        if (cc_buf_reserve(out, out->len + extra) != 0) luaL_error(L, "%s: out of memory", fname);
        memmove(out->data + sizeof(cc_msghdr) + extra, out->data + sizeof(cc_msghdr), plen);
        memcpy(out->data + sizeof(cc_msghdr), e->refs, extra);
        out->len += extra;
        for (uint32_t i = 0; i < e->nrefs; i++) cc_retain(e->refs[i]);
    }
    memcpy(out->data, &h, sizeof h);
    lua_settop(L, top);
}
