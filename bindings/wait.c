/*
 * wait.c -- concur.wait(objects, [timeout]): the objects that are ready,
 * like Python's multiprocessing.connection.wait. A pipe end is ready when
 * recv would not block (data buffered or on the socket, or EOF); a queue
 * when it has an item or is closed; a process handle when its child has
 * ended (exited or killed, joined or not); a thread handle when its
 * function has returned or failed. An empty table on timeout.
 *
 * This file only converts the arguments: the waiting (which primitive
 * sleeps on what, and when it wakes) is cc_wait_any in runtime/wait.c.
 * Thread handles have no word or fd to sleep on: they are probed through
 * bindings/thread.c between short sleeps.
 */
#include "cb.h"
#include "../runtime/pipe.h"
#include "../runtime/wait.h"

#include <errno.h>

#define MAX_OBJS 1024

typedef struct probe_arg {
    lua_State *L;
    int idx;
} probe_arg;

/* A thread handle's probe (no raise: luaL_testudata and a flag). */
static int thread_ended(void *arg) {
    probe_arg *a = arg;
    int state;
    return cb_thread_probe(a->L, a->idx, &state) && state == CB_PROBE_ENDED;
}

static int bad_object(lua_State *L, int i, const char *why) {
    return luaL_error(L, "concur.wait: bad object at [%d] (%s)", i, why);
}

/* Fill w[i - 1] from the i-th object, which is on top of the stack (and
 * stays there for the probe); raises on a bad one. */
static void convert(lua_State *L, int i, cc_waitable *w, probe_arg *a) {
    cc_obj *o = cb_test(L, -1);
    pid_t pid;
    int state;
    w->probe = NULL;
    w->arg = NULL;
    if (o && o->type == CC_T_QUEUE) {
        w->kind = CC_WAIT_QUEUE;
        w->queue = (cc_queue *)o;
    } else if (o && o->type == CC_T_PIPE) {
        cc_pipe *p = (cc_pipe *)o;
        if (!cc_pipe_usable(p))
            luaL_error(L, "concur.wait: the pipe end at [%d] cannot be used in this process", i);
        w->kind = CC_WAIT_PIPE;
        w->pipe = p;
    } else if (!o && cb_process_probe(L, -1, &pid, &state)) {
        if (state == CB_PROBE_FINALIZED) bad_object(L, i, "the process handle was finalized");
        if (state == CB_PROBE_FOREIGN) bad_object(L, i, "a process spawned by another process");
        w->kind = state == CB_PROBE_RUNNING ? CC_WAIT_CHILD : CC_WAIT_READY;
        w->pid = pid;
    } else if (!o && cb_thread_probe(L, -1, &state)) {
        if (state == CB_PROBE_FINALIZED) bad_object(L, i, "the thread handle was finalized");
        if (state == CB_PROBE_FOREIGN) bad_object(L, i, "a thread of another process");
        w->kind = CC_WAIT_PROBE;
        a->L = L;
        a->idx = lua_gettop(L);
        w->probe = thread_ended;
        w->arg = a;
    } else {
        bad_object(L, i, "pipe end, queue, process or thread expected");
    }
}

static int l_wait(lua_State *L) {
    cb_checktable(L, 1, 1, "concur.wait");
    double deadline = cb_opt_deadline(L, 2, "concur.wait");
    lua_settop(L, 2);
    int n = (int)cb_rawlen(L, 1);
    if (n > MAX_OBJS) return luaL_error(L, "concur.wait: too many objects (at most %d)", MAX_OBJS);
    luaL_checkstack(L, n + 4, "concur.wait: too many objects");
    cc_waitable *w = lua_newuserdata(L, sizeof *w * (size_t)(n ? n : 1));
    probe_arg *args = lua_newuserdata(L, sizeof *args * (size_t)(n ? n : 1));
    int base = lua_gettop(L);
    for (int i = 1; i <= n; i++) { /* each object stays on the stack: stack index base + i */
        lua_rawgeti(L, 1, i);
        convert(L, i, &w[i - 1], &args[i - 1]);
    }
    int r = cc_wait_any(w, n, deadline);
    if (r < 0) return cb_fail(L, r, "concur.wait");
    lua_createtable(L, r, 0);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (!w[i].ready) continue;
        lua_pushvalue(L, base + 1 + i);
        lua_rawseti(L, -2, ++k);
    }
    return 1;
}

int cb_open_wait(lua_State *L) {
    lua_pushcfunction(L, l_wait);
    return 1;
}
