/*
 * shared.c -- shared.list([tbl]) and shared.dict([tbl]): containers in shared
 * memory, the same object in every thread and forked process.
 *
 * list: l:append(v), l:extend(tbl) (one lock for the batch), l[i], l[i] = v
 *   (i in 1..#l+1), #l, l:len(), l:pop(), l:insert([i,] v), l:remove(i),
 *   l:totable(), l:clear(), for i, v in l:ipairs() (also pairs(l) on 5.4),
 *   tostring(l). Out-of-range reads give nil; nil cannot be stored (a list
 *   has no holes, as in Python).
 * dict: d[k], d[k] = v (nil deletes), d:get(k, [default]), d:set(k, v),
 *   d:delete(k) -> old value, d:keys(), d:values(), d:items(), d:totable(),
 *   d:clear(), #d, d:len(), for k, v in d:pairs() (also pairs(d) on 5.4).
 *   Keys are strings, numbers or booleans (1.0 and 1 are one key). A string
 *   key that names a method ("get", "keys", ...) reads the method through
 *   d.k; use d:get("keys") for such keys.
 *
 * Items are codec values: tables are deep-copied in and out, shared objects
 * are stored by reference (lists of queues, nested shared lists). Every
 * operation is one lock, atomic with respect to all others. Iteration works
 * on a snapshot taken under one lock.
 */
#include "cb.h"
#include "../runtime/list.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static int nomem_or(lua_State *L, int r, const char *fname) {
    if (r == -ENOMEM) return cb_nomem(L, fname);
    return cb_fail(L, r, fname);
}

static void encode_item(lua_State *L, int idx, cc_buf *b, const char *fname, int arg) {
    if (lua_isnoneornil(L, idx))
        luaL_error(L, "%s: bad argument #%d (cannot store nil in a shared list)", fname, arg);
    cb_encode(L, idx, 1, b, fname, arg);
}

/* ---------------------------------------------------------------- list */

static cc_list *list_check(lua_State *L, const char *fname) {
    return (cc_list *)cb_self(L, CC_T_LIST, fname);
}
static cc_list *list_arg(lua_State *L, const char *fname) {
    return (cc_list *)cb_check(L, 1, CC_T_LIST, fname);
}

/* 1-based Lua index at idx -> 0-based, or -1 when not an integer */
static int64_t index_of(lua_State *L, int idx) {
    int ok = 0;
    lua_Integer i = cb_tointegerx(L, idx, &ok);
    return ok ? (int64_t)i - 1 : -2;
}

static int list_extend_from(lua_State *L, cc_list *l, int t, const char *fname) {
    size_t n = (size_t)cb_rawlen(L, t);
    if (n == 0) return 0;
    int top = lua_gettop(L);
    /* encode every item first: a refusal raises, and the batch's __gc gives
     * back what the items before it had counted; the list is untouched */
    cb_batch *all = cb_batch_new(L);
    cc_buf *one = cb_buf_take(L, 0);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, t, (int)i + 1);
        if (lua_isnil(L, -1)) return luaL_error(L, "%s: the table has a hole at [%d]", fname, (int)i + 1);
        cb_encode(L, -1, 1, one, fname, (int)i + 1);
        lua_pop(L, 1);
        cb_batch_add(L, all, one->data, one->len, fname);
    }
    cb_buf_give(L, one);
    int r;
    CB_RETRY(L, r, cc_list_extend(l, all->all.data, all->lens, n));
    if (!r) cb_batch_keep(all, n); /* the list owns them now */
    cb_batch_free(L, all);
    lua_settop(L, top);
    if (r) return nomem_or(L, r, fname);
    return 0;
}

static int l_new(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) cb_checktable(L, 1, 1, "shared.list");
    cc_list *l;
    int r;
    CB_RETRY(L, r, cc_list_new(&l));
    if (r) return nomem_or(L, r, "shared.list");
    cb_push(L, (cc_obj *)l);
    if (lua_istable(L, 1)) list_extend_from(L, l, 1, "shared.list");
    return 1;
}

static int l_append(lua_State *L) {
    cc_list *l = list_check(L, "list:append");
    cc_buf *b = cb_buf_take(L, 0);
    encode_item(L, 2, b, "list:append", 1);
    int r;
    CB_RETRY(L, r, cc_list_append(l, b->data, b->len));
    if (r) cc_msg_release(b->data, b->len);
    cb_buf_give(L, b);
    if (r) return nomem_or(L, r, "list:append");
    return 0;
}

static int l_extend(lua_State *L) {
    cc_list *l = list_check(L, "list:extend");
    cb_checktable(L, 2, 1, "list:extend");
    list_extend_from(L, l, 2, "list:extend");
    return 0;
}

static int l_get(lua_State *L, cc_list *l, int64_t i, const char *fname) {
    cc_buf *b = cb_buf_take(L, 1);
    int r = cc_list_get(l, i, b);
    if (r) cb_buf_give(L, b);
    if (r == -ERANGE) return 0;
    if (r) return nomem_or(L, r, fname);
    int n = cb_decode(L, b->data, b->len, fname);
    cb_buf_give(L, b);
    return n;
}

static int l_index(lua_State *L) {
    if (lua_type(L, 2) == LUA_TNUMBER) {
        cc_list *l = list_arg(L, "list:__index");
        int64_t i = index_of(L, 2);
        if (i < 0) return 0;
        lua_settop(L, 0);
        return l_get(L, l, i, "list:__index") ? 1 : (lua_pushnil(L), 1);
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1)); /* the methods */
    return 1;
}

static int l_newindex(lua_State *L) {
    cc_list *l = list_arg(L, "list:__newindex");
    int64_t i = index_of(L, 2);
    if (i < 0 || lua_type(L, 2) != LUA_TNUMBER)
        return luaL_error(L, "list:__newindex: bad index (an integer 1..#list+1 expected)");
    if (lua_isnil(L, 3)) return luaL_error(L, "list:__newindex: cannot store nil (use remove)");
    cc_buf *b = cb_buf_take(L, 0);
    cb_encode(L, 3, 1, b, "list:__newindex", 2);
    int r;
    CB_RETRY(L, r, cc_list_set(l, i, b->data, b->len));
    if (r) cc_msg_release(b->data, b->len);
    cb_buf_give(L, b);
    if (r) {
        if (r == -ERANGE) return luaL_error(L, "list:__newindex: index %d out of range (list has %d items)",
                                            (int)i + 1, (int)cc_list_len(l));
        return nomem_or(L, r, "list:__newindex");
    }
    return 0;
}

static int l_len(lua_State *L) {
    cb_pushinteger(L, cc_list_len(list_arg(L, "list:len")));
    return 1;
}

static int l_pop(lua_State *L) {
    cc_list *l = list_check(L, "list:pop");
    cc_buf *b = cb_buf_take(L, 1);
    int r = cc_list_pop(l, b);
    if (r) cb_buf_give(L, b);
    if (r == -ERANGE) return 0;
    if (r) return nomem_or(L, r, "list:pop");
    lua_settop(L, 0);
    int n = cb_decode(L, b->data, b->len, "list:pop");
    cb_buf_give(L, b);
    return n;
}

static int l_insert(lua_State *L) {
    cc_list *l = list_check(L, "list:insert");
    int64_t i;
    int vidx = 3;
    if (lua_gettop(L) == 2) {
        i = cc_list_len(l);
        vidx = 2;
    } else {
        i = index_of(L, 2);
        if (i < 0) return cb_argerror(L, 1, "list:insert", "position must be an integer >= 1");
    }
    cc_buf *b = cb_buf_take(L, 0);
    encode_item(L, vidx, b, "list:insert", vidx - 1);
    int r;
    CB_RETRY(L, r, cc_list_insert(l, i, b->data, b->len));
    if (r) cc_msg_release(b->data, b->len);
    cb_buf_give(L, b);
    if (r) {
        if (r == -ERANGE) return luaL_error(L, "list:insert: position %d out of range", (int)i + 1);
        return nomem_or(L, r, "list:insert");
    }
    return 0;
}

static int l_remove(lua_State *L) {
    cc_list *l = list_check(L, "list:remove");
    int64_t i;
    if (lua_isnoneornil(L, 2)) i = cc_list_len(l) - 1;
    else if (lua_type(L, 2) != LUA_TNUMBER || (i = index_of(L, 2)) == -2)
        return luaL_error(L, "list:remove: bad argument #1 (integer expected, got %s)",
                          lua_type(L, 2) == LUA_TNUMBER ? "a fraction" : luaL_typename(L, 2));
    cc_buf *b = cb_buf_take(L, 1);
    int r = i < 0 ? -ERANGE : cc_list_remove(l, i, b);
    if (r) cb_buf_give(L, b);
    if (r == -ERANGE) {
        char msg[96];
        snprintf(msg, sizeof msg, "index %lld out of range (list has %lld items)", (long long)i + 1,
                 (long long)cc_list_len(l));
        return luaL_error(L, "list:remove: %s", msg);
    }
    if (r) return nomem_or(L, r, "list:remove");
    lua_settop(L, 0);
    int n = cb_decode(L, b->data, b->len, "list:remove");
    cb_buf_give(L, b);
    return n;
}

static int l_totable(lua_State *L) {
    cc_list *l = list_check(L, "list:totable");
    lua_settop(L, 0);
    cb_batch *all = cb_batch_new(L);
    size_t n;
    int r = cc_list_snapshot(l, &all->all, &all->lens, &n);
    if (r) return nomem_or(L, r, "list:totable");
    all->n = all->cap = n;
    lua_createtable(L, (int)n, 0);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        cb_batch_decode(L, all, i, off, "list:totable");
        lua_rawseti(L, 2, (int)i + 1);
        off += all->lens[i];
    }
    cb_batch_free(L, all);
    lua_remove(L, 1);
    return 1;
}

static int l_clear(lua_State *L) {
    cc_list_clear(list_check(L, "list:clear"));
    return 0;
}

static int ipairs_next(lua_State *L) {
    /* iterate over the snapshot table in upvalue 1 */
    int ok = 0;
    lua_Integer i = cb_tointegerx(L, 2, &ok);
    if (!ok || i < 0 || i >= INT32_MAX) return 0;
    i++;
    lua_rawgeti(L, lua_upvalueindex(1), (int)i);
    if (lua_isnil(L, -1)) return 0;
    cb_pushinteger(L, i);
    lua_insert(L, -2);
    return 2;
}

static int l_ipairs(lua_State *L) {
    lua_settop(L, 1);
    l_totable(L); /* a snapshot under one lock */
    lua_pushcclosure(L, ipairs_next, 1);
    lua_pushvalue(L, 1);
    cb_pushinteger(L, 0);
    return 3;
}

/* ---- tostring: a readable, bounded rendering ----
 *
 * Nested tables print as constructors ({1, 2, x = {y = "z"}}), shared lists
 * and dicts inside as shared.list{...}. The text is bounded: 20 items per
 * table, 4 levels, 200 values and 60 bytes of each string in all, and a
 * table or shared object already being printed shows as {...}. The pieces
 * go into a Lua table first and into a luaL_Buffer only at the end, so
 * nothing is pushed between the buffer and the value it takes (luaL_Buffer
 * needs that; long output used to overrun it). */
enum { REPR_ITEMS = 20, REPR_DEPTH = 4, REPR_VALUES = 200, REPR_STRING = 60 };

typedef struct {
    lua_State *L;
    int parts, seen; /* stack indices: the pieces, the tables on the path */
    int n;           /* pieces so far */
    int budget;      /* values left */
} repr;

static int l_totable(lua_State *L);
static int d_totable(lua_State *L);

static void put(repr *r, const char *s, size_t len) {
    lua_pushlstring(r->L, s, len);
    lua_rawseti(r->L, r->parts, ++r->n);
}

static void puts_(repr *r, const char *s) { put(r, s, strlen(s)); }

static void put_string(repr *r, int idx) {
    size_t len;
    const char *s = lua_tolstring(r->L, idx, &len);
    char out[4 * REPR_STRING + 48];
    size_t o = 0, shown = len < REPR_STRING ? len : REPR_STRING;
    out[o++] = '"';
    for (size_t i = 0; i < shown; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') out[o++] = '\\', out[o++] = (char)ch;
        else if (ch == '\n') out[o++] = '\\', out[o++] = 'n';
        else if (ch == '\t') out[o++] = '\\', out[o++] = 't';
        else if (ch < 32 || ch == 127) /* three digits when a digit follows, as %q */
            o += (size_t)snprintf(out + o, 6, i + 1 < len && s[i + 1] >= '0' && s[i + 1] <= '9'
                                                  ? "\\%03u" : "\\%u", ch);
        else out[o++] = (char)ch;
    }
    out[o++] = '"';
    if (shown < len) o += (size_t)snprintf(out + o, sizeof out - o, "...(%zu bytes)", len);
    put(r, out, o);
}

static int is_name(lua_State *L, int idx) {
    if (lua_type(L, idx) != LUA_TSTRING) return 0;
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (len == 0 || len > 64 || (s[0] >= '0' && s[0] <= '9')) return 0;
    for (size_t i = 0; i < len; i++)
        if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    static const char *const reserved[] = {"and", "break", "do", "else", "elseif", "end",
        "false", "for", "function", "goto", "if", "in", "local", "nil", "not", "or", "repeat",
        "return", "then", "true", "until", "while"};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcmp(s, reserved[i]) == 0) return 0;
    return 1;
}

static void put_value(repr *r, int idx, int depth);

/* The entries of the table at t: 1..#t, then the other keys; a dict's
 * (keyed) all as [k] = v. */
static void put_entries(repr *r, int t, int depth, int keyed) {
    lua_State *L = r->L;
    int n = keyed ? 0 : (int)cb_rawlen(L, t), shown = 0, total = 0;
    puts_(r, "{");
    for (int i = 1; i <= n; i++, total++) {
        if (shown == REPR_ITEMS || r->budget <= 0) continue;
        if (shown++) puts_(r, ", ");
        lua_rawgeti(L, t, i);
        put_value(r, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int k = lua_gettop(L) - 1;
        if (lua_type(L, k) == LUA_TNUMBER) { /* 1..n were printed above */
            lua_Number i = lua_tonumber(L, k);
            if (i >= 1 && i <= n && i == (lua_Number)(int)i) {
                lua_pop(L, 1);
                continue;
            }
        }
        total++;
        if (shown == REPR_ITEMS || r->budget <= 0) {
            lua_pop(L, 1);
            continue;
        }
        if (shown++) puts_(r, ", ");
        if (is_name(L, k)) {
            lua_pushvalue(L, k);
            lua_rawseti(L, r->parts, ++r->n);
            puts_(r, " = ");
        } else {
            puts_(r, "[");
            put_value(r, k, depth + 1);
            puts_(r, "] = ");
        }
        put_value(r, k + 1, depth + 1);
        lua_pop(L, 1);
    }
    if (shown < total) {
        char more[48];
        snprintf(more, sizeof more, "%s... (%d items)", shown ? ", " : "", total);
        puts_(r, more);
    }
    puts_(r, "}");
}

/* A table, or a shared list or dict (its snapshot): braces around its
 * entries, or {...} past the depth limit or on a cycle. */
static void put_container(repr *r, int idx, const char *label, lua_CFunction snapshot, int depth) {
    lua_State *L = r->L;
    if (label) puts_(r, label);
    lua_pushvalue(L, idx);
    lua_rawget(L, r->seen);
    int on_path = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (on_path || depth > REPR_DEPTH) {
        puts_(r, "{...}");
        return;
    }
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, r->seen);
    if (snapshot) {
        lua_pushcfunction(L, snapshot);
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
    } else {
        lua_pushvalue(L, idx);
    }
    put_entries(r, lua_gettop(L), depth, snapshot == d_totable);
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, r->seen);
}

static void put_value(repr *r, int idx, int depth) {
    lua_State *L = r->L;
    luaL_checkstack(L, 8, "shared tostring");
    r->budget--;
    cc_obj *o;
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: put_string(r, idx); return;
    case LUA_TTABLE: put_container(r, idx, NULL, NULL, depth); return;
    case LUA_TUSERDATA:
        o = cb_test(L, idx);
        if (o && o->type == CC_T_LIST) {
            put_container(r, idx, "shared.list", l_totable, depth);
            return;
        }
        if (o && o->type == CC_T_DICT) {
            put_container(r, idx, "shared.dict", d_totable, depth);
            return;
        }
        break;
    default: break;
    }
    cb_tolstring(L, idx);
    lua_rawseti(L, r->parts, ++r->n);
}

/* tostring(l) / tostring(d): label, then the object's entries. */
static int tostring_shared(lua_State *L, const char *label, lua_CFunction snapshot) {
    lua_settop(L, 1);
    lua_pushcfunction(L, snapshot); /* checks the argument before anything else */
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    lua_pop(L, 1);
    repr r = {L, 0, 0, 0, REPR_VALUES};
    lua_newtable(L);
    r.parts = lua_gettop(L);
    lua_newtable(L);
    r.seen = lua_gettop(L);
    puts_(&r, label);
    put_container(&r, 1, NULL, snapshot, 0);
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    for (int i = 1; i <= r.n; i++) {
        lua_rawgeti(L, r.parts, i);
        luaL_addvalue(&B);
    }
    luaL_pushresult(&B);
    return 1;
}

static int l_tostring(lua_State *L) { return tostring_shared(L, "shared.list: ", l_totable); }

/* ---------------------------------------------------------------- dict */

static cc_dict *dict_arg(lua_State *L, const char *fname) {
    return (cc_dict *)cb_check(L, 1, CC_T_DICT, fname);
}

/* Encode the key at idx canonically into b: 1.0 and 1 are one key. */
static void encode_key(lua_State *L, int idx, cc_buf *b, const char *fname) {
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TBOOLEAN)
        luaL_error(L, "%s: bad key (string, number or boolean expected, got %s)", fname,
                   luaL_typename(L, idx));
    if (t == LUA_TNUMBER && !cb_isinteger(L, idx)) {
        int ok = 0;
        lua_Integer i = cb_tointegerx(L, idx, &ok);
        if (ok) {
            cb_pushinteger(L, i);
            cb_encode(L, -1, 1, b, fname, 1);
            lua_pop(L, 1);
            return;
        }
        lua_Number n = lua_tonumber(L, idx);
        if (n != n) luaL_error(L, "%s: bad key (NaN)", fname);
    }
    cb_encode(L, idx, 1, b, fname, 1);
}

static int d_new(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) cb_checktable(L, 1, 1, "shared.dict");
    cc_dict *d;
    int r;
    CB_RETRY(L, r, cc_dict_new(&d));
    if (r) return nomem_or(L, r, "shared.dict");
    cb_push(L, (cc_obj *)d);
    if (lua_istable(L, 1)) {
        int h = lua_gettop(L);
        lua_getfield(L, h, "set");
        int set = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            lua_pushvalue(L, set);
            lua_pushvalue(L, h);
            lua_pushvalue(L, -4);
            lua_pushvalue(L, -4);
            lua_call(L, 3, 0);
            lua_pop(L, 1);
        }
        lua_settop(L, h);
    }
    return 1;
}

static int d_get_at(lua_State *L, cc_dict *d, int kidx, const char *fname) {
    cc_buf *key = cb_buf_take(L, 0), *val = cb_buf_take(L, 1);
    encode_key(L, kidx, key, fname);
    int r = cc_dict_get(d, key->data, key->len, val);
    cb_buf_give(L, key);
    if (r) cb_buf_give(L, val);
    if (r == -ENOENT) return 0;
    if (r) return nomem_or(L, r, fname);
    int n = cb_decode(L, val->data, val->len, fname);
    cb_buf_give(L, val);
    return n;
}

static int d_set_at(lua_State *L, cc_dict *d, int kidx, int vidx, const char *fname) {
    cc_buf *key = cb_buf_take(L, 0), *val = cb_buf_take(L, 1);
    encode_key(L, kidx, key, fname);
    int r;
    if (lua_isnil(L, vidx)) {
        r = cc_dict_delete(d, key->data, key->len, val);
        if (r == 0) cc_msg_release(val->data, val->len);
        if (r == -ENOENT) r = 0;
    } else {
        cb_encode(L, vidx, 1, val, fname, 2);
        CB_RETRY(L, r, cc_dict_set(d, key->data, key->len, val->data, val->len));
        if (r) cc_msg_release(val->data, val->len);
    }
    cb_buf_give(L, key);
    cb_buf_give(L, val);
    if (r) return nomem_or(L, r, fname);
    return 0;
}

static int d_index(lua_State *L) {
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_pushvalue(L, 2);
        lua_rawget(L, lua_upvalueindex(1));
        if (!lua_isnil(L, -1)) return 1; /* a method */
        lua_pop(L, 1);
    }
    cc_dict *d = dict_arg(L, "dict:__index");
    int n = d_get_at(L, d, 2, "dict:__index");
    if (!n) lua_pushnil(L);
    return 1;
}

static int d_newindex(lua_State *L) {
    return d_set_at(L, dict_arg(L, "dict:__newindex"), 2, 3, "dict:__newindex");
}

static int d_get(lua_State *L) {
    cc_dict *d = dict_arg(L, "dict:get");
    lua_settop(L, 3);
    if (d_get_at(L, d, 2, "dict:get")) return 1;
    lua_pushvalue(L, 3);
    return 1;
}

static int d_set(lua_State *L) {
    lua_settop(L, 3);
    return d_set_at(L, dict_arg(L, "dict:set"), 2, 3, "dict:set");
}

static int d_delete(lua_State *L) {
    cc_dict *d = dict_arg(L, "dict:delete");
    cc_buf *key = cb_buf_take(L, 0), *val = cb_buf_take(L, 1);
    encode_key(L, 2, key, "dict:delete");
    int r = cc_dict_delete(d, key->data, key->len, val);
    cb_buf_give(L, key);
    if (r) cb_buf_give(L, val);
    if (r == -ENOENT) return 0;
    if (r) return nomem_or(L, r, "dict:delete");
    int n = cb_decode(L, val->data, val->len, "dict:delete");
    cb_buf_give(L, val);
    return n;
}

static int d_len(lua_State *L) {
    cb_pushinteger(L, cc_dict_len(dict_arg(L, "dict:len")));
    return 1;
}

static int d_clear(lua_State *L) {
    cc_dict_clear(dict_arg(L, "dict:clear"));
    return 0;
}

/* Snapshot into a fresh table: mode 0 totable, 1 keys, 2 values, 3 items */
static int d_collect(lua_State *L, int mode, const char *fname) {
    cc_dict *d = dict_arg(L, fname);
    lua_settop(L, 0);
    cb_batch *all = cb_batch_new(L);
    size_t n;
    int r = cc_dict_snapshot(d, &all->all, &all->lens, &n);
    if (r) return nomem_or(L, r, fname);
    all->n = all->cap = 2 * n;
    lua_createtable(L, mode ? (int)n : 0, mode ? 0 : (int)n);
    int t = 2;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        cb_batch_decode(L, all, 2 * i, off, fname);
        off += all->lens[2 * i];
        cb_batch_decode(L, all, 2 * i + 1, off, fname);
        off += all->lens[2 * i + 1];
        switch (mode) {
        case 0: lua_rawset(L, t); break;
        case 1: lua_pop(L, 1); lua_rawseti(L, t, (int)i + 1); break;
        case 2: lua_remove(L, -2); lua_rawseti(L, t, (int)i + 1); break;
        default:
            lua_createtable(L, 2, 0);
            lua_insert(L, -3);
            lua_rawseti(L, -3, 2);
            lua_rawseti(L, -2, 1);
            lua_rawseti(L, t, (int)i + 1);
        }
    }
    cb_batch_free(L, all);
    lua_remove(L, 1);
    return 1;
}

static int d_totable(lua_State *L) { return d_collect(L, 0, "dict:totable"); }
static int d_keys(lua_State *L) { return d_collect(L, 1, "dict:keys"); }
static int d_values(lua_State *L) { return d_collect(L, 2, "dict:values"); }
static int d_items(lua_State *L) { return d_collect(L, 3, "dict:items"); }

static int d_pairs(lua_State *L) {
    lua_settop(L, 1);
    d_totable(L); /* a snapshot under one lock */
    lua_getglobal(L, "next");
    lua_insert(L, -2);
    lua_pushnil(L);
    return 3;
}

static int d_tostring(lua_State *L) { return tostring_shared(L, "shared.dict: ", d_totable); }

/* ---------------------------------------------------------------- open */

static const luaL_Reg list_methods[] = {
    {"append", l_append}, {"extend", l_extend},   {"pop", l_pop},       {"insert", l_insert},
    {"remove", l_remove}, {"totable", l_totable}, {"clear", l_clear},   {"ipairs", l_ipairs},
    {"len", l_len},       {NULL, NULL},
};

static const luaL_Reg dict_methods[] = {
    {"get", d_get},         {"set", d_set},   {"delete", d_delete}, {"keys", d_keys},
    {"values", d_values},   {"items", d_items}, {"totable", d_totable}, {"clear", d_clear},
    {"len", d_len},         {"pairs", d_pairs}, {NULL, NULL},
};

/* __index is a function (numbers read items; other keys find methods in
 * the metatable's method table, given as its upvalue). */
static void set_index(lua_State *L, const char *tname, lua_CFunction index) {
    luaL_getmetatable(L, tname);
    lua_getfield(L, -1, "__index"); /* the methods table cb_newtype made */
    lua_pushcclosure(L, index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

int cb_open_shared(lua_State *L) {
    const luaL_Reg list_meta[] = {
        {"__newindex", l_newindex}, {"__len", l_len}, {"__tostring", l_tostring},
        {"__pairs", l_ipairs},      {NULL, NULL},
    };
    const luaL_Reg dict_meta[] = {
        {"__newindex", d_newindex}, {"__len", d_len}, {"__tostring", d_tostring},
        {"__pairs", d_pairs},       {NULL, NULL},
    };
    cb_newtype(L, CC_T_LIST, "list", list_methods, list_meta);
    cb_newtype(L, CC_T_DICT, "dict", dict_methods, dict_meta);
    set_index(L, "concur.list", l_index);
    set_index(L, "concur.dict", d_index);

    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "list");
    lua_pushcfunction(L, d_new);
    lua_setfield(L, -2, "dict");
    cb_open_array(L);
    return 1;
}
