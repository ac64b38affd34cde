/*
 * queue.c -- queue([maxsize]) / queue.new([maxsize]): a FIFO of codec values
 * shared by threads and processes.
 *
 *   q:put(v, [timeout])        true | nil, "timeout"; error on a closed queue
 *   q:get([timeout])           v | nil, "timeout" | nil, "closed" (closed and drained)
 *   q:put_many(tbl, [timeout]) the number put (one lock per batch)
 *   q:get_many(max, [timeout]) an array of up to max values (waits for the first)
 *   #q, q:len(), q:empty(), q:full(), q:maxsize(), q:close(), q:closed()
 *   for v in q:iter() do ... end     until closed and drained
 *   q:task_done()              one item taken earlier is finished
 *   q:join([timeout])          true once every item put was marked done |
 *                              nil, "timeout" (Python's JoinableQueue)
 *
 * nil can be queued (get returns nil, nil for it; use the second value or
 * avoid queuing nil). Values are copied through the codec; shared objects
 * travel by reference.
 */
#include "cb.h"
#include "fastmsg.h"
#include "../runtime/queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Hot handles (as locks do, bindings/lock.c): after HOT calls through the
 * type's methods a queue handle gets a metatable of its own (cb_derive)
 * whose methods are closures bound to it, and its receiver check becomes
 * one address compare -- the check through the type's metatable was 190
 * of the 1930 instructions of a put + get. Only queues in use pay the ~1
 * KiB this costs. */
#define HOT 64

static void bind(lua_State *L);
static cc_queue *check_slow(lua_State *L, const char *fname) __attribute__((noinline));

/* The queue at 1: through a method bound to it, upvalue 1 is that very
 * handle (kept alive by the closure). */
static inline cc_queue *check(lua_State *L, const char *fname) {
    cb_handle *h = lua_touserdata(L, 1);
    if (h && h == lua_touserdata(L, lua_upvalueindex(1)) && h->obj) return (cc_queue *)h->obj;
    return check_slow(L, fname);
}

/* Anything else: the full check (it raises the right message), and the
 * count that binds a handle once it is hot. */
static cc_queue *check_slow(lua_State *L, const char *fname) {
    cc_queue *q = (cc_queue *)cb_self(L, CC_T_QUEUE, fname);
    cb_handle *h = lua_touserdata(L, 1);
    if (h->flags < HOT && ++h->flags == HOT) bind(L);
    return q;
}

static int l_new(lua_State *L) {
    lua_Integer maxsize = 0;
    if (!lua_isnoneornil(L, 1)) {
        int ok = 0;
        maxsize = cb_tointegerx(L, 1, &ok);
        if (!ok || maxsize < 0)
            return cb_argerror(L, 1, "queue.new",
                               lua_pushfstring(L, "maxsize expected: an integer >= 0, got %s",
                                               lua_type(L, 1) == LUA_TNUMBER ? lua_tostring(L, 1)
                                                                             : luaL_typename(L, 1)));
    }
    cc_queue *q;
    int r;
    CB_RETRY(L, r, cc_queue_new(&q, maxsize));
    if (r) return cb_fail(L, r, "queue.new");
    cb_push(L, (cc_obj *)q); /* the header is its first member */
    cb_pressure(L, 64 * 1024); /* its first chunk, at the first put */
    return 1;
}

static int l_call(lua_State *L) { /* queue(maxsize): the library is argument 1 */
    lua_remove(L, 1);
    return l_new(L);
}

static int q_put(lua_State *L) {
    cc_queue *q = check(L, "queue:put");
    if (lua_gettop(L) < 2) return cb_argerror(L, 1, "queue:put", "value expected");
    double deadline = cb_opt_deadline(L, 3, "queue:put");
    unsigned char small[FM_SMALL];
    size_t n = fm_encode(L, 2, small);
    if (n) { /* a scalar: no references to give back on failure */
        int r = cc_queue_put(q, small, n, deadline);
        if (r == -ENOMEM) {
            cb_collect(L);
            r = cc_queue_put(q, small, n, deadline);
        }
        if (r == -EPIPE) return luaL_error(L, "queue:put: the queue is closed");
        if (r) return cb_fail(L, r, "queue:put");
        lua_pushboolean(L, 1);
        return 1;
    }
    cc_buf *b = cb_buf_take(L, 0);
    cb_encode(L, 2, 1, b, "queue:put", 1);
    int r;
    CB_RETRY(L, r, cc_queue_put(q, b->data, b->len, deadline));
    if (r) cc_msg_release(b->data, b->len);
    cb_buf_give(L, b);
    if (r == -EPIPE) return luaL_error(L, "queue:put: the queue is closed");
    if (r) return cb_fail(L, r, "queue:put");
    lua_pushboolean(L, 1);
    return 1;
}

static int q_get(lua_State *L) {
    cc_queue *q = check(L, "queue:get");
    double deadline = cb_opt_deadline(L, 2, "queue:get");
    unsigned char small[FM_SMALL];
    size_t len;
    int r = cc_queue_get_small(q, small, sizeof small, &len, deadline);
    if (r == 0) { /* no scratch buffer for a small message */
        lua_settop(L, 0);
        int n = fm_decode(L, small, len);
        return n >= 0 ? n : cb_decode(L, small, len, "queue:get");
    }
    if (r != -E2BIG) return cb_fail(L, r, "queue:get");
    cc_buf *b = cb_buf_take(L, 0);
    r = cc_queue_get(q, b, deadline);
    if (r) {
        cb_buf_give(L, b);
        return cb_fail(L, r, "queue:get");
    }
    lua_settop(L, 0);
    int n = fm_decode(L, b->data, b->len);
    if (n < 0) n = cb_decode(L, b->data, b->len, "queue:get");
    cb_buf_give(L, b);
    return n;
}

static int q_put_many(lua_State *L) {
    cc_queue *q = check(L, "queue:put_many");
    cb_checktable(L, 2, 1, "queue:put_many");
    double deadline = cb_opt_deadline(L, 3, "queue:put_many");
    lua_settop(L, 3);
    size_t n = (size_t)cb_rawlen(L, 2);
    if (n == 0) {
        cb_pushinteger(L, 0);
        return 1;
    }
    /* encode every item first (a refusal raises, and the batch's __gc
     * gives back what the items before it had counted) */
    cb_batch *all = cb_batch_new(L);
    all->lens = malloc(n * sizeof *all->lens); /* cb_batch_add grows it from here */
    if (!all->lens || cc_buf_reserve(&all->all, n * 16 + FM_SMALL))
        return luaL_error(L, "queue:put_many: out of memory");
    all->cap = n;
    cc_buf *one = cb_buf_take(L, 0);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (int)i + 1);
        cc_buf *a = &all->all;
        if (a->cap - a->len < FM_SMALL && cc_buf_reserve(a, a->len + FM_SMALL))
            return luaL_error(L, "queue:put_many: out of memory");
        size_t len = fm_encode(L, -1, (unsigned char *)a->data + a->len);
        if (len) { /* a scalar, written in place */
            lua_pop(L, 1);
            a->len += len;
            all->lens[all->n++] = len;
            continue;
        }
        cb_encode(L, -1, 1, one, "queue:put_many", (int)i + 1);
        lua_pop(L, 1);
        cb_batch_add(L, all, one->data, one->len, "queue:put_many");
    }
    cb_buf_give(L, one);
    int64_t put;
    CB_RETRY(L, put, cc_queue_put_many(q, all->all.data, all->lens, n, deadline));
    if (put > 0) cb_batch_keep(all, (size_t)put); /* the queue owns those */
    cb_batch_free(L, all);                         /* the rest go back now */
    if (put == -EPIPE) return luaL_error(L, "queue:put_many: the queue is closed");
    if (put < 0) return cb_fail(L, (int)put, "queue:put_many");
    cb_pushinteger(L, put);
    return 1;
}

static int q_get_many(lua_State *L) {
    cc_queue *q = check(L, "queue:get_many");
    int ok = 0;
    lua_Integer max = cb_tointegerx(L, 2, &ok);
    if (!ok || max < 1) return cb_argerror(L, 1, "queue:get_many", "max expected: an integer >= 1");
    double deadline = cb_opt_deadline(L, 3, "queue:get_many");
    lua_settop(L, 0);
    cb_batch *all = cb_batch_new(L);
    size_t n;
    int r = cc_queue_get_many(q, (size_t)max, &all->all, &all->lens, &n, deadline);
    if (r) return cb_fail(L, r, "queue:get_many");
    all->n = all->cap = n;
    lua_createtable(L, (int)n, 0);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        /* a scalar holds no references: nothing for the batch to hand over */
        if (fm_decode(L, all->all.data + off, all->lens[i]) < 0) {
            cb_batch_decode(L, all, i, off, "queue:get_many");
        } else if (all->next == i) { /* taken: nothing left to release */
            all->next++;
            all->off += all->lens[i];
        }
        lua_rawseti(L, 2, (int)i + 1);
        off += all->lens[i];
    }
    cb_batch_free(L, all);
    return 1;
}

static int q_len(lua_State *L) {
    cb_pushinteger(L, cc_queue_len(check(L, "queue:len")));
    return 1;
}

static int q_empty(lua_State *L) {
    lua_pushboolean(L, cc_queue_len(check(L, "queue:empty")) == 0);
    return 1;
}

static int q_full(lua_State *L) {
    cc_queue *q = check(L, "queue:full");
    int64_t max = cc_queue_maxsize(q);
    lua_pushboolean(L, max > 0 && cc_queue_len(q) >= max);
    return 1;
}

static int q_maxsize(lua_State *L) {
    int64_t max = cc_queue_maxsize(check(L, "queue:maxsize"));
    if (max > 0) cb_pushinteger(L, max);
    else lua_pushnil(L);
    return 1;
}

static int q_close(lua_State *L) {
    cc_queue_close(check(L, "queue:close"));
    return 0;
}

static int q_closed(lua_State *L) {
    lua_pushboolean(L, cc_queue_closed(check(L, "queue:closed")));
    return 1;
}

static int q_task_done(lua_State *L) {
    if (cc_queue_task_done(check(L, "queue:task_done")) == -EINVAL)
        return luaL_error(L, "queue:task_done: called more times than items were put");
    return 0;
}

static int q_join(lua_State *L) {
    cc_queue *q = check(L, "queue:join");
    double deadline = cb_opt_deadline(L, 2, "queue:join");
    int r = cc_queue_join(q, deadline);
    if (r) return cb_fail(L, r, "queue:join");
    lua_pushboolean(L, 1);
    return 1;
}

static int iter_next(lua_State *L) {
    cc_queue *q = (cc_queue *)cb_check(L, lua_upvalueindex(1), CC_T_QUEUE, "queue:iter");
    cc_buf *b = cb_buf_take(L, 0);
    int r = cc_queue_get(q, b, CC_FOREVER);
    if (r) cb_buf_give(L, b);
    if (r == -EPIPE) return 0;
    if (r) return cb_fail(L, r, "queue:iter");
    lua_settop(L, 0);
    int n = fm_decode(L, b->data, b->len);
    if (n < 0) n = cb_decode(L, b->data, b->len, "queue:iter");
    cb_buf_give(L, b);
    return n > 0 ? 1 : 0;
}

static int q_iter(lua_State *L) {
    check(L, "queue:iter");
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, iter_next, 1);
    return 1;
}

static int q_tostring(lua_State *L) {
    cc_queue *q = check(L, "queue:__tostring");
    int64_t max = cc_queue_maxsize(q);
    if (max) lua_pushfstring(L, "queue: %p (%d of %d%s)", (void *)q, (int)cc_queue_len(q), (int)max,
                             cc_queue_closed(q) ? ", closed" : "");
    else lua_pushfstring(L, "queue: %p (%d%s)", (void *)q, (int)cc_queue_len(q),
                         cc_queue_closed(q) ? ", closed" : "");
    return 1;
}

static const luaL_Reg methods[] = {
    {"put", q_put},         {"get", q_get},       {"put_many", q_put_many}, {"get_many", q_get_many},
    {"len", q_len},         {"empty", q_empty},   {"full", q_full},         {"maxsize", q_maxsize},
    {"close", q_close},     {"closed", q_closed}, {"iter", q_iter},         {"task_done", q_task_done},
    {"join", q_join},       {NULL, NULL},
};

static const luaL_Reg meta[] = {
    {"__len", q_len}, {"__tostring", q_tostring}, {NULL, NULL},
};

static void bind(lua_State *L) { cb_bind_methods(L, 1, methods); }

int cb_open_queue(lua_State *L) {
    cb_lazytype(CC_T_QUEUE, "queue", methods, meta, NULL);
    lua_newtable(L);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    cb_callable(L, l_call);
    return 1;
}
