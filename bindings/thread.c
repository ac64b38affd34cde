/*
 * thread.c -- thread.new(fn, ...): an OS thread running fn in a lua_State
 * of its own, so threads run Lua truly in parallel (no global lock).
 *
 * The function and its arguments are encoded in the caller's state (so an
 * untransferable value is refused before any thread starts) and decoded in
 * the new one; results, or the error with its traceback, come back the same
 * way and stay in the thread record, so join can be called again and gives
 * the same values.
 *
 * A record is shared by the Lua handle and the running thread (a count of
 * two); whichever lets go last frees it. Handles of threads not yet joined
 * are kept in a registry table, so they cannot be collected while the script
 * runs; when the state closes their finalizers join them: no thread outlives
 * the state that started it.
 *
 * cancel sets a flag that the thread's blocking waits poll (they fail with
 * "interrupted") and, under Lua 5.4, a count hook checks between Lua
 * instructions. join of a cancelled thread returns nil, "cancelled".
 */
#include "cb.h"
#include "../include/concur.h"
#include "../runtime/thread.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { RUNNING = -1, FAILED = 0, RETURNED = 1, CANCELLED = 2 };

typedef struct cthread {
    _Atomic int refs;
    pthread_t tid;
    pid_t owner;          /* the process whose thread this is */
    cc_done done;
    _Atomic int cancel;
    int started, joined;  /* pthread_create / pthread_join done */
    int outcome;          /* RUNNING until done */
    int globals;          /* open concur as globals, as the parent has */
    int holds_refs;       /* msg is a whole message owning its references */
    cc_buf msg;           /* in: fn and arguments; out: results or error */
    char *path, *cpath;
} cthread;

static const char UNJOINED_KEY = 'u';
static const char *const MT = "concur.thread";
static __thread cthread *self;
static concur_state_init init_fn;
static void *init_ud;

void concur_set_thread_init(concur_state_init fn, void *ud) {
    init_fn = fn;
    init_ud = ud;
}

static void unref(cthread *t) {
    if (atomic_fetch_sub(&t->refs, 1) != 1) return;
    /* in a forked child this record is a copy: its counts are the parent's */
    if (t->holds_refs && t->owner == cc_pid()) cc_msg_release(t->msg.data, t->msg.len);
    cc_buf_free(&t->msg);
    cc_done_destroy(&t->done);
    free(t->path);
    free(t->cpath);
    free(t);
}

/* ---- in the new thread ---- */

#if CB_CANCEL_HOOK
static void cancel_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    if (self && self->cancel) luaL_error(L, "thread cancelled");
}
#endif

static int body(lua_State *L) {
    cthread *t = lua_touserdata(L, 1);
    lua_settop(L, 0);
    t->holds_refs = 0; /* the decoder takes them over, even if it fails */
    int n = cb_decode(L, t->msg.data, t->msg.len, "thread.new");
    lua_call(L, n - 1, LUA_MULTRET);
    cb_encode(L, 1, lua_gettop(L), &t->msg, "thread result", 1);
    t->holds_refs = 1;
    return 0;
}

/* Encode the error value at 1; an error object that cannot travel goes as
 * its string form. */
static int encode_error(lua_State *L) {
    cthread *t = lua_touserdata(L, 2);
    lua_settop(L, 1);
    if (lua_type(L, 1) != LUA_TSTRING && lua_type(L, 1) != LUA_TTABLE) {
        lua_getglobal(L, "tostring");
        lua_pushvalue(L, 1);
        lua_call(L, 1, 1);
        lua_replace(L, 1);
    }
    cb_encode(L, 1, 1, &t->msg, "thread error", 1);
    t->holds_refs = 1;
    return 0;
}

static void save_error(lua_State *L, cthread *t, int idx) {
    lua_pushcfunction(L, encode_error);
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, t);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        lua_pushliteral(L, "thread failed with an error value that cannot be sent");
        lua_pushcfunction(L, encode_error);
        lua_insert(L, -2);
        lua_pushlightuserdata(L, t);
        if (lua_pcall(L, 2, 0, 0) != LUA_OK) t->msg.len = 0;
    }
}

static int setup_and_run(lua_State *L) {
    cthread *t = lua_touserdata(L, 1);
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
        if (t->path) {
            lua_pushstring(L, t->path);
            lua_setfield(L, -2, "path");
        }
        if (t->cpath) {
            lua_pushstring(L, t->cpath);
            lua_setfield(L, -2, "cpath");
        }
    }
    lua_pop(L, 1);
    if (t->globals) concur_openlibs(L);
    else cb_requiref(L, "concur", luaopen_concur);
    if (init_fn) init_fn(L, init_ud);
#if CB_CANCEL_HOOK
    lua_sethook(L, cancel_hook, LUA_MASKCOUNT, 1000);
#endif
    lua_settop(L, 0);
    lua_pushcfunction(L, cb_msghandler);
    lua_pushcfunction(L, body);
    lua_pushlightuserdata(L, t);
    if (lua_pcall(L, 1, 0, 1) == LUA_OK) {
        lua_pushinteger(L, RETURNED);
        return 1;
    }
    save_error(L, t, 2);
    lua_pushinteger(L, FAILED);
    return 1;
}

static void *run(void *arg) {
    cthread *t = arg;
    self = t;
    cc_interrupt_set(&t->cancel);
    int outcome = FAILED;
    lua_State *L = luaL_newstate();
    if (L) {
        lua_pushcfunction(L, setup_and_run);
        lua_pushlightuserdata(L, t);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
            outcome = (int)lua_tointeger(L, -1);
        } else {
            if (t->holds_refs) cc_msg_release(t->msg.data, t->msg.len);
            t->holds_refs = 0;
            save_error(L, t, lua_gettop(L));
        }
        lua_close(L); /* joins what this thread started and did not join */
    } else {
        if (t->holds_refs) cc_msg_release(t->msg.data, t->msg.len);
        t->holds_refs = 0;
        t->msg.len = 0;
    }
    if (outcome == FAILED && t->cancel) outcome = CANCELLED;
    t->outcome = outcome;
    cc_interrupt_set(NULL);
    cc_done_set(&t->done);
    unref(t);
    return NULL;
}

/* ---- in the caller ---- */

/* The thread record of the handle at idx; raises on anything else, and on
 * a handle whose finalizer already ran (it let go of the record). */
static cthread *check(lua_State *L, int idx, const char *fname) {
    cthread **box = luaL_testudata(L, idx, MT);
    if (!box)
        luaL_error(L, "%s: bad argument #%d (thread expected, got %s)", fname, idx,
                   cb_typeof(L, idx));
    if (!*box) luaL_error(L, "%s: the thread handle was finalized", fname);
    return *box;
}

/* A metamethod's argument: a thread handle, possibly finalized (NULL). */
static cthread **meta_arg(lua_State *L, const char *event) {
    cthread **box = luaL_testudata(L, 1, MT);
    if (!box)
        luaL_error(L, "bad argument #1 to '%s' (%s expected, got %s)", event, MT, cb_typeof(L, 1));
    return box;
}

static char *dup_field(lua_State *L, const char *field) {
    char *r = NULL;
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, field);
        const char *s = lua_tostring(L, -1);
        if (s) r = strdup(s);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return r;
}

static int l_new(lua_State *L) {
    if (!lua_isfunction(L, 1))
        return luaL_error(L, "thread.new: bad argument #1 (function expected, got %s)",
                          cb_typeof(L, 1));
    int nargs = lua_gettop(L);
    cthread *t = calloc(1, sizeof *t);
    if (!t) return luaL_error(L, "thread.new: out of memory");
    atomic_store(&t->refs, 1);
    t->owner = cc_pid();
    t->outcome = RUNNING;
    cc_done_init(&t->done);
    cthread **box = lua_newuserdata(L, sizeof *box);
    *box = t; /* from here the handle's __gc frees t, whatever happens */
    luaL_setmetatable(L, MT);
    cb_encode(L, 1, nargs, &t->msg, "thread.new", 1);
    t->holds_refs = 1;
    t->path = dup_field(L, "path");
    t->cpath = dup_field(L, "cpath");
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "concur");
    lua_getglobal(L, "concur");
    t->globals = !lua_isnil(L, -1) && lua_rawequal(L, -1, -2);
    lua_pop(L, 3);
    atomic_store(&t->refs, 2); /* the handle and the thread */
    int r = cc_thread_start(&t->tid, run, t);
    if (r) {
        atomic_store(&t->refs, 1);
        return luaL_error(L, "thread.new: cannot start a thread: %s", strerror(-r));
    }
    t->started = 1;
    cb_registry_mark(L, &UNJOINED_KEY, -1, 1);
    return 1;
}

/* Wait for t to end and reap it; 0 or a negative errno. */
static int finish(lua_State *L, cthread *t, int idx, double deadline, const char *fname) {
    if (t == self) return luaL_error(L, "%s: a thread cannot join itself", fname);
    if (t->owner != cc_pid())
        return luaL_error(L, "%s: the thread belongs to process %d", fname, (int)t->owner);
    int r = cc_done_wait(&t->done, deadline);
    if (r) return r;
    if (!t->joined) {
        pthread_join(t->tid, NULL);
        t->joined = 1;
        if (idx) cb_registry_mark(L, &UNJOINED_KEY, idx, 0);
    }
    return 0;
}

static int t_join(lua_State *L) {
    cthread *t = check(L, 1, "thread:join");
    double deadline = cb_opt_deadline(L, 2, "thread:join");
    int r = finish(L, t, 1, deadline, "thread:join");
    if (r) return cb_fail(L, r, "thread:join");
    if (t->outcome == CANCELLED) {
        lua_pushnil(L);
        lua_pushliteral(L, "cancelled");
        return 2;
    }
    if (!t->holds_refs) return luaL_error(L, "thread:join: the thread failed: out of memory");
    lua_settop(L, 0);
    cc_msg_retain(t->msg.data, t->msg.len); /* join can be called again */
    int n = cb_decode(L, t->msg.data, t->msg.len, "thread:join");
    if (t->outcome == RETURNED) return n;
    if (lua_type(L, 1) == LUA_TSTRING) lua_pushfstring(L, "thread failed: %s", lua_tostring(L, 1));
    else lua_settop(L, 1);
    return lua_error(L);
}

static int t_alive(lua_State *L) {
    cthread *t = check(L, 1, "thread:alive");
    lua_pushboolean(L, t->started && !cc_done_get(&t->done));
    return 1;
}

static int t_cancel(lua_State *L) {
    cthread *t = check(L, 1, "thread:cancel");
    atomic_store(&t->cancel, 1);
    return 0;
}

static int t_gc(lua_State *L) {
    cthread **box = meta_arg(L, "__gc");
    cthread *t = *box;
    if (!t) return 0;
    *box = NULL;
    if (t->started && !t->joined && t->owner == cc_pid()) {
        cc_done_wait(&t->done, CC_FOREVER);
        pthread_join(t->tid, NULL);
        t->joined = 1;
    }
    unref(t);
    return 0;
}

static int t_tostring(lua_State *L) {
    cthread *t = *meta_arg(L, "__tostring");
    if (!t) {
        lua_pushliteral(L, "thread (finalized)");
        return 1;
    }
    const char *state = !t->started ? "not started" : !cc_done_get(&t->done) ? "running" : "done";
    lua_pushfstring(L, "thread: %p (%s)", (void *)t, state);
    return 1;
}

static int l_id(lua_State *L) {
    cb_pushinteger(L, gettid());
    return 1;
}

static const luaL_Reg methods[] = {
    {"join", t_join}, {"alive", t_alive}, {"cancel", t_cancel}, {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"new", l_new}, {"id", l_id}, {NULL, NULL},
};

int cb_open_thread(lua_State *L) {
    lua_newtable(L);
    cb_rawsetp(L, LUA_REGISTRYINDEX, &UNJOINED_KEY);
    if (luaL_newmetatable(L, MT)) {
        lua_pushstring(L, MT); /* errors say "got concur.X" (LuaJIT does not set it) */
        lua_setfield(L, -2, "__name");
        lua_pushcfunction(L, t_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, t_tostring);
        lua_setfield(L, -2, "__tostring");
        cb_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    cb_newlib(L, funcs);
    return 1;
}

/* ---- for concur.wait (bindings/wait.c) ---- */

int cb_thread_probe(lua_State *L, int idx, int *state) {
    cthread **box = luaL_testudata(L, idx, MT);
    if (!box) return 0;
    cthread *t = *box;
    if (!t) *state = CB_PROBE_FINALIZED;
    else if (t->owner != cc_pid()) *state = CB_PROBE_FOREIGN;
    else *state = (!t->started || cc_done_get(&t->done)) ? CB_PROBE_ENDED : CB_PROBE_RUNNING;
    return 1;
}
