/*
 * process.c -- process.spawn(fn, ...): fn runs in a forked child.
 *
 * This file converts arguments and results; runtime/proc.c owns the child
 * record (cc_child), its result pipe, waiting, killing and stopping, as
 * libuv owns a uv_process_t under luv.
 *
 * Nothing is encoded to start a child. The child is a copy of the caller,
 * so it calls fn with the very values on the caller's stack: identity is
 * kept, a coroutine, a file or another process's handle arrive as they
 * are, and the cost of a spawn does not grow with what fn captures. Only fn
 * is checked (a function). From a thread, the thread's state is the one
 * that runs in the child (fork copies only the calling OS thread); from a
 * coroutine, the coroutine does.
 *
 * The child writes one status byte and its results (or its error with the
 * traceback) as a codec message to the result pipe -- results do cross
 * back, so they are encoded and may be refused ("cannot send a coroutine"
 * becomes the child's error) -- flushes stdio and leaves with _exit: no
 * finalizer of the parent's state ever runs in a child. The parent reads
 * the pipe to EOF in join, then reaps the child. A child that died without
 * writing was killed: join raises "process PID (NAME) killed by SIGKILL".
 * Results are kept, so join can be called again.
 *
 * Handles of unjoined children sit in a registry table; when the state
 * closes their finalizers join them (daemons are killed first), so no child
 * is left running or a zombie. A wait of more than a second says on stderr
 * what it waits for. When the program is ending abnormally (cc_stopping: an
 * uncaught error, a signal, a failing os.exit) or the closing thread was
 * cancelled, they stop the child instead (cc_child_stop: SIGTERM, a second
 * of grace, SIGKILL, reaped, noted for the one-line notice at exit). A child
 * that failed (or was killed) and was never joined is reported on stderr
 * with its error and traceback when its handle is finalized, once.
 *
 * A child returns like a script ends: before it _exits it joins the
 * processes and threads it started and did not join (stops them if it
 * failed), so none is orphaned. It starts with its own random seed from the
 * OS, and dies with its parent (runtime/proc.c).
 *
 * Counts across the fork. The child can reach every shared object the
 * spawning state has a handle on (arguments, upvalues, globals, the
 * registry, any table), and its copies of those handles hold no count of
 * their own: they are the parent's. So before forking, the parent takes one
 * more count on each object in the state's intern table
 * (cb_retain_reachable, O(live handles), not O(data)) and the record gives
 * them back only once the child is reaped -- after a join, a kill, or the
 * handle's finalizer. A child that spawns does the same for its own
 * children, so a grandchild stays covered after its parent is gone. A spawn
 * from a thread retains that thread's state, the only one that runs in the
 * child. A child that is never reaped keeps its counts (a leak, never a use
 * after free).
 */
#include "cb.h"
#include "../include/concur.h"
#include "../runtime/proc.h"
#include "../runtime/thread.h"

#include <errno.h>
#include <stdio.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The handle: the runtime's record (NULL once finalized) and whether join
 * returned its outcome (then a failure is the script's business). */
typedef struct cproc {
    cc_child *c;
    int observed;
} cproc;

static const char *const MT = "concur.process";
static const char UNJOINED_KEY = 'u';
static _Atomic int counter; /* process-N names; spawned from any thread */

#define GRACE 1.0        /* seconds between SIGTERM and SIGKILL when stopping */
#define NOTICE_AFTER 1.0 /* a wait at close longer than this says so */

/* thread.c: reseed math.random from the OS; finalize this state's unjoined
 * threads (join, or cancel when stop) */
void cb_seed_random(lua_State *L);
void cb_thread_close_all(lua_State *L, int stop);
void cb_process_close_all(lua_State *L, int stop);
int cb_thread_unjoined(lua_State *L);

/* ---- signals by name ---- */

static const struct { const char *name; int sig; } SIGNALS[] = {
    {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"ILL", SIGILL}, {"ABRT", SIGABRT},
    {"FPE", SIGFPE}, {"KILL", SIGKILL}, {"SEGV", SIGSEGV}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},
    {"TERM", SIGTERM}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"CHLD", SIGCHLD}, {"CONT", SIGCONT},
    {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"BUS", SIGBUS}, {"TRAP", SIGTRAP},
};

static const char *signame(int sig) {
    static __thread char buf[16];
    for (size_t i = 0; i < sizeof SIGNALS / sizeof SIGNALS[0]; i++)
        if (SIGNALS[i].sig == sig) {
            snprintf(buf, sizeof buf, "SIG%s", SIGNALS[i].name);
            return buf;
        }
    snprintf(buf, sizeof buf, "signal %d", sig);
    return buf;
}

/* A signal argument: a name ("TERM", "SIGKILL") or a number in 1..SIGRTMAX;
 * none or nil is SIGTERM. Argument numbers count after self, as Lua's. */
static int check_signal(lua_State *L, int idx, const char *fname) {
    if (lua_isnoneornil(L, idx)) return SIGTERM;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int ok = 0;
        lua_Integer n = cb_tointegerx(L, idx, &ok);
        if (!ok || n < 1 || n > SIGRTMAX)
            cb_idxerror(L, idx, fname,
                        lua_pushfstring(L, "signal number out of range 1..%d", (int)SIGRTMAX));
        return (int)n;
    }
    if (lua_type(L, idx) != LUA_TSTRING) cb_typeerror(L, idx, fname, "signal name or number");
    const char *s = lua_tostring(L, idx);
    if (strncmp(s, "SIG", 3) == 0) s += 3;
    for (size_t i = 0; i < sizeof SIGNALS / sizeof SIGNALS[0]; i++)
        if (strcmp(SIGNALS[i].name, s) == 0) return SIGNALS[i].sig;
    return cb_idxerror(L, idx, fname,
                       lua_pushfstring(L, "unknown signal '%s'", lua_tostring(L, idx)));
}

/* ---- in the child ---- */

/* encode_all(buf, what, values...): what names the message in a refusal;
 * it stays on the stack while encoding, or a collection could free it
 * under the error message ("Drocess result: ..."). */
static int encode_all(lua_State *L) {
    cc_buf *b = lua_touserdata(L, 1);
    const char *what = lua_tostring(L, 2);
    cb_encode(L, 3, lua_gettop(L) - 2, b, what, 1);
    return 0;
}

/* Does this process have workers of its own still to join? */
static int unjoined(lua_State *L) {
    int n = cb_thread_unjoined(L);
    cb_rawgetp(L, LUA_REGISTRYINDEX, &UNJOINED_KEY);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            cproc *h = luaL_testudata(L, -2, MT);
            if (h && h->c && cc_child_mine(h->c)) n++;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return n;
}

static int close_all(lua_State *L) {
    int stop = lua_toboolean(L, 1);
    cb_process_close_all(L, stop);
    cb_thread_close_all(L, stop);
    return 0;
}

/* Runs fn (at index first, args after it) in the child; never returns. */
static void child(lua_State *L, int first, int nargs, int wfd) {
    signal(SIGPIPE, SIG_DFL);
    cc_interrupt_set(NULL); /* a cancel of the spawning thread is not ours */
    cb_seed_random(L);
    lua_settop(L, first + nargs);
    lua_pushcfunction(L, cb_msghandler);
    lua_insert(L, first);
    int ok = lua_pcall(L, nargs, LUA_MULTRET, first) == LUA_OK;
    cc_buf b = {0};
    /* encode what fn returned, or the error */
    lua_pushcfunction(L, encode_all);
    lua_insert(L, first + 1);
    lua_pushlightuserdata(L, &b);
    lua_insert(L, first + 2);
    lua_pushstring(L, ok ? "process result" : "process error");
    lua_insert(L, first + 3);
    if (!ok && lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TTABLE) {
        lua_getglobal(L, "tostring");
        lua_insert(L, -2);
        lua_call(L, 1, 1);
    }
    int nres = lua_gettop(L) - (first + 1);
    if (lua_pcall(L, nres, 0, 0) != LUA_OK) {
        /* results that cannot be sent: report that as the child's error */
        ok = 0;
        lua_pushcfunction(L, encode_all);
        lua_insert(L, -2);
        lua_pushlightuserdata(L, &b);
        lua_insert(L, -2);
        lua_pushstring(L, "process error");
        lua_insert(L, -2);
        if (lua_pcall(L, 3, 0, 0) != LUA_OK) b.len = 0;
    }
    cc_child_send(wfd, (ok ? CC_CHILD_OK : 0) | (unjoined(L) ? CC_CHILD_FINISHING : 0), b.data,
                  b.len);
    /* what fn started and left running ends with it, as at a script's end;
     * the parent's join has the results already and does not wait for it */
    lua_settop(L, 0);
    lua_pushcfunction(L, close_all);
    lua_pushboolean(L, !ok);
    lua_pcall(L, 1, 0, 0);
    fflush(NULL);
    cc_exit_report();
    concur_progress_break(); /* no atexit here: end a line this child left open */
    _exit(ok ? 0 : 1);
}

/* ---- in the parent ---- */

static void push_mt(lua_State *L);

/* A method's or metamethod's self (fname "process:verb"): a process
 * handle, possibly finalized (c NULL); "bad self" for anything else. */
static cproc *self_arg(lua_State *L, const char *fname) {
    cproc *h = luaL_testudata(L, 1, MT);
    if (!h) cb_typeerror(L, 1, fname, "process");
    return h;
}

/* The record of a method's self; raises on anything else, and on a
 * handle whose finalizer already ran (the record is gone). */
static cc_child *check(lua_State *L, const char *fname) {
    cproc *h = self_arg(L, fname);
    if (!h->c) luaL_error(L, "%s: the process handle was finalized", fname);
    return h->c;
}

static int l_spawn(lua_State *L) {
    int first = 1, nargs, daemon = 0, table_form = lua_istable(L, 1);
    const char *name = NULL;
    if (table_form) {
        lua_settop(L, 1);
        lua_getfield(L, 1, "name");
        lua_getfield(L, 1, "daemon");
        if (!lua_isnil(L, 2) && !lua_isstring(L, 2))
            return luaL_error(L, "process.spawn: bad field 'name' (string expected, got %s)",
                              cb_typeof(L, 2));
        name = lua_tostring(L, 2);
        daemon = lua_toboolean(L, 3);
        int n = (int)cb_rawlen(L, 1);
        if (!lua_checkstack(L, n + 4)) return luaL_error(L, "process.spawn: too many arguments");
        for (int i = 1; i <= n; i++) lua_rawgeti(L, 1, i);
        first = 4;
        nargs = n - 1;
        if (n < 1 || !lua_isfunction(L, first))
            return cb_argerror(L, 1, "process.spawn", "function expected in field [1]");
    } else {
        if (!lua_isfunction(L, 1)) return cb_typeerror(L, 1, "process.spawn", "function");
        nargs = lua_gettop(L) - 1;
    }
    push_mt(L); /* before the handle: raising here leaks nothing */
    cproc *h = cb_newuserdata(L, sizeof *h);
    h->c = NULL;
    h->observed = 0;
    lua_pushvalue(L, -2);
    lua_setmetatable(L, -2);
    lua_remove(L, -2);
    cc_child *c = cc_child_new();
    if (!c) return cb_oom(L, "process.spawn");
    h->c = c;
    c->daemon = daemon;
    if (name) snprintf(c->name, sizeof c->name, "%s", name);
    else snprintf(c->name, sizeof c->name, "process-%d", atomic_fetch_add(&counter, 1) + 1);
    /* the child can reach, and use, every object this state has a handle
     * on (through its arguments, upvalues, globals, the registry, any
     * table): hold them all until it is reaped */
    if (cb_retain_reachable(L, &c->held)) return cb_oom(L, "process.spawn");
    int wfd = -1;
    pid_t pid = cc_child_fork(c, &wfd);
    if (pid == 0) {
        cb_buf_forget_frames(L);
        lua_pop(L, 1); /* the handle */
        child(L, first, nargs, wfd);
    }
    if (pid < 0) return luaL_error(L, "process.spawn: cannot start a process: %s", strerror(-pid));
    cb_registry_mark(L, &UNJOINED_KEY, -1, 1);
    return 1;
}

static int p_join(lua_State *L) {
    cc_child *c = check(L, "process:join");
    double deadline = cb_opt_deadline(L, 2, "process:join");
    if (!cc_child_mine(c))
        return luaL_error(L, "process:join: process %d is not a child of this process", (int)c->pid);
    int r = cc_child_finish(c, deadline, 1);
    if (r == -ENOMEM) return cb_oom(L, "process:join"); /* the result's buffer */
    if (r) return cb_fail(L, r, "process:join");
    ((cproc *)lua_touserdata(L, 1))->observed = 1;
    cb_registry_mark(L, &UNJOINED_KEY, 1, 0);
    if (WIFSIGNALED(c->status) && c->result.len == 0)
        return luaL_error(L, "process %d (%s) killed by %s", (int)c->pid, c->name,
                          signame(WTERMSIG(c->status)));
    if (c->result.len == 0)
        return luaL_error(L, "process %d (%s) exited with status %d before returning", (int)c->pid,
                          c->name, WIFEXITED(c->status) ? WEXITSTATUS(c->status) : -1);
    int ok = (c->result.data[0] & CC_CHILD_OK) != 0;
    if (!c->holds_refs) {
        if (ok) return 0;
        return luaL_error(L, "process %d (%s) failed", (int)c->pid, c->name);
    }
    lua_settop(L, 1); /* the handle stays anchored while its result is decoded */
    cc_msg_retain(c->result.data + 1, c->result.len - 1); /* join can be called again */
    int n = cb_decode(L, c->result.data + 1, c->result.len - 1, "process:join");
    if (ok) return n;
    if (lua_type(L, 2) == LUA_TSTRING)
        lua_pushfstring(L, "process %d (%s) failed: %s", (int)c->pid, c->name, lua_tostring(L, 2));
    else lua_settop(L, 2);
    return lua_error(L);
}

static int p_alive(lua_State *L) {
    cc_child *c = check(L, "process:alive");
    lua_pushboolean(L, !cc_child_poll(c));
    return 1;
}

static int p_kill(lua_State *L) {
    cc_child *c = check(L, "process:kill");
    int sig = check_signal(L, 2, "process:kill");
    int r = cc_child_kill(c, sig);
    if (r && r != -ESRCH) return luaL_error(L, "process:kill: %s", strerror(-r));
    lua_pushboolean(L, r == 0);
    return 1;
}

static int p_index(lua_State *L) {
    cproc *h = self_arg(L, "process:__index");
    const char *k = lua_tostring(L, 2);
    if (!k) return 0;
    int field = strcmp(k, "pid") == 0 || strcmp(k, "name") == 0 || strcmp(k, "daemon") == 0 ||
                strcmp(k, "exitcode") == 0;
    if (!field) { /* methods are found on a finalized handle too; they raise */
        luaL_getmetatable(L, MT);
        lua_getfield(L, -1, "methods");
        lua_getfield(L, -1, k);
        return 1;
    }
    if (!h->c) return luaL_error(L, "process.%s: the process handle was finalized", k);
    cc_child *c = h->c;
    if (strcmp(k, "pid") == 0) cb_pushinteger(L, c->pid);
    else if (strcmp(k, "name") == 0) lua_pushstring(L, c->name);
    else if (strcmp(k, "daemon") == 0) lua_pushboolean(L, c->daemon);
    else if (!cc_child_poll(c)) lua_pushnil(L);
    else if (WIFSIGNALED(c->status)) cb_pushinteger(L, -WTERMSIG(c->status));
    else cb_pushinteger(L, WEXITSTATUS(c->status));
    return 1;
}

/* The finalizer's wait: join, telling stderr when it takes long; a wait
 * interrupted (Ctrl-C at exit, a cancel) stops the child instead. */
static void wait_or_stop(cc_child *c, int stopping) {
    if (c->daemon || stopping) {
        cc_child_stop(c, GRACE);
        return;
    }
    int r = cc_child_finish(c, cc_deadline(NOTICE_AFTER), 0);
    if (r == -ETIMEDOUT) {
        fprintf(stderr, "concur: waiting for process %d (%s) to finish (Ctrl-C stops it)\n",
                (int)c->pid, c->name);
        fflush(stderr);
        r = cc_child_finish(c, CC_FOREVER, 0);
    }
    if (r) cc_child_stop(c, GRACE);
}

static int report_thunk(lua_State *L) {
    cc_child *c = lua_touserdata(L, 1);
    char what[128];
    snprintf(what, sizeof what, "process %d (%s)", (int)c->pid, c->name);
    if (c->result.len > 1 && !(c->result.data[0] & CC_CHILD_OK) && c->holds_refs) {
        cc_msg_retain(c->result.data + 1, c->result.len - 1);
        lua_settop(L, 0);
        int n = cb_decode(L, c->result.data + 1, c->result.len - 1, "process");
        const char *msg = n > 0 ? lua_tostring(L, 1) : NULL;
        fprintf(stderr, "concur: %s failed and was never joined: %s\n", what,
                msg ? msg : "(error object is not a string)");
    } else if (c->result.len == 0 && WIFSIGNALED(c->status)) {
        fprintf(stderr, "concur: %s was killed by %s and never joined\n", what,
                signame(WTERMSIG(c->status)));
    } else if (c->result.len == 0 && WIFEXITED(c->status) && WEXITSTATUS(c->status) != 0) {
        fprintf(stderr, "concur: %s exited with status %d and was never joined\n", what,
                WEXITSTATUS(c->status));
    }
    fflush(stderr);
    return 0;
}

/* A failure nobody joined is not silent: say it once, with the traceback. */
static void report_unobserved(lua_State *L, cc_child *c) {
    if (c->stopped || c->daemon || !c->reaped) return;
    lua_pushcfunction(L, report_thunk);
    lua_pushlightuserdata(L, c);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "concur: process %d (%s) failed and was never joined (its error: %s)\n",
                (int)c->pid, c->name, lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
        lua_pop(L, 1);
    }
}

/* Join (or stop) the child and free the record; the handle is finalized
 * first, so nothing the report runs can reach the record again. */
static void finalize(lua_State *L, cproc *h, int stopping) {
    cc_child *c = h->c;
    if (!c) return;
    h->c = NULL;
    if (c->pid > 0 && cc_child_mine(c)) { /* in a forked child this is a copy */
        wait_or_stop(c, stopping || cc_stopping() || cc_interrupted());
        if (!h->observed) report_unobserved(L, c);
        h->observed = 1;
    }
    cc_child_free(c);
}

static int p_gc(lua_State *L) {
    finalize(L, self_arg(L, "process:__gc"), 0);
    return 0;
}

/* Finalize every unjoined child this process started from L: at the end of
 * a forked child, and at os.exit. */
static int close_one(lua_State *L, void *ud, int stop) {
    cproc *h = ud;
    if (!h->c || !cc_child_mine(h->c)) return 0;
    finalize(L, h, stop);
    return 1;
}

void cb_process_close_all(lua_State *L, int stop) {
    cb_registry_drain(L, &UNJOINED_KEY, MT, close_one, stop);
}

static int p_tostring(lua_State *L) {
    cc_child *c = self_arg(L, "process:__tostring")->c;
    if (!c) lua_pushliteral(L, "process (finalized)");
    else lua_pushfstring(L, "process %d (%s, %s)", (int)c->pid, c->name,
                         cc_child_poll(c) ? "ended" : "running");
    return 1;
}

/* ---- process.run and utilities ---- */

/* process.run's timeout field: none = forever, else seconds >= 0. */
static double run_deadline(lua_State *L, int idx) {
    if (lua_isnil(L, idx)) return CC_FOREVER;
    if (lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "process.run: bad field 'timeout' (number expected, got %s)", cb_typeof(L, idx));
    double t = (double)lua_tonumber(L, idx);
    if (!(t >= 0)) luaL_error(L, "process.run: bad field 'timeout' (must be >= 0)");
    return cc_deadline(t);
}

static int l_run(lua_State *L) {
    if (!lua_istable(L, 1)) return cb_typeerror(L, 1, "process.run", "table");
    lua_settop(L, 1);
    int n = (int)cb_rawlen(L, 1);
    if (n < 1) return cb_argerror(L, 1, "process.run", "empty command");
    if (!lua_checkstack(L, n + 8)) return luaL_error(L, "process.run: too many arguments");
    char **argv = cb_newuserdata(L, sizeof(char *) * (size_t)(n + 1));
    for (int i = 1; i <= n; i++) { /* the strings stay on the stack while used */
        lua_rawgeti(L, 1, i);
        if (!lua_isstring(L, -1))
            return cb_argerror(L, 1, "process.run",
                               lua_pushfstring(L, "field [%d] is %s, not a string", i,
                                               cb_typeof(L, -1)));
        size_t len;
        argv[i - 1] = (char *)lua_tolstring(L, -1, &len);
        /* exec would silently cut the argument at the NUL */
        if (strlen(argv[i - 1]) != len)
            return cb_argerror(L, 1, "process.run",
                               lua_pushfstring(L, "field [%d] contains a NUL byte", i));
    }
    argv[n] = NULL;
    size_t inlen = 0;
    lua_getfield(L, 1, "stdin");
    if (!lua_isnil(L, -1) && !lua_isstring(L, -1))
        return luaL_error(L, "process.run: bad field 'stdin' (string expected, got %s)",
                          cb_typeof(L, -1));
    const char *in = lua_tolstring(L, -1, &inlen);
    lua_getfield(L, 1, "timeout");
    double deadline = run_deadline(L, -1);
    cc_buf out = {0}, err = {0};
    int status = 0;
    int r = cc_run(argv, in, inlen, deadline, &out, &err, &status);
    if (r && r != -ETIMEDOUT) {
        cc_buf_free(&out);
        cc_buf_free(&err);
        if (r == -EINTR) return luaL_error(L, "process.run: interrupted");
        return luaL_error(L, "process.run: cannot run '%s': %s", argv[0], strerror(-r));
    }
    lua_createtable(L, 0, 5);
    lua_pushlstring(L, out.data ? out.data : "", out.len);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, err.data ? err.data : "", err.len);
    lua_setfield(L, -2, "stderr");
    if (WIFSIGNALED(status)) {
        cb_pushinteger(L, -WTERMSIG(status));
        lua_setfield(L, -2, "status");
        lua_pushstring(L, signame(WTERMSIG(status)));
        lua_setfield(L, -2, "signal");
    } else {
        cb_pushinteger(L, WEXITSTATUS(status));
        lua_setfield(L, -2, "status");
    }
    if (r == -ETIMEDOUT) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "timeout");
    }
    cc_buf_free(&out);
    cc_buf_free(&err);
    return 1;
}

static int l_pid(lua_State *L) {
    cb_pushinteger(L, cc_pid());
    return 1;
}

static int l_cpu_count(lua_State *L) {
    cb_pushinteger(L, cc_cpu_count());
    return 1;
}

static const luaL_Reg methods[] = {
    {"join", p_join}, {"alive", p_alive}, {"kill", p_kill}, {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"spawn", l_spawn}, {"run", l_run}, {"pid", l_pid}, {"cpu_count", l_cpu_count}, {NULL, NULL},
};

/* The handle metatable, made by the first spawn in a state (most thread
 * states spawn nothing: their open need not pay for it). Until then no
 * process handle exists there, and luaL_testudata finds none. */
static void push_mt(lua_State *L) {
    if (luaL_newmetatable(L, MT)) {
        lua_pushstring(L, MT); /* errors say "got concur.X" (LuaJIT does not set it) */
        lua_setfield(L, -2, "__name");
        lua_pushcfunction(L, p_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, p_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, p_index);
        lua_setfield(L, -2, "__index");
        cb_newlib(L, methods);
        lua_setfield(L, -2, "methods");
    }
}

int cb_open_process(lua_State *L) {
    lua_newtable(L);
    cb_rawsetp(L, LUA_REGISTRYINDEX, &UNJOINED_KEY);
    cb_newlib(L, funcs);
    return 1;
}

/* ---- for concur.wait (bindings/wait.c) ---- */

int cb_process_probe(lua_State *L, int idx, pid_t *pid, int *state) {
    cproc *h = luaL_testudata(L, idx, MT);
    if (!h) return 0;
    cc_child *c = h->c;
    if (!c) *state = CB_PROBE_FINALIZED;
    else if (!cc_child_mine(c)) *state = CB_PROBE_FOREIGN;
    else *state = (c->reaped || c->pid <= 0) ? CB_PROBE_ENDED : CB_PROBE_RUNNING;
    *pid = c ? c->pid : -1;
    return 1;
}
