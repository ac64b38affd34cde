/*
 * thread.c -- thread.new(fn, ...): an OS thread running fn in a lua_State
 * of its own, so threads run Lua truly in parallel (no global lock).
 *
 * The function and its arguments are encoded in the caller's state (so an
 * untransferable value is refused before any thread starts) and decoded in
 * the new one; results, or the error with its traceback, come back the same
 * way and stay in the thread record, so join can be called again and gives
 * the same values. A join that waits for a running thread first makes the
 * caller's next thread state ("ready states" below), so the next
 * thread.new starts with its libraries open.
 *
 * A record is shared by the Lua handle and the running thread (a count of
 * two); whichever lets go last frees it. Handles of threads not yet joined
 * are kept in a registry table, so they cannot be collected while the script
 * runs; when the state closes their finalizers join them: no thread outlives
 * the state that started it. A wait of more than a second says so on
 * stderr. When the program is ending abnormally (cc_stopping) or the
 * closing thread was itself cancelled, they cancel the thread instead and
 * give it two seconds; one that does not stop (a C call, a LuaJIT loop) is
 * left to the process's exit, detached. A thread that failed and was never
 * joined is reported on stderr, with its traceback, once.
 *
 * cancel sets a flag that the thread's blocking waits poll (they fail with
 * "interrupted"). Under Lua 5.4 it also sends the thread CANCEL_SIG, whose
 * handler sets a count hook that raises "thread cancelled" on the state the
 * thread is running at that moment: no hook is set before (a hook, any
 * hook, puts Lua 5.4's VM on its slow path). Which state that is, a
 * coroutine or the thread's own, is kept by wrapping coroutine.resume and
 * coroutine.wrap in thread states; a coroutine resumed from C (lua_resume)
 * is not seen, and stops when it yields back. thread.cancelled() reads the
 * flag, so a loop that catches errors can still stop. join of a cancelled
 * thread returns nil, "cancelled".
 *
 * Every new state seeds math.random from the OS (getrandom): without it
 * states made in the same instant draw the same numbers.
 *
 * os.exit is wrapped: a failing code marks the program as ending abnormally
 * (workers are stopped, not joined); when the state is not going to be
 * closed (os.exit without close, or called in a thread) the wrapper first
 * finalizes this state's unjoined processes and threads itself. Called in a
 * thread, os.exit still ends the whole process: the other states' children
 * die with it (PR_SET_PDEATHSIG), their threads with the process.
 */
#include "cb.h"
#include "../include/concur.h"
#include "../runtime/thread.h"

#include "../runtime/proc.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

enum { RUNNING = -1, FAILED = 0, RETURNED = 1, CANCELLED = 2 };

typedef struct cthread {
    _Atomic int refs;
    cc_worker *w;         /* the worker running it, job gen (cancel's signal) */
    uint64_t gen;
    pid_t owner;          /* the process whose thread this is */
    cc_done done;
    _Atomic int cancel;
    int started, joined;  /* started / seen done by a join (or left running by stop) */
    int observed;         /* joined by the script: its failure is reported there */
    int num;              /* thread-N in notices */
    int outcome;          /* RUNNING until done */
    int globals;          /* open concur as globals, as the parent has */
    int holds_refs;       /* msg is a whole message owning its references */
    cc_buf msg;           /* in: fn and arguments; out: results or error */
    char *path, *cpath;
    struct ready *ready;  /* a state made ahead for it (see "ready states"), or NULL */
} cthread;

static const char UNJOINED_KEY = 'u';
static const char OSEXIT_KEY = 'x';
static const char *const MT = "concur.thread";
static void push_mt(lua_State *L);
static _Atomic int counter;

/* The signal thread:cancel sends to the thread's pthread under Lua 5.4
 * (see cancel). Nothing else in concur uses it; an embedding program must
 * leave it alone. */
#define CANCEL_SIG (SIGRTMIN + 5)
#define GRACE 2.0        /* seconds a cancelled thread gets to stop at exit */
#define NOTICE_AFTER 1.0 /* a wait at close longer than this says so */

void cb_process_close_all(lua_State *L, int stop); /* process.c */
void cb_thread_close_all(lua_State *L, int stop);
void cb_seed_random(lua_State *L);
static __thread cthread *self;
static concur_state_init init_fn;
static void *init_ud;

void concur_stop_on_close(int on) { cc_set_stopping(on); }

void concur_set_thread_init(concur_state_init fn, void *ud) {
    init_fn = fn;
    init_ud = ud;
}

struct ready;
static void drop_ready(struct ready *r);

static void unref(cthread *t) {
    if (atomic_fetch_sub(&t->refs, 1) != 1) return;
    /* in a forked child this record is a copy: its counts are the parent's */
    if (t->holds_refs && t->owner == cc_pid()) cc_msg_release(t->msg.data, t->msg.len);
    cc_buf_free(&t->msg);
    cc_done_destroy(&t->done);
    drop_ready(t->ready);
    free(t->path);
    free(t->cpath);
    free(t);
}

/* math.randomseed(a, b) with 53 and 63 random bits: Lua 5.4 takes both
 * integers, LuaJIT takes the first number (exact as a double). */
void cb_seed_random(lua_State *L) {
    unsigned long long r[2] = {0, 0};
    if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        r[0] ^= (unsigned long long)(cc_now() * 1e9) + (unsigned long long)gettid() * 0x9e3779b97f4a7c15ull;
        r[1] ^= (unsigned long long)(size_t)L ^ (unsigned long long)getpid() << 32;
    }
    lua_getglobal(L, "math");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_getfield(L, -1, "randomseed");
    lua_remove(L, -2);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    cb_pushinteger(L, (long long)(r[0] >> 11));
    cb_pushinteger(L, (long long)(r[1] >> 1));
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
}

/* ---- in the new thread ---- */

#if CB_CANCEL_HOOK
/* The state this OS thread is running Lua in right now: its thread's state,
 * or the coroutine that state (or a coroutine of it) resumed. NULL outside
 * thread.new's threads and while a state is being made or closed. Written
 * and read on its own thread only (the cancel signal's handler runs there). */
static __thread lua_State *volatile running;

static void cancel_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    if (self && atomic_load(&self->cancel)) luaL_error(L, "thread cancelled");
}

/* The hook that raises "thread cancelled", on L. Until cancel no hook is
 * set: any hook puts Lua 5.4's VM on its slow path. */
static void arm(lua_State *L) { lua_sethook(L, cancel_hook, LUA_MASKCOUNT, 1000); }

/* CANCEL_SIG's handler, on the cancelled thread: lua_sethook is the one
 * Lua call made to be called from a signal handler (lua.c's Ctrl-C does);
 * here it acts on the state this same thread is executing. */
static void on_cancel_signal(int sig) {
    (void)sig;
    int e = errno;
    lua_State *L = running;
    if (L) arm(L);
    errno = e;
}

/* CANCEL_SIG blocked (how 1) or unblocked (0) in the calling thread. A new
 * thread starts with it blocked until its thread-locals exist: in a
 * dlopen'd module the handler's first touch of one could allocate. */
static void mask_cancel(int how) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, CANCEL_SIG);
    pthread_sigmask(how ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

static pthread_once_t signal_once = PTHREAD_ONCE_INIT;
static int signal_ok;

static void install_signal(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_cancel_signal;
    sa.sa_flags = SA_RESTART; /* a C module's read() in the thread goes on */
    sigemptyset(&sa.sa_mask);
    signal_ok = sigaction(CANCEL_SIG, &sa, NULL) == 0;
}

/* Call the function at fn with the arguments on the stack while `running`
 * is co. A cancel that came before arms co first: co may have been made
 * before it (a new coroutine copies its maker's hook) or while the signal
 * was being handled. Back in L, a cancel that arrived meanwhile arms L (the
 * hook in co ended co only). An error is re-raised after `running` is put
 * back; with
 * where, a string error gets the caller's position, as coroutine.wrap's
 * functions give it (the original's luaL_where sees this C function). */
static int run_in(lua_State *L, lua_State *co, int fn, int where) {
    int n = lua_gettop(L);
    lua_pushvalue(L, fn);
    lua_insert(L, 1);
    lua_State *prev = running;
    running = co;
    if (self && atomic_load(&self->cancel)) arm(co);
    int st = lua_pcall(L, n, LUA_MULTRET, 0);
    running = prev;
    if (self && atomic_load(&self->cancel)) arm(L);
    if (st == LUA_OK) return lua_gettop(L);
    if (where && st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

/* coroutine.resume in a thread's state: the original is upvalue 1. */
static int co_resume(lua_State *L) {
    lua_State *co = lua_tothread(L, 1);
    if (!co) return lua_tocfunction(L, lua_upvalueindex(1))(L); /* its own error */
    return run_in(L, co, lua_upvalueindex(1), 0);
}

/* A function made by co_wrap: upvalue 1 the coroutine, 2 the original
 * wrap's function resuming it. */
static int co_wrapped(lua_State *L) {
    return run_in(L, lua_tothread(L, lua_upvalueindex(1)), lua_upvalueindex(2), 1);
}

/* coroutine.wrap in a thread's state: the original is upvalue 1. */
static int co_wrap(lua_State *L) {
    if (!lua_isfunction(L, 1)) return lua_tocfunction(L, lua_upvalueindex(1))(L); /* its own error */
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 1, 1);
    if (!lua_getupvalue(L, 1, 1) || !lua_isthread(L, -1)) {
        lua_pop(L, 1);
        return 1; /* not the stock wrap: left as it is */
    }
    lua_insert(L, 1);
    lua_pushcclosure(L, co_wrapped, 2);
    return 1;
}

/* Route coroutine.resume and coroutine.wrap through the wrappers above, so
 * the cancel signal finds the coroutine that is running. */
static void track_coroutines(lua_State *L) {
    lua_getglobal(L, "coroutine");
    if (lua_istable(L, -1)) {
        static const struct { const char *name; lua_CFunction f; } W[] = {
            {"resume", co_resume}, {"wrap", co_wrap},
        };
        for (size_t i = 0; i < sizeof W / sizeof W[0]; i++) {
            lua_getfield(L, -1, W[i].name);
            if (lua_iscfunction(L, -1)) {
                lua_pushcclosure(L, W[i].f, 1);
                lua_setfield(L, -2, W[i].name);
            } else {
                lua_pop(L, 1);
            }
        }
    }
    lua_pop(L, 1);
}
#endif

/* Set t's cancel flag; the first time, under Lua 5.4, also signal its
 * thread so pure Lua code there stops (the signal arms the hook). Only the
 * process that started t may signal it: elsewhere its pthread_t means
 * nothing. */
static void cancel(cthread *t) {
    if (atomic_exchange(&t->cancel, 1)) return;
#if CB_CANCEL_HOOK
    if (!t->started || t->joined || t->owner != cc_pid() || cc_done_get(&t->done)) return;
    pthread_once(&signal_once, install_signal);
    if (signal_ok) cc_worker_signal(t->w, t->gen, CANCEL_SIG); /* not if it just ended */
#endif
}

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

/* The libraries of a thread's state: the standard ones, then concur as
 * globals (globals: the parent has them so) or as a module; the
 * coroutine functions tracked for cancel. Nothing here depends on the
 * thread it will run: a ready state (below) is made by this ahead. */
static int open_libs(lua_State *L) {
    int globals = lua_toboolean(L, 1);
    /* package.loaded at the size it will have (the standard libraries and
     * concur's modules): one table, not four rehashed copies */
    lua_createtable(L, 0, 32);
    lua_setfield(L, LUA_REGISTRYINDEX, "_LOADED");
    luaL_openlibs(L);
    if (globals) concur_openlibs(L);
    else cb_requiref(L, "concur", luaopen_concur);
#if CB_CANCEL_HOOK
    track_coroutines(L);
#endif
    return 0;
}

static int setup_and_run(lua_State *L) {
    cthread *t = lua_touserdata(L, 1);
    if (!t->ready) {
        lua_pushcfunction(L, open_libs);
        lua_pushboolean(L, t->globals);
        lua_call(L, 1, 0);
    }
    /* seeded here, not when a ready state is made: a forked child has its
     * parent's ready state, and would draw its numbers */
    cb_seed_random(L);
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
    if (init_fn) init_fn(L, init_ud);
    lua_settop(L, 0);
    lua_pushcfunction(L, cb_msghandler);
    lua_pushcfunction(L, body);
    lua_pushlightuserdata(L, t);
#if CB_CANCEL_HOOK
    running = L;
    /* cancelled before it got here; under TSan always: it holds a signal
     * back until the thread enters a libc call, which a Lua loop never does */
    if (CC_TSAN || atomic_load(&t->cancel)) arm(L);
#endif
    int st = lua_pcall(L, 1, 0, 1);
#if CB_CANCEL_HOOK
    running = NULL;
#endif
    if (st == LUA_OK) {
        lua_pushinteger(L, RETURNED);
        return 1;
    }
    save_error(L, t, 2);
    lua_pushinteger(L, FAILED);
    return 1;
}

/* ---- the thread state's heap ----
 *
 * A thread's state is made, used and closed by one OS thread, and making
 * one is hundreds of small allocations (the libraries' tables, closures,
 * names). Under Lua 5.4 objects of up to LARGE bytes come from a region of
 * the state's own, REGION bytes malloc'd once: carved in GRAIN steps (LGRAIN
 * above SMALL), freed objects kept on a list per size for reuse; Lua passes
 * each object's size back when it frees it, so nothing carries a header.
 * Larger objects, and all once the region is used up, come from malloc;
 * whatever was carved goes at once when the state is closed. What the
 * region keeps for reuse is bounded by its size. A fresh state's tables,
 * string table and stack fit in it: a ready state made by the caller
 * (below) is then closed by its thread without a free() per block into the
 * caller's malloc arena, which the caller is filling at that moment with
 * the next one (a thread start took 43 us that way, 37 with the region).
 * Not under the sanitizers: they should see every Lua object. */
#if !defined(CB_LUAJIT) && !defined(__SANITIZE_ADDRESS__) && !CC_TSAN
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NO_OWN_HEAP 1
#endif
#endif
#ifndef NO_OWN_HEAP
#define OWN_HEAP 1
#endif
#endif

#if OWN_HEAP
#define GRAIN 16
#define SMALL 256          /* up to this, classes GRAIN apart */
#define LARGE 4096         /* up to this, classes LGRAIN apart; larger ones from malloc */
#define LGRAIN 128         /* (Lua's node arrays: 24-byte nodes, a power of two of them) */
#define NCLASS (SMALL / GRAIN + (LARGE - SMALL) / LGRAIN + 1)
#define REGION (64 << 10)  /* a fresh state with concur takes about 40 KiB */

typedef struct heap {
    void *free[NCLASS];     /* by size class, linked through the first word */
    char *base, *cur, *end; /* the region; cur: its first byte never carved */
} heap;

static size_t size_class(size_t n) {
    if (n <= SMALL) return (n + GRAIN - 1) / GRAIN;
    if (n > LARGE) return 0;
    return SMALL / GRAIN + (n - SMALL + LGRAIN - 1) / LGRAIN;
}

static size_t class_size(size_t c) {
    return c <= SMALL / GRAIN ? c * GRAIN : SMALL + (c - SMALL / GRAIN) * LGRAIN;
}

static int owns(heap *h, void *p) { return (char *)p >= h->base && (char *)p < h->end; }

/* A block of class c from the region, or NULL (not small, or no room). */
static void *carve(heap *h, size_t c) {
    if (!c) return NULL;
    void *p = h->free[c];
    if (p) {
        h->free[c] = *(void **)p;
        return p;
    }
    size_t n = class_size(c);
    if ((size_t)(h->end - h->cur) < n) return NULL;
    p = h->cur;
    h->cur += n;
    return p;
}

static void give_back(heap *h, void *p, size_t osize) {
    if (!owns(h, p)) {
        free(p);
        return;
    }
    size_t c = size_class(osize);
    *(void **)p = h->free[c];
    h->free[c] = p;
}

/* lua_Alloc: osize is the block's size when p is not NULL. A NULL answer
 * leaves p as it was, as Lua expects. */
static void *heap_alloc(void *ud, void *p, size_t osize, size_t nsize) {
    heap *h = ud;
    if (nsize == 0) {
        if (p) give_back(h, p, osize);
        return NULL;
    }
    if (p && owns(h, p) && size_class(osize) == size_class(nsize)) return p;
    void *q = carve(h, size_class(nsize));
    if (!q) {
        if (p && !owns(h, p)) return realloc(p, nsize);
        q = malloc(nsize);
        if (!q) return NULL;
    }
    if (p) {
        memcpy(q, p, osize < nsize ? osize : nsize);
        give_back(h, p, osize);
    }
    return q;
}

static int panic(lua_State *L) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n", msg ? msg : "error object is not a string");
    fflush(stderr);
    return 0;
}

/* Warnings as lauxlib's default has them: off until "@on"; a message in
 * pieces (tocont) is one line. ud is the state's on/continuing flags. */
static void warn(void *ud, const char *msg, int tocont) {
    int *st = ud; /* st[0]: on, st[1]: inside a message */
    if (!st[1] && *msg == '@') {
        if (!strcmp(msg, "@on")) st[0] = 1;
        else if (!strcmp(msg, "@off")) st[0] = 0;
        return;
    }
    if (st[0]) {
        if (!st[1]) fputs("Lua warning: ", stderr);
        fputs(msg, stderr);
        if (!tocont) fputs("\n", stderr);
        fflush(stderr);
    }
    st[1] = tocont;
}

typedef struct own_state { heap h; int warn[2]; } own_state;

static lua_State *new_state(own_state *o) {
    memset(o, 0, sizeof *o);
    o->h.base = o->h.cur = malloc(REGION);
    o->h.end = o->h.base ? o->h.base + REGION : NULL;
    lua_State *L = lua_newstate(heap_alloc, &o->h);
    if (!L) {
        free(o->h.base);
        return NULL;
    }
    lua_atpanic(L, panic);
    lua_setwarnf(L, warn, o->warn);
    return L;
}

static void close_state(lua_State *L, own_state *o) {
    lua_close(L);
    free(o->h.base);
}
#else
typedef struct own_state { char unused; } own_state;
static lua_State *new_state(own_state *o) { (void)o; return luaL_newstate(); }
static void close_state(lua_State *L, own_state *o) { (void)o; lua_close(L); }
#endif

/* ---- ready states ----
 *
 * Making a thread's state (its libraries) is most of a thread's start. A
 * caller about to wait in join for a thread that is still running makes
 * one ahead, while it would otherwise sleep, and keeps it for its next
 * thread.new (one per calling state, in its registry); the new thread then
 * only seeds it, sets package.path/cpath and runs the embedder's init. It
 * is a fresh state nobody has run code in: a thread still starts with
 * fresh globals. Made with the globals choice of the state that keeps it;
 * a thread.new that wants the other (concur global removed since) closes
 * it and makes its own as before. */
typedef struct ready {
    own_state own; /* the allocator's region: must not move, so not on a stack */
    lua_State *L;
    int globals;
} ready;

static void drop_ready(ready *r) {
    if (!r) return;
    close_state(r->L, &r->own);
    free(r);
}

static ready *make_ready(int globals) {
    ready *r = malloc(sizeof *r);
    if (!r) return NULL;
    r->L = new_state(&r->own);
    r->globals = globals;
    if (!r->L) {
        free(r);
        return NULL;
    }
    lua_pushcfunction(r->L, open_libs);
    lua_pushboolean(r->L, globals);
    if (lua_pcall(r->L, 1, 0, 0) != LUA_OK) {
        drop_ready(r);
        return NULL;
    }
    lua_settop(r->L, 0);
    return r;
}

/* The calling state's slot for its ready state: a userdata in its
 * registry (made by its first thread.new) whose finalizer closes a ready
 * state never used. globals: what that thread.new found. */
static const char READY_KEY = 'r';
typedef struct ready_slot { ready *r; int globals; } ready_slot;

static int slot_gc(lua_State *L) {
    ready_slot *s = lua_touserdata(L, 1);
    drop_ready(s->r);
    s->r = NULL;
    return 0;
}

/* The slot, or NULL when L has none and make is 0. make may raise (memory). */
static ready_slot *ready_slot_of(lua_State *L, int make) {
    cb_rawgetp(L, LUA_REGISTRYINDEX, &READY_KEY);
    ready_slot *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (s || !make) return s;
    s = cb_newuserdata(L, sizeof *s);
    s->r = NULL;
    s->globals = 0;
    cb_keep_with_gc(L, &READY_KEY, slot_gc);
    return s;
}

/* Called by a join about to wait for a running thread: make L's next
 * thread a state now, unless L has one or the wait is short (deadline,
 * when not < 0, is when it ends). Runs no code in L. */
static void make_ahead(lua_State *L, double deadline) {
    if (deadline >= 0 && deadline - cc_now() < 1e-3) return;
    ready_slot *s = ready_slot_of(L, 0);
    if (s && !s->r) s->r = make_ready(s->globals);
}

static void run(void *arg) {
    cthread *t = arg;
    self = t;
#if CB_CANCEL_HOOK
    running = NULL;
    mask_cancel(0); /* blocked from its start (l_new) */
#endif
    cc_interrupt_set(&t->cancel);
    int outcome = FAILED;
    own_state local, *own = &local;
    lua_State *L;
    if (t->ready) {
        own = &t->ready->own;
        L = t->ready->L;
    } else {
        L = new_state(own);
    }
    if (L) {
        lua_pushcfunction(L, setup_and_run);
        lua_pushlightuserdata(L, t);
        int st = lua_pcall(L, 1, 1, 0);
#if CB_CANCEL_HOOK
        running = NULL;
#endif
        if (st == LUA_OK) {
            outcome = (int)lua_tointeger(L, -1);
        } else {
            if (t->holds_refs) cc_msg_release(t->msg.data, t->msg.len);
            t->holds_refs = 0;
            save_error(L, t, lua_gettop(L));
        }
        close_state(L, own); /* joins what this thread started and did not join */
    } else {
        if (t->holds_refs) cc_msg_release(t->msg.data, t->msg.len);
        t->holds_refs = 0;
        t->msg.len = 0;
    }
    free(t->ready); /* its state is closed */
    t->ready = NULL;
    if (outcome == FAILED && t->cancel) outcome = CANCELLED;
    t->outcome = outcome;
    cc_interrupt_set(NULL);
    cc_done_set(&t->done);
    unref(t);
    self = NULL;
}

/* ---- in the caller ---- */

/* The thread record of the handle at idx; raises on anything else, and on
 * a handle whose finalizer already ran (it let go of the record). */
static cthread *check(lua_State *L, int idx, const char *fname) {
    cthread **box = luaL_testudata(L, idx, MT);
    if (!box) cb_typeerror(L, idx, fname, "thread");
    if (!*box) luaL_error(L, "%s: the thread handle was finalized", fname);
    return *box;
}

/* A metamethod's self (fname "thread:__gc"): a thread handle, possibly
 * finalized (NULL); "bad self" for anything else. */
static cthread **meta_arg(lua_State *L, const char *fname) {
    cthread **box = luaL_testudata(L, 1, MT);
    if (!box) cb_typeerror(L, 1, fname, "thread");
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
        return cb_typeerror(L, 1, "thread.new", "function");
    int nargs = lua_gettop(L);
    push_mt(L); /* before the record: raising here leaks nothing */
    cthread *t = calloc(1, sizeof *t);
    if (!t) return luaL_error(L, "thread.new: out of memory");
    atomic_store(&t->refs, 1);
    t->owner = cc_pid();
    t->outcome = RUNNING;
    t->num = atomic_fetch_add(&counter, 1) + 1;
    cc_done_init(&t->done);
    cthread **box = cb_newuserdata(L, sizeof *box);
    *box = t; /* from here the handle's __gc frees t, whatever happens */
    lua_insert(L, -2);
    lua_setmetatable(L, -2);
    cb_encode(L, 1, nargs, &t->msg, "thread.new", 1);
    t->holds_refs = 1;
    t->path = dup_field(L, "path");
    t->cpath = dup_field(L, "cpath");
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "concur");
    lua_getglobal(L, "concur");
    t->globals = !lua_isnil(L, -1) && lua_rawequal(L, -1, -2);
    lua_pop(L, 3);
    ready_slot *slot = ready_slot_of(L, 1);
    slot->globals = t->globals;
    if (slot->r && slot->r->globals == t->globals) t->ready = slot->r;
    else drop_ready(slot->r); /* made for the other choice */
    slot->r = NULL;
    atomic_store(&t->refs, 2); /* the handle and the thread */
    int r = cc_worker_run(&t->w, &t->gen, run, t, CB_CANCEL_HOOK ? CANCEL_SIG : 0);
    if (r) {
        atomic_store(&t->refs, 1);
        slot->r = t->ready; /* kept for the next try */
        t->ready = NULL;
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
    if (!t->joined) {
        if (!cc_done_get(&t->done)) make_ahead(L, deadline);
        int r = cc_done_wait(&t->done, deadline);
        if (r) return r;
        t->joined = 1;
        if (idx) cb_registry_mark(L, &UNJOINED_KEY, idx, 0);
    }
    /* joined means done, but for one detached at close (not reachable by a
     * live handle: its finalizer ran) */
    return cc_done_get(&t->done) ? 0 : cc_done_wait(&t->done, deadline);
}

static int t_join(lua_State *L) {
    cthread *t = check(L, 1, "thread:join");
    double deadline = cb_opt_deadline(L, 2, "thread:join");
    int r = finish(L, t, 1, deadline, "thread:join");
    if (r) return cb_fail(L, r, "thread:join");
    t->observed = 1;
    if (t->outcome == CANCELLED) {
        lua_pushnil(L);
        lua_pushliteral(L, "cancelled");
        return 2;
    }
    if (!t->holds_refs) return luaL_error(L, "thread:join: the thread failed: out of memory");
    /* the handle stays on the stack: `thread.new(f):join()` holds it
     * nowhere else, and a collection during the decode would free the
     * record being decoded */
    lua_settop(L, 1);
    cc_msg_retain(t->msg.data, t->msg.len); /* join can be called again */
    int n = cb_decode(L, t->msg.data, t->msg.len, "thread:join");
    if (t->outcome == RETURNED) return n;
    if (lua_type(L, 2) == LUA_TSTRING) lua_pushfstring(L, "thread failed: %s", lua_tostring(L, 2));
    else lua_settop(L, 2);
    return lua_error(L);
}

static int t_alive(lua_State *L) {
    cthread *t = check(L, 1, "thread:alive");
    lua_pushboolean(L, t->started && !cc_done_get(&t->done));
    return 1;
}

static int t_cancel(lua_State *L) {
    cancel(check(L, 1, "thread:cancel"));
    return 0;
}

/* Cancel t and give it GRACE seconds (our own waits not interruptible);
 * one that does not stop is detached and left to the process's exit. */
static void stop(cthread *t) {
    int alive = !cc_done_get(&t->done);
    cancel(t);
    _Atomic int *flag = cc_interrupt_get();
    cc_interrupt_set(NULL);
    int r = cc_done_wait(&t->done, cc_deadline(GRACE));
    cc_interrupt_set(flag);
    char note[64];
    if (r == 0) snprintf(note, sizeof note, "thread-%d", t->num);
    else snprintf(note, sizeof note, "thread-%d (did not stop, left running)", t->num);
    t->joined = 1;
    if (alive && cc_stopping()) cc_exit_note(note);
}

/* The finalizer's wait: join, telling stderr when it takes long; a wait
 * interrupted (Ctrl-C at exit, a cancel) cancels the thread instead. */
static void wait_or_stop(cthread *t, int stopping) {
    if (stopping) {
        stop(t);
        return;
    }
    int r = cc_done_wait(&t->done, cc_deadline(NOTICE_AFTER));
    if (r == -ETIMEDOUT) {
        fprintf(stderr, "concur: waiting for thread-%d to finish (Ctrl-C stops it)\n", t->num);
        fflush(stderr);
        r = cc_done_wait(&t->done, CC_FOREVER);
    }
    if (r) {
        stop(t);
        return;
    }
    t->joined = 1;
}

static int report_thunk(lua_State *L) {
    cthread *t = lua_touserdata(L, 1);
    cc_msg_retain(t->msg.data, t->msg.len);
    lua_settop(L, 0);
    int n = cb_decode(L, t->msg.data, t->msg.len, "thread");
    const char *msg = n > 0 ? lua_tostring(L, 1) : NULL;
    fprintf(stderr, "concur: thread-%d failed and was never joined: %s\n", t->num,
            msg ? msg : "(error object is not a string)");
    fflush(stderr);
    return 0;
}

/* A failure nobody joined is not silent: say it once, with the traceback. */
static void report_unobserved(lua_State *L, cthread *t) {
    if (t->observed || !t->joined || t->outcome != FAILED) return;
    t->observed = 1;
    if (!t->holds_refs) {
        fprintf(stderr, "concur: thread-%d failed and was never joined: out of memory\n", t->num);
        return;
    }
    lua_pushcfunction(L, report_thunk);
    lua_pushlightuserdata(L, t);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "concur: thread-%d failed and was never joined (its error: %s)\n", t->num,
                lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
        lua_pop(L, 1);
    }
}

static void finalize(lua_State *L, cthread **box, int stopping) {
    cthread *t = *box;
    if (!t) return;
    *box = NULL;
    if (t->started && t->owner == cc_pid()) {
        if (!t->joined) wait_or_stop(t, stopping || cc_stopping() || cc_interrupted());
        if (cc_done_get(&t->done)) report_unobserved(L, t);
    }
    unref(t);
}

static int t_gc(lua_State *L) {
    finalize(L, meta_arg(L, "thread:__gc"), 0);
    return 0;
}

/* How many unjoined threads this process started from L. */
int cb_thread_unjoined(lua_State *L) {
    int n = 0;
    cb_rawgetp(L, LUA_REGISTRYINDEX, &UNJOINED_KEY);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            cthread **box = luaL_testudata(L, -2, MT);
            if (box && *box && (*box)->owner == cc_pid()) n++;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return n;
}

static int close_one(lua_State *L, void *ud, int stop) {
    cthread **box = ud;
    if (!*box || (*box)->owner != cc_pid()) return 0;
    finalize(L, box, stop);
    return 1;
}

/* Finalize every unjoined thread started from L (end of a forked child,
 * os.exit). */
void cb_thread_close_all(lua_State *L, int stop) {
    cb_registry_drain(L, &UNJOINED_KEY, MT, close_one, stop);
}

static int t_tostring(lua_State *L) {
    cthread *t = *meta_arg(L, "thread:__tostring");
    if (!t) {
        lua_pushliteral(L, "thread (finalized)");
        return 1;
    }
    const char *state = !t->started ? "not started" : !cc_done_get(&t->done) ? "running" : "done";
    lua_pushfstring(L, "thread: %p (%s)", (void *)t, state);
    return 1;
}

static int l_cancelled(lua_State *L) {
    lua_pushboolean(L, cc_interrupted());
    return 1;
}

static int close_all(lua_State *L) {
    int stop = lua_toboolean(L, 1);
    cb_process_close_all(L, stop);
    cb_thread_close_all(L, stop);
    return 0;
}

/* os.exit([code [, close]]): see the file-top comment. A code that is not
 * an integer (NaN, 2^63, "x") is refused before anything is stopped. */
static int os_exit(lua_State *L) {
    int ok = 1;
    lua_Integer code = 0;
    if (lua_isboolean(L, 1)) code = !lua_toboolean(L, 1);
    else if (!lua_isnoneornil(L, 1)) code = cb_tointegerx(L, 1, &ok);
    if (!ok || code < INT_MIN || code > INT_MAX)
        return luaL_error(L, "os.exit: bad argument #1 (an integer code or a boolean expected, got %s)",
                          lua_type(L, 1) == LUA_TNUMBER ? lua_tostring(L, 1) : cb_typeof(L, 1));
    if (code != 0) cc_set_stopping(1);
    if (self || !lua_toboolean(L, 2)) {
        lua_pushcfunction(L, close_all);
        lua_pushboolean(L, code != 0);
        if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1);
    }
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* Replace os.exit in this state once (the original is the upvalue). */
static void wrap_os_exit(lua_State *L) {
    cb_rawgetp(L, LUA_REGISTRYINDEX, &OSEXIT_KEY);
    int done = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (done) return;
    lua_getglobal(L, "os");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "exit");
        if (lua_iscfunction(L, -1)) {
            lua_pushcclosure(L, os_exit, 1);
            lua_setfield(L, -2, "exit");
            lua_pushboolean(L, 1);
            cb_rawsetp(L, LUA_REGISTRYINDEX, &OSEXIT_KEY);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static int l_id(lua_State *L) {
    cb_pushinteger(L, gettid());
    return 1;
}

static const luaL_Reg methods[] = {
    {"join", t_join}, {"alive", t_alive}, {"cancel", t_cancel}, {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"new", l_new}, {"id", l_id}, {"cancelled", l_cancelled}, {NULL, NULL},
};

/* The handle metatable, made by the first thread.new in a state (most
 * thread states start no thread: their open need not pay for it). */
static void push_mt(lua_State *L) {
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
}

int cb_open_thread(lua_State *L) {
    wrap_os_exit(L);
    lua_newtable(L);
    cb_rawsetp(L, LUA_REGISTRYINDEX, &UNJOINED_KEY);
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
