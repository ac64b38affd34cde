/*
 * dict.c -- shared.dict([tbl]): a hash table in shared memory, the same
 * object in every thread and forked process (runtime/dict.c holds it).
 *
 * d[k], d[k] = v (nil deletes), d:get(k, [default]), d:set(k, v),
 * d:delete(k) -> old value, d:keys(), d:values(), d:items(), d:totable(),
 * d:clear(), #d, d:len(), for k, v in d:pairs() (also pairs(d) on 5.4),
 * tostring(d). Keys are strings, numbers or booleans (1.0 and 1 are one
 * key). A string key that names a method ("get", "keys", ...) reads the
 * method through d.k; use d:get("keys") for such keys.
 *
 * Values are codec values, as a list's items (list.c). Every operation is
 * one lock; keys(), values(), items(), pairs() and totable() work on a
 * snapshot taken under one lock.
 */
#include "shared.h"

#include <errno.h>
#include <string.h>

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
    if (r) return cb_fail(L, r, "shared.dict");
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
    cc_buf *key = cb_buf_take(L, BUF_KEY), *val = cb_buf_take(L, BUF_VALUE);
    encode_key(L, kidx, key, fname);
    int r = cc_dict_get(d, key->data, key->len, val);
    cb_buf_give(L, key);
    if (r) cb_buf_give(L, val);
    if (r == -ENOENT) return 0;
    if (r) return cb_read_failed(L, r, fname);
    int n = cb_decode(L, val->data, val->len, fname);
    cb_buf_give(L, val);
    return n;
}

static int d_set_at(lua_State *L, cc_dict *d, int kidx, int vidx, const char *fname) {
    cc_buf *key = cb_buf_take(L, BUF_KEY), *val = cb_buf_take(L, BUF_VALUE);
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
    if (r) return cb_fail(L, r, fname);
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
    cc_buf *key = cb_buf_take(L, BUF_KEY), *val = cb_buf_take(L, BUF_VALUE);
    encode_key(L, 2, key, "dict:delete");
    int r = cc_dict_delete(d, key->data, key->len, val);
    cb_buf_give(L, key);
    if (r) cb_buf_give(L, val);
    if (r == -ENOENT) return 0;
    if (r) return cb_read_failed(L, r, "dict:delete");
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

/* What a snapshot becomes: {k = v}, {k...}, {v...} or {{k, v}...}. */
enum collect { AS_TABLE, KEYS, VALUES, ITEMS };

/* Snapshot into a fresh table, shaped by mode. */
static int d_collect(lua_State *L, enum collect mode, const char *fname) {
    cc_dict *d = dict_arg(L, fname);
    lua_settop(L, 0);
    cb_batch *all = cb_batch_new(L);
    size_t n;
    int r = cc_dict_snapshot(d, &all->all, &all->lens, &n);
    if (r) return cb_read_failed(L, r, fname);
    all->n = all->cap = 2 * n;
    lua_createtable(L, mode != AS_TABLE ? (int)n : 0, mode == AS_TABLE ? (int)n : 0);
    int t = 2;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        cb_batch_decode(L, all, 2 * i, off, fname);
        off += all->lens[2 * i];
        cb_batch_decode(L, all, 2 * i + 1, off, fname);
        off += all->lens[2 * i + 1];
        switch (mode) {
        case AS_TABLE: lua_rawset(L, t); break;
        case KEYS: lua_pop(L, 1); lua_rawseti(L, t, (int)i + 1); break;
        case VALUES: lua_remove(L, -2); lua_rawseti(L, t, (int)i + 1); break;
        case ITEMS:
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

int cb_dict_totable(lua_State *L) { return d_collect(L, AS_TABLE, "dict:totable"); }
static int d_keys(lua_State *L) { return d_collect(L, KEYS, "dict:keys"); }
static int d_values(lua_State *L) { return d_collect(L, VALUES, "dict:values"); }
static int d_items(lua_State *L) { return d_collect(L, ITEMS, "dict:items"); }

static int d_pairs(lua_State *L) {
    lua_settop(L, 1);
    cb_dict_totable(L); /* a snapshot under one lock */
    lua_getglobal(L, "next");
    lua_insert(L, -2);
    lua_pushnil(L);
    return 3;
}

static int d_tostring(lua_State *L) { return cb_shared_tostring(L, "shared.dict: ", cb_dict_totable); }

static const luaL_Reg methods[] = {
    {"get", d_get},         {"set", d_set},   {"delete", d_delete}, {"keys", d_keys},
    {"values", d_values},   {"items", d_items}, {"totable", cb_dict_totable}, {"clear", d_clear},
    {"len", d_len},         {"pairs", d_pairs}, {NULL, NULL},
};

void cb_open_dict(lua_State *L) {
    static const luaL_Reg meta[] = {
        {"__newindex", d_newindex}, {"__len", d_len}, {"__tostring", d_tostring},
        {"__pairs", d_pairs},       {NULL, NULL},
    };
    cb_lazytype(CC_T_DICT, "dict", methods, meta, d_index);
    lua_pushcfunction(L, d_new);
    lua_setfield(L, -2, "dict");
}
