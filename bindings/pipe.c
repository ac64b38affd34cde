/*
 * pipe.c -- pipe() / pipe.new(): two connected ends, duplex by default
 * (like multiprocessing.Pipe); pipe{duplex = false} gives (reader, writer).
 *
 *   e:send(v)            error on a closed end, when the peer is gone, or
 *                        when the pipe is broken
 *   e:recv([timeout])    v | nil, "closed" (EOF) | nil, "timeout"; error
 *                        "the pipe is broken (why)" once a sender died or
 *                        was interrupted mid-message (both ends, for good)
 *   e:poll([timeout])    true when recv would not block (data or EOF)
 *   e:close(), e:closed(), e:fileno(), e.readable, e.writable
 *
 * Messages are codec values of any size (tested to 64 MiB). An end can be
 * passed to threads, and to processes forked after it was made (as an
 * argument, an upvalue, through a queue or another pipe); anywhere else its
 * file descriptor means nothing, and using it is an error.
 */
#include "cb.h"
#include "fastmsg.h"
#include "../runtime/pipe.h"

#include <errno.h>
#include <string.h>

/* Errors every method shares; other codes go to cb_fail. */
static int fail(lua_State *L, cc_pipe *p, int r, const char *fname) {
    switch (r) {
    case -EBADF: return luaL_error(L, "%s: the pipe end is closed", fname);
    case -EPROTO: {
        const char *why = cc_pipe_broken(p);
        return luaL_error(L, "%s: the pipe is broken (%s)", fname, why ? why : "unknown");
    }
    case -EMSGSIZE:
        return luaL_error(L, "%s: message too large (at most %d GiB)", fname,
                          (int)(CC_PIPE_MAX_MSG >> 30));
    case -ENOBUFS:
        return luaL_error(L, "%s: not enough memory for the message (it was dropped)", fname);
    default: return cb_fail(L, r, fname);
    }
}

static cc_pipe *check(lua_State *L, const char *fname) {
    cc_pipe *p = (cc_pipe *)cb_self(L, CC_T_PIPE, fname);
    if (!cc_pipe_usable(p))
        luaL_error(L, "%s: this pipe end cannot be used in a process started before it was made", fname);
    return p;
}

static int l_new(lua_State *L) {
    int duplex = 1;
    int idx = lua_isnil(L, 1) && lua_gettop(L) >= 2 ? 2 : 1; /* l_call puts nil first */
    if (lua_istable(L, idx)) {
        lua_getfield(L, idx, "duplex");
        if (!lua_isnil(L, -1)) duplex = lua_toboolean(L, -1);
        lua_pop(L, 1);
    } else if (!lua_isnoneornil(L, idx)) {
        return cb_argerror(L, 1, "pipe.new", "options table expected");
    }
    cc_pipe *a, *b;
    int r;
    CB_RETRY(L, r, cc_pipe_new(&a, &b, duplex));
    if (r) return cb_fail(L, r, "pipe.new");
    cb_push(L, (cc_obj *)a);
    cb_push(L, (cc_obj *)b);
    cb_pressure(L, 2 * (80 * 1024 + 1024)); /* two receive buffers, two staging areas, two sockets */
    return 2;
}

static int l_call(lua_State *L) {
    lua_remove(L, 1); /* the library */
    lua_pushnil(L);
    lua_insert(L, 1);
    return l_new(L);
}

static int e_send(lua_State *L) {
    cc_pipe *p = check(L, "pipe:send");
    if (lua_gettop(L) < 2) return cb_argerror(L, 1, "pipe:send", "value expected");
    if (!cc_pipe_writable(p)) return luaL_error(L, "pipe:send: this end is read-only");
    if (cc_pipe_closed(p)) return luaL_error(L, "pipe:send: the pipe end is closed");
    unsigned char small[FM_SMALL];
    size_t n = fm_encode(L, 2, small);
    int r;
    if (n) { /* a scalar: no references to give back on failure */
        r = cc_pipe_send(p, small, n, CC_FOREVER);
    } else {
        cc_buf *b = cb_buf_take(L, 0);
        cb_encode(L, 2, 1, b, "pipe:send", 1);
        r = cc_pipe_send(p, b->data, b->len, CC_FOREVER);
        if (r) cc_msg_release(b->data, b->len);
        cb_buf_give(L, b);
    }
    if (r) {
        if (r == -EPIPE) return luaL_error(L, "pipe:send: the other end is closed");
        return fail(L, p, r, "pipe:send");
    }
    return 0;
}

static int e_recv(lua_State *L) {
    cc_pipe *p = check(L, "pipe:recv");
    double deadline = cb_opt_deadline(L, 2, "pipe:recv");
    if (!cc_pipe_readable(p)) return luaL_error(L, "pipe:recv: this end is write-only");
    if (cc_pipe_closed(p)) return luaL_error(L, "pipe:recv: the pipe end is closed");
    cc_buf *b = cb_buf_take(L, 0);
    int r = cc_pipe_recv(p, b, deadline);
    if (r) cb_buf_give(L, b);
    if (r) return fail(L, p, r, "pipe:recv");
    lua_settop(L, 0);
    int n = fm_decode(L, b->data, b->len);
    if (n < 0) n = cb_decode(L, b->data, b->len, "pipe:recv");
    cb_buf_give(L, b);
    return n;
}

static int e_poll(lua_State *L) {
    cc_pipe *p = check(L, "pipe:poll");
    double deadline = lua_isnoneornil(L, 2) ? cc_now() : cb_opt_deadline(L, 2, "pipe:poll");
    int r = cc_pipe_poll(p, deadline);
    if (r < 0) return cb_fail(L, r, "pipe:poll");
    lua_pushboolean(L, r > 0);
    return 1;
}

static int e_close(lua_State *L) {
    cc_pipe_close((cc_pipe *)cb_self(L, CC_T_PIPE, "pipe:close"));
    return 0;
}

static int e_closed(lua_State *L) {
    lua_pushboolean(L, cc_pipe_closed((cc_pipe *)cb_self(L, CC_T_PIPE, "pipe:closed")));
    return 1;
}

static int e_fileno(lua_State *L) {
    cb_pushinteger(L, cc_pipe_fd(check(L, "pipe:fileno")));
    return 1;
}

static int e_index(lua_State *L) {
    const char *k = lua_tostring(L, 2);
    if (k && (strcmp(k, "readable") == 0 || strcmp(k, "writable") == 0)) {
        cc_pipe *p = (cc_pipe *)cb_check(L, 1, CC_T_PIPE, "pipe:__index");
        lua_pushboolean(L, k[0] == 'r' ? cc_pipe_readable(p) : cc_pipe_writable(p));
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

static int e_tostring(lua_State *L) {
    cc_pipe *p = (cc_pipe *)cb_check(L, 1, CC_T_PIPE, "pipe:__tostring");
    lua_pushfstring(L, "pipe end: %p (%s%s%s)", (void *)p,
                    cc_pipe_readable(p) && cc_pipe_writable(p) ? "duplex"
                    : cc_pipe_readable(p)                      ? "reader"
                                                               : "writer",
                    cc_pipe_closed(p) ? ", closed" : "", cc_pipe_broken(p) ? ", broken" : "");
    return 1;
}

static const luaL_Reg methods[] = {
    {"send", e_send},     {"recv", e_recv},     {"poll", e_poll}, {"close", e_close},
    {"closed", e_closed}, {"fileno", e_fileno}, {NULL, NULL},
};

static const luaL_Reg meta[] = {{"__tostring", e_tostring}, {NULL, NULL}};

int cb_open_pipe(lua_State *L) {
    cb_lazytype(CC_T_PIPE, "pipe", methods, meta, e_index);
    lua_newtable(L);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    cb_callable(L, l_call);
    return 1;
}
