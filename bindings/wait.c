/*
 * wait.c -- concur.wait(objects, [timeout]): the objects that are ready,
 * like Python's multiprocessing.connection.wait. A pipe end is ready when
 * recv would not block (data buffered or on the socket, or EOF); a queue
 * when it has an item or is closed. An empty table on timeout.
 *
 * How it sleeps: pipes only -> one poll() on their fds until the deadline;
 * one queue and no pipes -> a futex wait on the queue's event word (bumped by
 * every put and by close); a mix -> poll() in slices that grow from 0.5 ms
 * to 10 ms, checking the queues between slices. So a pure-pipe or
 * single-queue wait wakes at once, and a mixed wait costs at most 10 ms of
 * latency and a handful of wake-ups per second.
 */
#include "cb.h"
#include "../runtime/pipe.h"
#include "../runtime/queue.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>

#define MAX_OBJS 1024

/* Push the ready objects as an array; their count. */
static int collect(lua_State *L, int objs, int n) {
    lua_newtable(L);
    int k = 0;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, objs, i);
        cc_obj *o = cb_test(L, -1);
        int ready = 0;
        if (o->type == CC_T_QUEUE) ready = cc_queue_ready((cc_queue *)o);
        else ready = cc_pipe_poll((cc_pipe *)o, 0) > 0 || cc_pipe_closed((cc_pipe *)o);
        if (ready) lua_rawseti(L, -2, ++k);
        else lua_pop(L, 1);
    }
    return k;
}

static int l_wait(lua_State *L) {
    cb_checktable(L, 1, 1, "concur.wait");
    double deadline = cb_opt_deadline(L, 2, "concur.wait");
    int n = (int)cb_rawlen(L, 1);
    if (n > MAX_OBJS) return luaL_error(L, "concur.wait: too many objects (at most %d)", MAX_OBJS);
    struct pollfd *fds = lua_newuserdata(L, sizeof(struct pollfd) * (size_t)(n ? n : 1));
    int nfds = 0, nqueues = 0;
    cc_queue *only_queue = NULL;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        cc_obj *o = cb_test(L, -1);
        lua_pop(L, 1);
        if (!o || (o->type != CC_T_QUEUE && o->type != CC_T_PIPE))
            return luaL_error(L, "concur.wait: bad object at [%d] (pipe end or queue expected)", i);
        if (o->type == CC_T_QUEUE) {
            nqueues++;
            only_queue = (cc_queue *)o;
        } else {
            cc_pipe *p = (cc_pipe *)o;
            if (!cc_pipe_usable(p))
                return luaL_error(L, "concur.wait: the pipe end at [%d] cannot be used in this process", i);
            fds[nfds].fd = cc_pipe_fd(p);
            fds[nfds].events = POLLIN;
            fds[nfds].revents = 0;
            nfds++;
        }
    }
    double slice = 0.0005;
    for (;;) {
        if (collect(L, 1, n) > 0) return 1;
        lua_pop(L, 1);
        if (cc_interrupted()) return cb_fail(L, -EINTR, "concur.wait");
        double now = cc_now();
        if (deadline >= 0 && now >= deadline) {
            lua_newtable(L);
            return 1;
        }
        if (nfds == 0 && nqueues == 1) {
            _Atomic uint32_t *word = cc_queue_event_word(only_queue);
            _Atomic uint32_t *waiters = cc_queue_event_waiters(only_queue);
            uint32_t seen = *word;
            (*waiters)++;
            if (!cc_queue_ready(only_queue)) cc_futex_wait(word, seen, cc_wait_slice(deadline));
            (*waiters)--;
            continue;
        }
        double until = nqueues ? now + slice : cc_wait_slice(deadline);
        if (deadline >= 0 && (until < 0 || until > deadline)) until = deadline;
        int ms = until < 0 ? -1 : (int)((until - now) * 1000) + 1;
        if (nfds) poll(fds, (nfds_t)nfds, ms);
        else cc_sleep(until - now);
        if (slice < 0.01) slice *= 2;
    }
}

int cb_open_wait(lua_State *L) {
    lua_pushcfunction(L, l_wait);
    return 1;
}
