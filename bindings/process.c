/*
 * process.c -- process.spawn(fn, ...): fn runs in a forked child.
 *
 * The child is a copy of the caller, so it calls fn with the very values on
 * the caller's stack (identity inside them is kept, nothing is decoded).
 * They are still encoded once before the fork, so that a value that could
 * not cross to a thread is refused here too, before anything starts: the
 * two primitives accept the same things.
 *
 * The child writes one status byte and its results (or its error with the
 * traceback) as a codec message to a result pipe, flushes stdio and leaves
 * with _exit: no finalizer of the parent's state ever runs in a child. The
 * parent reads the pipe to EOF in join, then reaps the child. A child that
 * died without writing was killed: join raises "process PID (NAME) killed by
 * SIGKILL". Results are kept, so join can be called again.
 *
 * Handles of unjoined children sit in a registry table; when the state
 * closes their finalizers join them (daemons are killed first), so no child
 * is left running or a zombie. A wait of more than a second says on stderr
 * what it waits for. When the program is ending abnormally (cc_stopping: an
 * uncaught error, a signal, a failing os.exit) or the closing thread was
 * cancelled, they stop the child instead: SIGTERM, a second of grace,
 * SIGKILL, reaped, and noted for the one-line notice at exit. A child that
 * failed (or was killed) and was never joined is reported on stderr with its
 * error and traceback when its handle is finalized, once.
 *
 * A child returns like a script ends: before it _exits it joins the
 * processes and threads it started and did not join (stops them if it
 * failed), so none is orphaned. It starts with its own random seed from the
 * OS, and dies with its parent (runtime/proc.c).
 *
 * Counts across the fork. The child can reach every shared object the
 * spawning state has a handle on (globals, the registry, any table), and its
 * copies of those handles hold no count of their own: they are the parent's.
 * So before forking, the parent takes one more count on each object in the
 * state's intern table (cb_retain_reachable) and gives them back only once
 * the child is reaped -- after a join, a kill, or the handle's finalizer. A
 * child that spawns does the same for its own children, so a grandchild
 * stays covered after its parent is gone. A spawn from a thread retains that
 * thread's state, the only one that runs in the child. The cost is O(live
 * handles) per spawn; a child that is never reaped keeps its counts (a leak,
 * never a use after free).
 */
#include "cb.h"
#include "../runtime/proc.h"
#include "../runtime/thread.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sched.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct cproc {
    pid_t pid, owner;
    int rfd;              /* result pipe, -1 once read to EOF */
    int reaped, status;   /* waitpid status once reaped */
    int daemon;
    int observed;         /* joined: its failure is the script's business */
    int stopped;          /* stopped at exit by us: nothing to report */
    int args_refs;        /* args holds counts to give back once reaped */
    int holds_refs;       /* result holds a whole message owning its references */
    cc_buf result;        /* status byte then the message */
    cc_buf args;          /* fn and arguments, encoded before the fork */
    cc_buf held;          /* cc_obj *[]: one count on every object the child
                             can reach (all handles of the spawning state),
                             kept until it is reaped, whatever the parent
                             drops meanwhile */
    char name[64];
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

/* The status byte: OK or not, and FINISHING when the child still has its
 * own unjoined workers to join after sending its results. */
enum { ST_OK = 1, ST_FINISHING = 0x80 };

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
            luaL_error(L, "%s: bad argument #%d (signal number out of range 1..%d)", fname, idx - 1,
                       (int)SIGRTMAX);
        return (int)n;
    }
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: bad argument #%d (signal name or number expected, got %s)", fname,
                   idx - 1, cb_typeof(L, idx));
    const char *s = lua_tostring(L, idx);
    if (strncmp(s, "SIG", 3) == 0) s += 3;
    for (size_t i = 0; i < sizeof SIGNALS / sizeof SIGNALS[0]; i++)
        if (strcmp(SIGNALS[i].name, s) == 0) return SIGNALS[i].sig;
    return luaL_error(L, "%s: bad argument #%d (unknown signal '%s')", fname, idx - 1,
                      lua_tostring(L, idx));
}

/* ---- in the child ---- */

void cb_after_fork_child(void) {}

static int encode_all(lua_State *L) {
    cc_buf *b = lua_touserdata(L, 1);
    const char *what = lua_tostring(L, 2);
    lua_remove(L, 1);
    lua_remove(L, 1);
    cc_buf_reserve(b, 1);
    cb_encode(L, 1, lua_gettop(L), b, what, 1);
    return 0;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

/* Does this process have workers of its own still to join? */
static int unjoined(lua_State *L) {
    int n = cb_thread_unjoined(L);
    cb_rawgetp(L, LUA_REGISTRYINDEX, &UNJOINED_KEY);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            cproc **box = luaL_testudata(L, -2, MT);
            if (box && *box && (*box)->owner == cc_pid()) n++;
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
    /* encode what fn returned, or the error; status byte first */
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
    unsigned char st = (ok ? ST_OK : 0) | (unjoined(L) ? ST_FINISHING : 0);
    write_all(wfd, (char *)&st, 1);
    write_all(wfd, b.data, b.len);
    close(wfd);
    /* what fn started and left running ends with it, as at a script's end;
     * the parent's join has the results already and does not wait for it */
    lua_settop(L, 0);
    lua_pushcfunction(L, close_all);
    lua_pushboolean(L, !ok);
    lua_pcall(L, 1, 0, 0);
    fflush(NULL);
    cc_exit_report();
    _exit(ok ? 0 : 1);
}

/* ---- in the parent ---- */

/* The process record of the handle at idx; raises on anything else, and on
 * a handle whose finalizer already ran (the record is gone). */
static cproc *check(lua_State *L, int idx, const char *fname) {
    cproc **box = luaL_testudata(L, idx, MT);
    if (!box)
        luaL_error(L, "%s: bad argument #%d (process expected, got %s)", fname, idx,
                   cb_typeof(L, idx));
    if (!*box) luaL_error(L, "%s: the process handle was finalized", fname);
    return *box;
}

/* A metamethod's argument: a process handle, possibly finalized (NULL). */
static cproc **meta_arg(lua_State *L, const char *event) {
    cproc **box = luaL_testudata(L, 1, MT);
    if (!box)
        luaL_error(L, "bad argument #1 to '%s' (%s expected, got %s)", event, MT, cb_typeof(L, 1));
    return box;
}

static void close_result(cproc *p) {
    if (p->rfd >= 0) {
        close(p->rfd);
        p->rfd = -1;
    }
}

/* Give back the counts kept for the child; only the spawning process holds
 * them (in a forked child this record is a copy), and only once the child
 * is reaped: a child we could not reap keeps them (a leak, never a use
 * after free). */
static void release_holds(cproc *p) {
    int mine = p->owner == cc_pid() && (p->reaped || p->pid <= 0);
    if (p->args_refs && mine) cc_msg_release(p->args.data, p->args.len);
    p->args_refs = 0;
    cc_buf_free(&p->args);
    for (size_t off = 0; mine && off < p->held.len; off += sizeof(cc_obj *)) {
        cc_obj *o;
        memcpy(&o, p->held.data + off, sizeof o);
        cc_release(o);
    }
    cc_buf_free(&p->held);
}

/* Reap without blocking; 1 when the child is gone. */
static int poll_reap(cproc *p) {
    if (p->reaped) return 1;
    if (p->owner != cc_pid()) return 0;
    if (waitpid(p->pid, &p->status, WNOHANG) == p->pid) {
        p->reaped = 1;
        release_holds(p);
    }
    return p->reaped;
}

/* Read the results to EOF and reap; 0 or a negative errno. A child with
 * workers of its own left sends its results (marked ST_FINISHING), then
 * joins them, then exits: with returned = 1 such a child counts as done
 * once its results are in (it is reaped later). */
static int finish(cproc *p, double deadline, int returned) {
    if (p->rfd >= 0) {
        int r = cc_read_all(p->rfd, &p->result, deadline);
        if (r) return r;
        close_result(p);
        /* the message in it now owns references (the child took them) */
        p->holds_refs = p->result.len > 1;
    }
    if (!p->reaped) {
        double until = deadline;
        int complete = returned && p->result.len > 0 && (p->result.data[0] & ST_FINISHING);
        if (complete) { /* a short look: it may be done already */
            double soon = cc_deadline(0.1);
            if (until < 0 || soon < until) until = soon;
        }
        int r = cc_wait_pid(p->pid, &p->status, until);
        if (r == -ETIMEDOUT && complete) return 0;
        if (r) return r;
        p->reaped = 1;
    }
    if (p->reaped) release_holds(p);
    return 0;
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
            return luaL_error(L, "process.spawn: bad argument #1 (function expected in field [1])");
    } else {
        if (!lua_isfunction(L, 1))
            return luaL_error(L, "process.spawn: bad argument #1 (function expected, got %s)",
                              cb_typeof(L, 1));
        nargs = lua_gettop(L) - 1;
    }
    cproc **box = lua_newuserdata(L, sizeof *box);
    *box = NULL;
    luaL_setmetatable(L, MT);
    cproc *p = calloc(1, sizeof *p);
    if (!p) return luaL_error(L, "process.spawn: out of memory");
    *box = p;
    /* refuse what could not cross to a thread, before forking */
    cb_encode(L, first, nargs + 1, &p->args, "process.spawn", 1);
    p->args_refs = 1;
    p->rfd = -1;
    p->daemon = daemon;
    p->owner = cc_pid();
    /* the child can reach, and use, every object this state has a handle
     * on (through globals, the registry, any table), not only fn's
     * arguments and upvalues: hold them all until it is reaped */
    if (cb_retain_reachable(L, &p->held)) return luaL_error(L, "process.spawn: out of memory");
    int fds[2];
    /* both ends tracked from birth: a fork by another thread must not
     * inherit them (the write end would hold our EOF back) */
    int r = cc_pipe_tracked(fds, 0);
    if (r) return luaL_error(L, "process.spawn: pipe: %s", strerror(-r));
    pid_t pid = cc_fork(fds[1]);
    if (pid == 0) {
        cb_buf_forget_frames(L);
        lua_pop(L, 1); /* the handle */
        child(L, first, nargs, fds[1]);
    }
    cc_close_tracked(fds[1]);
    /* the read end is ours alone; children forked later need not close it */
    cc_fork_track(fds[0], 0);
    if (pid < 0) {
        close(fds[0]);
        return luaL_error(L, "process.spawn: fork: %s", strerror(-pid));
    }
    p->pid = pid;
    p->rfd = fds[0];
    fcntl(p->rfd, F_SETFL, fcntl(p->rfd, F_GETFL) | O_NONBLOCK);
    if (name) snprintf(p->name, sizeof p->name, "%s", name);
    else snprintf(p->name, sizeof p->name, "process-%d", atomic_fetch_add(&counter, 1) + 1);
    cb_registry_mark(L, &UNJOINED_KEY, -1, 1);
    return 1;
}

static int p_join(lua_State *L) {
    cproc *p = check(L, 1, "process:join");
    double deadline = cb_opt_deadline(L, 2, "process:join");
    if (p->owner != cc_pid())
        return luaL_error(L, "process:join: process %d is not a child of this process", (int)p->pid);
    int r = finish(p, deadline, 1);
    if (r) return cb_fail(L, r, "process:join");
    p->observed = 1;
    cb_registry_mark(L, &UNJOINED_KEY, 1, 0);
    if (WIFSIGNALED(p->status) && p->result.len == 0)
        return luaL_error(L, "process %d (%s) killed by %s", (int)p->pid, p->name,
                          signame(WTERMSIG(p->status)));
    if (p->result.len == 0)
        return luaL_error(L, "process %d (%s) exited with status %d before returning", (int)p->pid,
                          p->name, WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1);
    int ok = (p->result.data[0] & ST_OK) != 0;
    if (!p->holds_refs) {
        if (ok) return 0;
        return luaL_error(L, "process %d (%s) failed", (int)p->pid, p->name);
    }
    lua_settop(L, 1); /* the handle stays anchored while its result is decoded */
    cc_msg_retain(p->result.data + 1, p->result.len - 1); /* join can be called again */
    int n = cb_decode(L, p->result.data + 1, p->result.len - 1, "process:join");
    if (ok) return n;
    if (lua_type(L, 2) == LUA_TSTRING)
        lua_pushfstring(L, "process %d (%s) failed: %s", (int)p->pid, p->name, lua_tostring(L, 2));
    else lua_settop(L, 2);
    return lua_error(L);
}

static int p_alive(lua_State *L) {
    cproc *p = check(L, 1, "process:alive");
    lua_pushboolean(L, !poll_reap(p));
    return 1;
}

static int p_kill(lua_State *L) {
    cproc *p = check(L, 1, "process:kill");
    int sig = check_signal(L, 2, "process:kill");
    if (poll_reap(p)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (kill(p->pid, sig) != 0) return luaL_error(L, "process:kill: %s", strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

static int p_index(lua_State *L) {
    cproc **box = meta_arg(L, "__index");
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
    if (!*box) return luaL_error(L, "process.%s: the process handle was finalized", k);
    cproc *p = *box;
    if (strcmp(k, "pid") == 0) cb_pushinteger(L, p->pid);
    else if (strcmp(k, "name") == 0) lua_pushstring(L, p->name);
    else if (strcmp(k, "daemon") == 0) lua_pushboolean(L, p->daemon);
    else if (!poll_reap(p)) lua_pushnil(L);
    else if (WIFSIGNALED(p->status)) cb_pushinteger(L, -WTERMSIG(p->status));
    else cb_pushinteger(L, WEXITSTATUS(p->status));
    return 1;
}

/* SIGTERM, a short grace, SIGKILL; reap and note it. Our waits here must
 * not be cut short by the closing thread's own interruption. */
static void stop(cproc *p) {
    _Atomic int *flag = cc_interrupt_get();
    cc_interrupt_set(NULL);
    if (!poll_reap(p)) {
        kill(p->pid, p->daemon ? SIGKILL : SIGTERM);
        int r = cc_wait_pid(p->pid, &p->status, cc_deadline(GRACE));
        if (r == -ETIMEDOUT) {
            kill(p->pid, SIGKILL);
            r = cc_wait_pid(p->pid, &p->status, CC_FOREVER);
        }
        p->reaped = 1;
        if (r) p->status = 0;
        p->stopped = 1;
        if (!p->daemon && cc_stopping()) {
            char note[96];
            snprintf(note, sizeof note, "process %d (%s)", (int)p->pid, p->name);
            cc_exit_note(note);
        }
    } else if (WIFSIGNALED(p->status)) {
        p->stopped = 1; /* Ctrl-C reached it too: nothing to report */
    }
    /* it may have written its results before it was stopped (or ended) */
    if (p->rfd >= 0 && cc_read_all(p->rfd, &p->result, cc_deadline(0.5)) == 0)
        p->holds_refs = p->result.len > 1;
    close_result(p);
    cc_interrupt_set(flag);
}

/* The finalizer's wait: join, telling stderr when it takes long; a wait
 * interrupted (Ctrl-C at exit, a cancel) stops the child instead. */
static void wait_or_stop(cproc *p, int stopping) {
    if (p->daemon || stopping) {
        stop(p);
        return;
    }
    int r = finish(p, cc_deadline(NOTICE_AFTER), 0);
    if (r == -ETIMEDOUT) {
        fprintf(stderr, "concur: waiting for process %d (%s) to finish (Ctrl-C stops it)\n",
                (int)p->pid, p->name);
        fflush(stderr);
        r = finish(p, CC_FOREVER, 0);
    }
    if (r) stop(p);
}

static int report_thunk(lua_State *L) {
    cproc *p = lua_touserdata(L, 1);
    char what[128];
    snprintf(what, sizeof what, "process %d (%s)", (int)p->pid, p->name);
    if (p->result.len > 1 && !(p->result.data[0] & ST_OK) && p->holds_refs) {
        cc_msg_retain(p->result.data + 1, p->result.len - 1);
        lua_settop(L, 0);
        int n = cb_decode(L, p->result.data + 1, p->result.len - 1, "process");
        const char *msg = n > 0 ? lua_tostring(L, 1) : NULL;
        fprintf(stderr, "concur: %s failed and was never joined: %s\n", what,
                msg ? msg : "(error object is not a string)");
    } else if (p->result.len == 0 && WIFSIGNALED(p->status)) {
        fprintf(stderr, "concur: %s was killed by %s and never joined\n", what,
                signame(WTERMSIG(p->status)));
    } else if (p->result.len == 0 && WIFEXITED(p->status) && WEXITSTATUS(p->status) != 0) {
        fprintf(stderr, "concur: %s exited with status %d and was never joined\n", what,
                WEXITSTATUS(p->status));
    }
    fflush(stderr);
    return 0;
}

/* A failure nobody joined is not silent: say it once, with the traceback. */
static void report_unobserved(lua_State *L, cproc *p) {
    if (p->observed || p->stopped || p->daemon || !p->reaped) return;
    p->observed = 1;
    lua_pushcfunction(L, report_thunk);
    lua_pushlightuserdata(L, p);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "concur: process %d (%s) failed and was never joined (its error: %s)\n",
                (int)p->pid, p->name, lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
        lua_pop(L, 1);
    }
}

/* Join (or stop) the child and free the record; the handle is finalized. */
static void finalize(lua_State *L, cproc **box, int stopping) {
    cproc *p = *box;
    if (!p) return;
    *box = NULL;
    int mine = p->owner == cc_pid(); /* in a forked child this is a copy */
    if (p->pid > 0 && mine) {
        wait_or_stop(p, stopping || cc_stopping() || cc_interrupted());
        report_unobserved(L, p);
    }
    close_result(p);
    if (p->holds_refs && mine) cc_msg_release(p->result.data + 1, p->result.len - 1);
    release_holds(p);
    cc_buf_free(&p->result);
    free(p);
}

static int p_gc(lua_State *L) {
    finalize(L, meta_arg(L, "__gc"), 0);
    return 0;
}

/* Finalize every unjoined child this process started from L: at the end of
 * a forked child, and at os.exit. */
static int close_one(lua_State *L, void *ud, int stop) {
    cproc **box = ud;
    if (!*box || (*box)->owner != cc_pid()) return 0;
    finalize(L, box, stop);
    return 1;
}

void cb_process_close_all(lua_State *L, int stop) {
    cb_registry_drain(L, &UNJOINED_KEY, MT, close_one, stop);
}

static int p_tostring(lua_State *L) {
    cproc *p = *meta_arg(L, "__tostring");
    if (!p) lua_pushliteral(L, "process (finalized)");
    else lua_pushfstring(L, "process %d (%s, %s)", (int)p->pid, p->name,
                         poll_reap(p) ? "ended" : "running");
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
    if (!lua_istable(L, 1))
        return luaL_error(L, "process.run: bad argument #1 (table expected, got %s)", cb_typeof(L, 1));
    lua_settop(L, 1);
    int n = (int)cb_rawlen(L, 1);
    if (n < 1) return luaL_error(L, "process.run: bad argument #1 (empty command)");
    if (!lua_checkstack(L, n + 8)) return luaL_error(L, "process.run: too many arguments");
    char **argv = lua_newuserdata(L, sizeof(char *) * (size_t)(n + 1));
    for (int i = 1; i <= n; i++) { /* the strings stay on the stack while used */
        lua_rawgeti(L, 1, i);
        if (!lua_isstring(L, -1))
            return luaL_error(L, "process.run: bad argument #1 (field [%d] is %s, not a string)", i,
                              cb_typeof(L, -1));
        size_t len;
        argv[i - 1] = (char *)lua_tolstring(L, -1, &len);
        /* exec would silently cut the argument at the NUL */
        if (strlen(argv[i - 1]) != len)
            return luaL_error(L, "process.run: bad argument #1 (field [%d] contains a NUL byte)", i);
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
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    cb_pushinteger(L, n > 0 ? n : 1);
    return 1;
}

static const luaL_Reg methods[] = {
    {"join", p_join}, {"alive", p_alive}, {"kill", p_kill}, {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"spawn", l_spawn}, {"run", l_run}, {"pid", l_pid}, {"cpu_count", l_cpu_count}, {NULL, NULL},
};

int cb_open_process(lua_State *L) {
    lua_newtable(L);
    cb_rawsetp(L, LUA_REGISTRYINDEX, &UNJOINED_KEY);
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
    lua_pop(L, 1);
    cb_newlib(L, funcs);
    return 1;
}

/* ---- for concur.wait (bindings/wait.c) ---- */

int cb_process_probe(lua_State *L, int idx, pid_t *pid, int *state) {
    cproc **box = luaL_testudata(L, idx, MT);
    if (!box) return 0;
    cproc *p = *box;
    if (!p) *state = CB_PROBE_FINALIZED;
    else if (p->owner != cc_pid()) *state = CB_PROBE_FOREIGN;
    else *state = (p->reaped || p->pid <= 0) ? CB_PROBE_ENDED : CB_PROBE_RUNNING;
    *pid = p ? p->pid : -1;
    return 1;
}
