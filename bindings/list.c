/*
 * list.c -- shared.list([tbl]): a list in shared memory, the same object in
 * every thread and forked process (runtime/list.c holds it).
 *
 * l:append(v), l:extend(tbl) (one lock for the batch), l[i], l[i] = v
 * (i in 1..#l+1), #l, l:len(), l:pop(), l:insert([i,] v), l:remove(i),
 * l:totable(), l:clear(), for i, v in l:ipairs() (also pairs(l) on 5.4),
 * tostring(l). Out-of-range reads give nil; nil cannot be stored (a list
 * has no holes, as in Python).
 *
 * Items are codec values: tables are deep-copied in and out, shared objects
 * are stored by reference (lists of queues, nested shared lists). Every
 * operation is one lock, atomic with respect to all others. Iteration works
 * on a snapshot taken under one lock.
 */
#include "shared.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void encode_item(lua_State *L, int idx, cc_buf *b, const char *fname, int arg) {
    if (lua_isnoneornil(L, idx)) cb_argerror(L, arg, fname, "cannot store nil in a shared list");
    cb_encode(L, idx, 1, b, fname, arg);
}

static cc_list *list_check(lua_State *L, const char *fname) {
    return (cc_list *)cb_self(L, CC_T_LIST, fname);
}
static cc_list *list_arg(lua_State *L, const char *fname) {
    return (cc_list *)cb_check(L, 1, CC_T_LIST, fname);
}

/* 1-based Lua index at idx -> 0-based (negative for 0 and below), or -2
 * when not an integer */
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
    cc_buf *one = cb_buf_take(L, BUF_PUT);
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
    if (r) return cb_fail(L, r, fname);
    return 0;
}

static int l_new(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) cb_checktable(L, 1, 1, "shared.list");
    cc_list *l;
    int r;
    CB_RETRY(L, r, cc_list_new(&l));
    if (r) return cb_fail(L, r, "shared.list");
    cb_push(L, (cc_obj *)l);
    if (lua_istable(L, 1)) list_extend_from(L, l, 1, "shared.list");
    return 1;
}

static int l_append(lua_State *L) {
    cc_list *l = list_check(L, "list:append");
    cc_buf *b = cb_buf_take(L, BUF_PUT);
    encode_item(L, 2, b, "list:append", 1);
    int r;
    CB_RETRY(L, r, cc_list_append(l, b->data, b->len));
    if (r) cc_msg_release(b->data, b->len);
    cb_buf_give(L, b);
    if (r) return cb_fail(L, r, "list:append");
    return 0;
}

static int l_extend(lua_State *L) {
    cc_list *l = list_check(L, "list:extend");
    cb_checktable(L, 2, 1, "list:extend");
    list_extend_from(L, l, 2, "list:extend");
    return 0;
}

static int l_get(lua_State *L, cc_list *l, int64_t i, const char *fname) {
    cc_buf *b = cb_buf_take(L, BUF_GET);
    int r = cc_list_get(l, i, b);
    if (r) cb_buf_give(L, b);
    if (r == -ERANGE) return 0;
    if (r) return cb_read_failed(L, r, fname);
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
    cc_buf *b = cb_buf_take(L, BUF_PUT);
    cb_encode(L, 3, 1, b, "list:__newindex", 2);
    int r;
    CB_RETRY(L, r, cc_list_set(l, i, b->data, b->len));
    if (r) cc_msg_release(b->data, b->len);
    cb_buf_give(L, b);
    if (r) {
        if (r == -ERANGE) return luaL_error(L, "list:__newindex: index %d out of range (list has %d items)",
                                            (int)i + 1, (int)cc_list_len(l));
        return cb_fail(L, r, "list:__newindex");
    }
    return 0;
}

static int l_len(lua_State *L) {
    cb_pushinteger(L, cc_list_len(list_arg(L, "list:len")));
    return 1;
}

static int l_pop(lua_State *L) {
    cc_list *l = list_check(L, "list:pop");
    cc_buf *b = cb_buf_take(L, BUF_GET);
    int r = cc_list_pop(l, b);
    if (r) cb_buf_give(L, b);
    if (r == -ERANGE) return 0;
    if (r) return cb_read_failed(L, r, "list:pop");
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
    cc_buf *b = cb_buf_take(L, BUF_PUT);
    encode_item(L, vidx, b, "list:insert", vidx - 1);
    int r;
    CB_RETRY(L, r, cc_list_insert(l, i, b->data, b->len));
    if (r) cc_msg_release(b->data, b->len);
    cb_buf_give(L, b);
    if (r) {
        if (r == -ERANGE) return luaL_error(L, "list:insert: position %d out of range", (int)i + 1);
        return cb_fail(L, r, "list:insert");
    }
    return 0;
}

static int l_remove(lua_State *L) {
    cc_list *l = list_check(L, "list:remove");
    int64_t i;
    if (lua_isnoneornil(L, 2)) i = cc_list_len(l) - 1;
    else if (lua_type(L, 2) != LUA_TNUMBER || (i = index_of(L, 2)) == -2)
        return cb_argerror(L, 1, "list:remove",
                           lua_pushfstring(L, "integer expected, got %s",
                                           lua_type(L, 2) == LUA_TNUMBER ? "a fraction" : luaL_typename(L, 2)));
    cc_buf *b = cb_buf_take(L, BUF_GET);
    int r = i < 0 ? -ERANGE : cc_list_remove(l, i, b);
    if (r) cb_buf_give(L, b);
    if (r == -ERANGE) {
        char msg[96];
        snprintf(msg, sizeof msg, "index %lld out of range (list has %lld items)", (long long)i + 1,
                 (long long)cc_list_len(l));
        return luaL_error(L, "list:remove: %s", msg);
    }
    if (r) return cb_read_failed(L, r, "list:remove");
    lua_settop(L, 0);
    int n = cb_decode(L, b->data, b->len, "list:remove");
    cb_buf_give(L, b);
    return n;
}

int cb_list_totable(lua_State *L) {
    cc_list *l = list_check(L, "list:totable");
    lua_settop(L, 0);
    cb_batch *all = cb_batch_new(L);
    size_t n;
    int r = cc_list_snapshot(l, &all->all, &all->lens, &n);
    if (r) return cb_read_failed(L, r, "list:totable");
    all->n = all->cap = n;
    cb_batch_totable(L, all, "list:totable");
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
    cb_list_totable(L); /* a snapshot under one lock */
    lua_pushcclosure(L, ipairs_next, 1);
    lua_pushvalue(L, 1);
    cb_pushinteger(L, 0);
    return 3;
}

static int l_tostring(lua_State *L) { return cb_shared_tostring(L, "shared.list: ", cb_list_totable); }

static const luaL_Reg methods[] = {
    {"append", l_append}, {"extend", l_extend},   {"pop", l_pop},       {"insert", l_insert},
    {"remove", l_remove}, {"totable", cb_list_totable}, {"clear", l_clear},   {"ipairs", l_ipairs},
    {"len", l_len},       {NULL, NULL},
};

void cb_open_list(lua_State *L) {
    static const luaL_Reg meta[] = {
        {"__newindex", l_newindex}, {"__len", l_len}, {"__tostring", l_tostring},
        {"__pairs", l_ipairs},      {NULL, NULL},
    };
    cb_lazytype(CC_T_LIST, "list", methods, meta, l_index);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "list");
}
