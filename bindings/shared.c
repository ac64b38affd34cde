/*
 * shared.c -- the shared library table (shared.list, shared.dict,
 * shared.array, shared.value) and what the list and dict bindings share:
 * tostring's bounded rendering. The containers themselves are list.c and
 * dict.c (over runtime/list.c and runtime/dict.c); array and value are
 * array.c.
 */
#include "shared.h"

#include <stdio.h>
#include <string.h>

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
    put_entries(r, lua_gettop(L), depth, snapshot == cb_dict_totable);
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
            put_container(r, idx, "shared.list", cb_list_totable, depth);
            return;
        }
        if (o && o->type == CC_T_DICT) {
            put_container(r, idx, "shared.dict", cb_dict_totable, depth);
            return;
        }
        break;
    default: break;
    }
    cb_tolstring(L, idx);
    lua_rawseti(L, r->parts, ++r->n);
}

/* tostring(l) / tostring(d): label, then the object's entries. */
int cb_shared_tostring(lua_State *L, const char *label, lua_CFunction snapshot) {
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

int cb_open_shared(lua_State *L) {
    lua_createtable(L, 0, 4);
    cb_open_list(L);
    cb_open_dict(L);
    cb_open_array(L);
    return 1;
}
