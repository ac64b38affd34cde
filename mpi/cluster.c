/*
 * cluster.c -- concur.cluster: the same script on every rank of an MPI job
 * (Open MPI, launched by mpirun or srun). SPMD: rank(), size(), send(v, to,
 * [tag]), recv([from], [tag], [timeout]), bcast, gather, allgather, reduce,
 * barrier. Values are codec values (bindings/codec.c); shared objects are
 * refused, they live in one machine's memory.
 *
 * Why a separate shared object. The core library and build/concur must not
 * link MPI, so this module is its own .so (build/lua5.4/concur/cluster.so,
 * `require "concur.cluster"`). It does not link concur either: it finds the
 * codec in whichever concur is already loaded (the host executable, which
 * exports its symbols, or concur.so, which a stock interpreter opened
 * RTLD_LOCAL) with dladdr on one of concur's C functions and dlsym. So one
 * process has one arena and one codec, whatever loaded it.
 *
 * Threads. MPI is initialised once per process (MPI_THREAD_MULTIPLE asked
 * for). Every MPI call is made under one process-wide mutex, and no call that
 * can wait is made under it: sends are MPI_Isend, receives are MPI_Improbe
 * then MPI_Mrecv of the matched message (eager or rendezvous, it is already
 * ours), collectives are the non-blocking forms; the waits poll with a
 * backoff (spin ~50 us, then yield, then sleep 20 us doubling to 1 ms), which
 * costs at most 1 ms of latency after a wait of more than a few ms, and lets
 * thread:cancel interrupt any wait. A send interrupted before MPI is done
 * with it leaves its request and buffer on a pending list; they are freed
 * when it completes (or at MPI_Finalize).
 *
 * Messages of any size. MPI counts are ints, so a message longer than the
 * chunk size (1 GiB; CONCUR_CLUSTER_CHUNK changes it, for tests) is sent as
 * a 16-byte descriptor {0xFFFFFFFF, 0, total} on the user's tag, then its
 * chunks on a private duplicate communicator. A codec message always starts
 * with a zero object count, so the descriptor cannot be mistaken for one.
 * Sender and receiver post all the chunk requests in the same critical
 * section as the descriptor, so MPI's ordering per (source, communicator)
 * pairs every descriptor with its own chunks even with many threads.
 *
 * Fork. A process.spawn child of a rank is not an MPI process: it may call
 * rank() and size() (remembered), everything else is refused by pid.
 *
 * End of job. The module stays loaded (RTLD_NODELETE) and registers an
 * on_exit handler in the process that initialised MPI: exit status 0 (and
 * the host not stopping after an uncaught error or a signal) calls
 * MPI_Finalize; anything else calls MPI_Abort, so one failing rank ends the
 * whole job at once instead of leaving the others waiting on it.
 */
#include <mpi.h>

#include <dlfcn.h>
#include <stdarg.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../bindings/compat.h"
#ifdef CB_LUAJIT
#include <luajit.h>
#endif
#include "../include/concur.h"
#include "../runtime/cc.h"
#include "cluster_pool_lua.h" /* generated from lib/concur/cluster_pool.lua */

#define MOD "concur.cluster"
#define BIG_MARK 0xFFFFFFFFu
#define MAX_DEPTH 200

/* ---- concur's functions, found at run time (see the top) ---- */
static struct {
    void (*encode)(lua_State *L, int first, int n, cc_buf *out, const char *fname, int argbase);
    int (*decode)(lua_State *L, const void *msg, size_t len, const char *fname);
    cc_buf *(*buf_take_at)(lua_State *L, int which, const void *frame);
    void (*buf_give)(lua_State *L, cc_buf *b);
    void (*msg_release)(const void *msg, size_t len);
    cc_obj *(*test)(lua_State *L, int idx);
    const char *(*type_name)(enum cc_type t);
    int (*interrupted)(void);
    int (*buf_reserve)(cc_buf *b, size_t need);
    pid_t (*pid)(void); /* cached getpid, refreshed in forked children */
    int (*stopping)(void);
    double (*now)(void);
    double (*deadline)(double timeout);
} api;

/* ---- process-wide MPI state ---- */
static pthread_mutex_t mpi_lock = PTHREAD_MUTEX_INITIALIZER;
static int ready;                /* MPI initialised by us and handshake passed */
static const char *init_error;   /* the handshake's refusal, repeated to later requires */
static char init_error_buf[512];
static pid_t init_pid;
static int my_rank, my_size, threads_provided;
static MPI_Comm comm_p2p, comm_p2p_chunks, comm_coll;
static MPI_Comm comm_pool, comm_pool_chunks; /* the pool's own channel */
static int serving;                          /* rank 0 of a pool-serve job */
static size_t chunk = (size_t)1 << 30;
static char my_host[MPI_MAX_PROCESSOR_NAME + 1];

typedef struct pending {
    struct pending *next;
    int n;
    MPI_Request *reqs;
    void *buf, *buf2;
} pending;
static pending *pendings;

#define LOCK() pthread_mutex_lock(&mpi_lock)
#define UNLOCK() pthread_mutex_unlock(&mpi_lock)

/* ------------------------------------------------------------ helpers */

/* printf formats (lua_pushfstring has no %lld or %zu); messages are short */
static int errorf(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int errorf(lua_State *L, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lua_pushstring(L, msg);
    return lua_error(L);
}

static void mpi_check(lua_State *L, int rc, const char *fname, const char *what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, msg, &n);
    msg[n < MPI_MAX_ERROR_STRING ? n : MPI_MAX_ERROR_STRING - 1] = 0;
    errorf(L, "%s: %s failed: %s", fname, what, msg);
}

/* Communication belongs to the process that initialised MPI. */
static void check_usable(lua_State *L, const char *fname) {
    if (api.pid() != init_pid)
        errorf(L,
               "%s: not available in a forked child (pid %d) of rank %d: MPI belongs to the "
               "rank's own process; send results back with the child's return value",
               fname, (int)getpid(), my_rank);
}

/* An integer argument in [lo, hi] (integral floats accepted; NaN, inf,
 * 2^63 and fractions refused, naming the argument). */
static int check_range(lua_State *L, int idx, int arg, const char *fname, const char *what,
                       long long lo, long long hi) {
    int ok = 0;
    lua_Integer v = 0;
    if (lua_type(L, idx) == LUA_TNUMBER) v = cb_tointegerx(L, idx, &ok);
    if (!ok)
        return errorf(L, "%s: bad argument #%d (%s: integer expected, got %s)", fname, arg, what,
                      lua_type(L, idx) == LUA_TNUMBER ? "non-integer number" : luaL_typename(L, idx));
    if (v < lo || v > hi) {
        return errorf(L, "%s: bad argument #%d (%s %lld out of range %lld..%lld)", fname, arg, what,
                      (long long)v, lo, hi);
    }
    return (int)v;
}

static int max_tag = 32767; /* MPI_TAG_UB, read at start */

static int tag_ub(void) {
    return max_tag;
}

/* Optional timeout -> absolute deadline (CC_FOREVER for nil / math.huge). */
static double opt_deadline(lua_State *L, int idx, int arg, const char *fname) {
    if (lua_isnoneornil(L, idx)) return CC_FOREVER;
    if (lua_type(L, idx) != LUA_TNUMBER)
        return errorf(L, "%s: bad argument #%d (timeout: number expected, got %s)", fname, arg,
                      luaL_typename(L, idx));
    lua_Number t = lua_tonumber(L, idx);
    if (t != t || t < 0)
        return errorf(L, "%s: bad argument #%d (timeout must be a non-negative number)", fname, arg);
    return api.deadline(t);
}

/* One step of a polling wait: spin, then yield, then sleep 20 us doubling
 * to 1 ms. 0, or -EINTR when the thread was cancelled. */
typedef struct backoff {
    double start;
    long sleep_ns;
} backoff;

static int backoff_step(backoff *b) {
    if (api.interrupted && api.interrupted()) return -EINTR;
    double now = api.now();
    if (b->start == 0) b->start = now;
    double waited = now - b->start;
    if (waited < 50e-6) return 0;
    if (waited < 2e-3) {
        sched_yield();
        return 0;
    }
    if (b->sleep_ns < 20000) b->sleep_ns = 20000;
    struct timespec ts = {0, b->sleep_ns};
    nanosleep(&ts, NULL);
    if (b->sleep_ns < 1000000) b->sleep_ns *= 2;
    return 0;
}

static void free_done_pendings(void) { /* under mpi_lock */
    pending **pp = &pendings;
    while (*pp) {
        pending *p = *pp;
        int done = 0;
        MPI_Testall(p->n, p->reqs, &done, MPI_STATUSES_IGNORE);
        if (done) {
            *pp = p->next;
            free(p->reqs);
            free(p->buf);
            free(p->buf2);
            free(p);
        } else {
            pp = &p->next;
        }
    }
}

/* Wait for n requests; on cancellation, hand them (and buf, buf2, malloc'd
 * or NULL) to the pending list and raise "interrupted". On success the
 * buffers are left to the caller. */
static void wait_all2(lua_State *L, int n, MPI_Request *reqs, void *buf, void *buf2,
                      const char *fname) {
    backoff b = {0, 0};
    for (;;) {
        int done = 0;
        LOCK();
        int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
        UNLOCK();
        mpi_check(L, rc, fname, "MPI_Testall");
        if (done) return;
        if (backoff_step(&b) == -EINTR) {
            pending *p = malloc(sizeof *p);
            MPI_Request *copy = malloc((size_t)n * sizeof *copy);
            if (p && copy) {
                memcpy(copy, reqs, (size_t)n * sizeof *copy);
                p->n = n;
                p->reqs = copy;
                p->buf = buf;
                p->buf2 = buf2;
                LOCK();
                p->next = pendings;
                pendings = p;
                UNLOCK();
            } /* else: leak the requests rather than free memory MPI still uses */
            errorf(L, "%s: interrupted", fname);
        }
    }
}

static void wait_all(lua_State *L, int n, MPI_Request *reqs, void *buf, const char *fname) {
    wait_all2(L, n, reqs, buf, NULL, fname);
}

/* ------------------------------------------------- bytes over MPI */

/* Send len bytes at data (a malloc'd block the caller gives up if this
 * raises: *owned is set to NULL then) to dest on comm / its chunk comm. */
static void send_bytes(lua_State *L, MPI_Comm comm, MPI_Comm chunks, int dest, int tag,
                       char **owned, size_t len, const char *fname) {
    char *data = *owned;
    if (len <= chunk) {
        MPI_Request r;
        LOCK();
        free_done_pendings();
        int rc = MPI_Isend(data, (int)len, MPI_BYTE, dest, tag, comm, &r);
        UNLOCK();
        mpi_check(L, rc, fname, "MPI_Isend");
        *owned = NULL; /* the pending list takes it if we are interrupted */
        wait_all(L, 1, &r, data, fname);
        *owned = data;
        return;
    }
    size_t nchunks = (len + chunk - 1) / chunk;
    if (nchunks > 1u << 20) errorf(L, "%s: message of %zu bytes is too long", fname, len);
    MPI_Request *reqs = malloc((nchunks + 1) * sizeof *reqs);
    if (!reqs) errorf(L, "%s: out of memory", fname);
    uint64_t desc[2];
    uint64_t *d = malloc(sizeof desc);
    if (!d) {
        free(reqs);
        errorf(L, "%s: out of memory", fname);
    }
    uint32_t mark = BIG_MARK;
    memset(d, 0, sizeof desc);
    memcpy(d, &mark, sizeof mark);
    d[1] = len;
    int rc;
    size_t i = 0;
    LOCK();
    free_done_pendings();
    rc = MPI_Isend(d, (int)sizeof desc, MPI_BYTE, dest, tag, comm, &reqs[0]);
    for (i = 0; rc == MPI_SUCCESS && i < nchunks; i++) {
        size_t off = i * chunk, n = len - off < chunk ? len - off : chunk;
        rc = MPI_Isend(data + off, (int)n, MPI_BYTE, dest, 0, chunks, &reqs[i + 1]);
    }
    UNLOCK();
    if (rc != MPI_SUCCESS) {
        /* nothing sensible can follow a half-posted message */
        fprintf(stderr, "%s: MPI_Isend failed in the middle of a message; aborting the job\n", fname);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    *owned = NULL;
    wait_all2(L, (int)nchunks + 1, reqs, data, d, fname);
    *owned = data;
    free(d);
    free(reqs);
}

/* A received message: a userdata box owning malloc'd bytes, so a decode
 * that raises frees them through __gc. */
typedef struct rbox {
    char *p;
    size_t len;
} rbox;

static int rbox_gc(lua_State *L) {
    rbox *b = lua_touserdata(L, 1);
    free(b->p);
    b->p = NULL;
    return 0;
}

static rbox *push_rbox(lua_State *L) {
    rbox *b = lua_newuserdata(L, sizeof *b);
    b->p = NULL;
    b->len = 0;
    if (luaL_newmetatable(L, "concur.cluster.rbox")) {
        lua_pushcfunction(L, rbox_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return b;
}

static void decode_box(lua_State *L, const char *fname);

/* Receive one message (from, tag may be MPI_ANY_*) and decode it: pushes
 * its value and returns 1 with *st filled, or returns 0 (nothing pushed)
 * when the deadline passes. A small message is taken into the per-state
 * scratch buffer 1 under the lock it was matched in; a descriptor's chunk
 * receives are posted in that same critical section (see the top). */
static int recv_value(lua_State *L, MPI_Comm comm, MPI_Comm chunks, int from, int tag,
                      double deadline, MPI_Status *st, const char *fname) {
    /* (on comm_pool, an empty message is rank 0's "leave": returns 2) */
    backoff bo = {0, 0};
    const void *frame = __builtin_frame_address(0);
    for (;;) {
        int found = 0;
        MPI_Message m;
        LOCK();
        int rc = MPI_Improbe(from, tag, comm, &found, &m, st);
        if (rc != MPI_SUCCESS || !found) {
            UNLOCK();
            mpi_check(L, rc, fname, "MPI_Improbe");
            if (deadline != CC_FOREVER && api.now() >= deadline) return 0;
            if (backoff_step(&bo) == -EINTR) errorf(L, "%s: interrupted", fname);
            continue;
        }
        MPI_Count n = 0;
        MPI_Get_elements_x(st, MPI_BYTE, &n);
        if (n == 0 && comm == comm_pool) {
            char tiny[1];
            MPI_Mrecv(tiny, 0, MPI_BYTE, &m, MPI_STATUS_IGNORE);
            UNLOCK();
            return 2;
        }
        cc_buf *b = api.buf_take_at(L, 1, frame);
        if (n < 0 || n > (MPI_Count)chunk || api.buf_reserve(b, n > 0 ? (size_t)n : 1) != 0) {
            char tiny[16]; /* take it off anyway: MPI truncates it */
            MPI_Mrecv(tiny, 0, MPI_BYTE, &m, MPI_STATUS_IGNORE);
            UNLOCK();
            api.buf_give(L, b);
            errorf(L, "%s: cannot take a message of %lld bytes (%s)", fname, (long long)n,
                   n > (MPI_Count)chunk ? "longer than a chunk: corrupt" : "out of memory");
        }
        rc = MPI_Mrecv(b->data, (int)n, MPI_BYTE, &m, MPI_STATUS_IGNORE);
        uint32_t mark = 0;
        if (rc == MPI_SUCCESS && n == 16) memcpy(&mark, b->data, sizeof mark);
        if (rc != MPI_SUCCESS || mark != BIG_MARK) {
            UNLOCK();
            if (rc != MPI_SUCCESS) api.buf_give(L, b);
            mpi_check(L, rc, fname, "MPI_Mrecv");
            b->len = (size_t)n;
            if (b->len < 8 || cc_msg_nrefs(b->data) != 0) {
                api.buf_give(L, b);
                errorf(L, "%s: corrupt message (%zu bytes, not a concur value)", fname, (size_t)n);
            }
            /* decode may run require or a finalizer that uses cluster: the
             * scratch buffer's frame rule keeps a nested call off it */
            int k = api.decode(L, b->data, b->len, fname);
            api.buf_give(L, b);
            if (k != 1) errorf(L, "%s: corrupt message (%d values, expected 1)", fname, k);
            return 1;
        }
        uint64_t total;
        memcpy(&total, b->data + 8, sizeof total);
        size_t nchunks = (total + chunk - 1) / chunk;
        char *data = total && total <= ((uint64_t)1 << 40) ? malloc(total) : NULL;
        MPI_Request *reqs = data ? malloc(nchunks * sizeof *reqs) : NULL;
        int src = st->MPI_SOURCE;
        for (size_t i = 0; rc == MPI_SUCCESS && reqs && i < nchunks; i++) {
            size_t off = i * chunk, len = total - off < chunk ? total - off : chunk;
            rc = MPI_Irecv(data + off, (int)len, MPI_BYTE, src, 0, chunks, &reqs[i]);
        }
        UNLOCK();
        api.buf_give(L, b);
        if (!reqs || rc != MPI_SUCCESS) {
            /* the chunks would be left for the next descriptor from src */
            fprintf(stderr, "%s: cannot receive a message of %llu bytes from rank %d (%s); aborting the job\n",
                    fname, (unsigned long long)total, src, reqs ? "MPI_Irecv failed" : "out of memory");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        rbox *box = push_rbox(L); /* owns data once the wait is over */
        wait_all(L, (int)nchunks, reqs, data, fname);
        free(reqs);
        box->p = data;
        box->len = total;
        decode_box(L, fname);
        return 1;
    }
}

/* ------------------------------------------------- values <-> bytes */

/* The path is built as a Lua string stack, not a luaL_Buffer (which must
 * stay balanced on the stack): segments are pushed while descending. */
static int shared_path(lua_State *L, int idx, int seen, int depth) {
    idx = cb_absindex(L, idx);
    if (depth > MAX_DEPTH) return 0;
    int t = lua_type(L, idx);
    if (t == LUA_TUSERDATA) {
        if (api.test(L, idx)) {
            lua_pushliteral(L, "");
            return 1;
        }
        return 0;
    }
    if (t != LUA_TTABLE && t != LUA_TFUNCTION) return 0;
    lua_pushvalue(L, idx);
    lua_rawget(L, seen);
    int was = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (was) return 0;
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    luaL_checkstack(L, 8, "cluster: value too deep");
    if (t == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            int k = lua_gettop(L) - 1;
            int where = shared_path(L, k, seen, depth + 1) ? 1 : shared_path(L, k + 1, seen, depth + 1) ? 2 : 0;
            if (where) {
                /* stack: key value rest */
                const char *rest = lua_tostring(L, -1);
                if (where == 1)
                    lua_pushfstring(L, "[<key %s>]%s", luaL_typename(L, k), rest);
                else if (lua_type(L, k) == LUA_TSTRING)
                    lua_pushfstring(L, ".%s%s", lua_tostring(L, k), rest);
                else if (lua_type(L, k) == LUA_TNUMBER) {
                    lua_pushvalue(L, k);
                    const char *ks = lua_tostring(L, -1);
                    lua_pushfstring(L, "[%s]%s", ks, rest);
                    lua_remove(L, -2);
                } else
                    lua_pushfstring(L, "[<%s key>]%s", luaL_typename(L, k), rest);
                lua_replace(L, k);
                lua_settop(L, k);
                return 1;
            }
            lua_pop(L, 1);
        }
        if (lua_getmetatable(L, idx)) {
            if (shared_path(L, -1, seen, depth + 1)) {
                lua_pushfstring(L, "<metatable>%s", lua_tostring(L, -1));
                lua_replace(L, -3);
                lua_pop(L, 1);
                return 1;
            }
            lua_pop(L, 1);
        }
        return 0;
    }
    for (int i = 1;; i++) {
        const char *name = lua_getupvalue(L, idx, i);
        if (!name) break;
        if (shared_path(L, -1, seen, depth + 1)) {
            lua_pushfstring(L, "<upvalue %s>%s", *name ? name : "?", lua_tostring(L, -1));
            lua_replace(L, -3);
            lua_pop(L, 1);
            return 1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* Encode the value at idx into a malloc'd block (caller frees); refuses
 * shared objects naming where they are. */
static char *encode_value(lua_State *L, int idx, int arg, size_t *len, const char *fname) {
    idx = cb_absindex(L, idx);
    lua_pushvalue(L, idx);
    cc_buf *b = api.buf_take_at(L, 0, __builtin_frame_address(0));
    api.encode(L, lua_gettop(L), 1, b, fname, arg);
    lua_pop(L, 1);
    if (cc_msg_nrefs(b->data) != 0) {
        api.msg_release(b->data, b->len);
        api.buf_give(L, b);
        lua_newtable(L);
        const char *where = "";
        if (shared_path(L, idx, lua_gettop(L), 0)) where = lua_tostring(L, -1);
        errorf(L,
            "%s: cannot send a shared object to another rank: shared objects (queues, locks, "
            "shared lists, dicts, arrays, pipes) live in one machine's memory (argument %d, at "
            "value%s)",
            fname, arg, where);
        return NULL;
    }
    char *p = malloc(b->len ? b->len : 1);
    if (!p) {
        api.buf_give(L, b);
        errorf(L, "%s: out of memory", fname);
    }
    memcpy(p, b->data, b->len);
    *len = b->len;
    api.buf_give(L, b);
    return p;
}

/* Decode the rbox on top (popped): pushes one value. */
static void decode_box(lua_State *L, const char *fname) {
    rbox *box = lua_touserdata(L, -1);
    if (box->len < 8 || cc_msg_nrefs(box->p) != 0)
        errorf(L, "%s: corrupt message (%zu bytes, not a concur value)", fname, box->len);
    int n = api.decode(L, box->p, box->len, fname);
    if (n != 1) errorf(L, "%s: corrupt message (%d values, expected 1)", fname, n);
    lua_remove(L, -2);
}

/* Box a malloc'd block so an error frees it. */
static char **own(lua_State *L, char *p, size_t len) {
    rbox *b = push_rbox(L);
    b->p = p;
    b->len = len;
    return &b->p;
}

/* ------------------------------------------------------------ the API */

static int l_rank(lua_State *L) {
    lua_pushinteger(L, my_rank);
    return 1;
}

static int l_size(lua_State *L) {
    lua_pushinteger(L, my_size);
    return 1;
}

static int l_hostname(lua_State *L) {
    lua_pushstring(L, my_host);
    return 1;
}

/* Encode argument 1 into the per-state scratch buffer 0; refuses shared
 * objects naming where they are. */
static cc_buf *encode_scratch(lua_State *L, const void *frame, const char *fname) {
    cc_buf *b = api.buf_take_at(L, 0, frame);
    api.encode(L, 1, 1, b, fname, 1);
    if (cc_msg_nrefs(b->data) != 0) {
        api.msg_release(b->data, b->len);
        api.buf_give(L, b);
        lua_newtable(L);
        const char *where = shared_path(L, 1, lua_gettop(L), 0) ? lua_tostring(L, -1) : "";
        errorf(L,
               "%s: cannot send a shared object to another rank: shared objects (queues, locks, "
               "shared lists, dicts, arrays, pipes) live in one machine's memory (argument 1, at "
               "value%s)",
               fname, where);
    }
    return b;
}

/* cluster.send(v, to, [tag]). The hot path sends straight from the scratch
 * buffer: a small message is usually done at the first test. If the wait is
 * interrupted, the buffer's memory goes to the pending list (the scratch
 * buffer starts a new block next time). */
static int send_on(lua_State *L, MPI_Comm comm, MPI_Comm chunks, const char *fname) {
    check_usable(L, fname);
    int to = check_range(L, 2, 2, fname, "destination rank", 0, my_size - 1);
    int tag = lua_isnoneornil(L, 3) ? 0 : check_range(L, 3, 3, fname, "tag", 0, tag_ub());
    lua_settop(L, 1);
    cc_buf *b = encode_scratch(L, __builtin_frame_address(0), fname);
    if (b->len > chunk) { /* a copy the long path owns */
        char *p = malloc(b->len);
        if (!p) errorf(L, "%s: out of memory", fname);
        memcpy(p, b->data, b->len);
        size_t len = b->len;
        api.buf_give(L, b);
        send_bytes(L, comm, chunks, to, tag, own(L, p, len), len, fname);
        return 0;
    }
    MPI_Request r;
    int done = 0;
    LOCK();
    if (pendings) free_done_pendings();
    int rc = MPI_Isend(b->data, (int)b->len, MPI_BYTE, to, tag, comm, &r);
    if (rc == MPI_SUCCESS) rc = MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    UNLOCK();
    if (rc != MPI_SUCCESS) {
        api.buf_give(L, b);
        mpi_check(L, rc, fname, "MPI_Isend");
    }
    if (!done) {
        char *data = b->data;
        b->data = NULL; /* detached: MPI may still read it */
        b->cap = b->len = 0;
        api.buf_give(L, b);
        wait_all(L, 1, &r, data, fname);
        free(data);
        return 0;
    }
    api.buf_give(L, b);
    return 0;
}

static int l_send(lua_State *L) {
    return send_on(L, comm_p2p, comm_p2p_chunks, "cluster.send");
}

/* The pool's channel (lib/concur/cluster_pool.lua): psend(v, rank);
 * precv([from], [timeout]) -> v, or nil on timeout or when rank 0 left */
static int l_psend(lua_State *L) {
    lua_settop(L, 2);
    return send_on(L, comm_pool, comm_pool_chunks, "pool (mpi)");
}

static int l_precv(lua_State *L) {
    const char *fname = "pool (mpi)";
    check_usable(L, fname);
    int from = lua_isnoneornil(L, 1) ? MPI_ANY_SOURCE
                                     : check_range(L, 1, 1, fname, "source rank", 0, my_size - 1);
    double deadline = opt_deadline(L, 2, 2, fname);
    MPI_Status st;
    if (recv_value(L, comm_pool, comm_pool_chunks, from, 0, deadline, &st, fname) != 1) lua_pushnil(L);
    return 1;
}

/* serving(true): at a clean exit, rank 0 tells every other rank to leave */
static int l_serving(lua_State *L) {
    serving = lua_toboolean(L, 1);
    return 0;
}

/* cluster.recv([from], [tag], [timeout]) -> v, from, tag | nil, "timeout" */
static int l_recv(lua_State *L) {
    const char *fname = "cluster.recv";
    check_usable(L, fname);
    int from = lua_isnoneornil(L, 1) ? MPI_ANY_SOURCE
                                     : check_range(L, 1, 1, fname, "source rank", 0, my_size - 1);
    int tag = lua_isnoneornil(L, 2) ? MPI_ANY_TAG : check_range(L, 2, 2, fname, "tag", 0, tag_ub());
    double deadline = opt_deadline(L, 3, 3, fname);
    MPI_Status st;
    if (recv_value(L, comm_p2p, comm_p2p_chunks, from, tag, deadline, &st, fname) != 1) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    lua_pushinteger(L, st.MPI_SOURCE);
    lua_pushinteger(L, st.MPI_TAG);
    return 3;
}

/* root's bytes to every rank: length, then chunks, by MPI_Ibcast */
static void bcast_bytes(lua_State *L, int root, char **owned, size_t *len, const char *fname) {
    uint64_t n = *len;
    MPI_Request r;
    LOCK();
    int rc = MPI_Ibcast(&n, 1, MPI_UINT64_T, root, comm_coll, &r);
    UNLOCK();
    mpi_check(L, rc, fname, "MPI_Ibcast");
    wait_all(L, 1, &r, NULL, fname);
    if (my_rank != root) {
        if (n > ((uint64_t)1 << 40) || !(*owned = malloc(n ? n : 1)))
            errorf(L, "%s: out of memory for %llu bytes", fname, (unsigned long long)n);
        *len = n;
    }
    for (size_t off = 0; off < n; off += chunk) {
        size_t k = n - off < chunk ? n - off : chunk;
        LOCK();
        rc = MPI_Ibcast(*owned + off, (int)k, MPI_BYTE, root, comm_coll, &r);
        UNLOCK();
        mpi_check(L, rc, fname, "MPI_Ibcast");
        char *p = *owned;
        *owned = NULL; /* the pending list's if we are interrupted */
        wait_all(L, 1, &r, p, fname);
        *owned = p;
    }
}

static int check_root(lua_State *L, int idx, int arg, const char *fname) {
    if (lua_isnoneornil(L, idx)) return 0;
    return check_range(L, idx, arg, fname, "root rank", 0, my_size - 1);
}

/* cluster.bcast(v, root) -> root's v on every rank */
static int l_bcast(lua_State *L) {
    const char *fname = "cluster.bcast";
    check_usable(L, fname);
    int root = check_root(L, 2, 2, fname);
    size_t len = 0;
    char *p = my_rank == root ? encode_value(L, 1, 1, &len, fname) : NULL;
    char **owned = own(L, p, len);
    bcast_bytes(L, root, owned, &len, fname);
    ((rbox *)lua_touserdata(L, -1))->len = len;
    decode_box(L, fname);
    return 1;
}

/* Every rank's value at idx, as a table on root (pushed there; nothing
 * pushed elsewhere). Point-to-point on the collective communicator. */
static int gather_to(lua_State *L, int idx, int root, const char *fname) {
    size_t len;
    char *p = encode_value(L, idx, 1, &len, fname);
    char **owned = own(L, p, len);
    if (my_rank != root) {
        send_bytes(L, comm_coll, comm_coll, root, 1, owned, len, fname);
        lua_pop(L, 1);
        return 0;
    }
    lua_createtable(L, my_size, 0);
    int t = lua_gettop(L);
    for (int r = 0; r < my_size; r++) {
        if (r == root) {
            lua_pushvalue(L, t - 1);
        } else {
            MPI_Status st;
            recv_value(L, comm_coll, comm_coll, r, 1, CC_FOREVER, &st, fname);
        }
        if (r == root) decode_box(L, fname);
        lua_rawseti(L, t, r + 1);
    }
    lua_remove(L, t - 1);
    return 1;
}

/* cluster.gather(v, root) -> {v0, v1, ...} on root (t[r+1] is rank r's), nil elsewhere */
static int l_gather(lua_State *L) {
    const char *fname = "cluster.gather";
    check_usable(L, fname);
    int root = check_root(L, 2, 2, fname);
    lua_settop(L, 1);
    if (!gather_to(L, 1, root, fname)) lua_pushnil(L);
    return 1;
}

/* cluster.allgather(v) -> {v0, v1, ...} on every rank */
static int l_allgather(lua_State *L) {
    const char *fname = "cluster.allgather";
    check_usable(L, fname);
    lua_settop(L, 1);
    size_t len = 0;
    char *p = NULL;
    if (gather_to(L, 1, 0, fname)) p = encode_value(L, -1, 1, &len, fname);
    char **owned = own(L, p, len);
    bcast_bytes(L, 0, owned, &len, fname);
    ((rbox *)lua_touserdata(L, -1))->len = len;
    decode_box(L, fname);
    return 1;
}

/* cluster.reduce(v, fn, root) -> fn(...fn(fn(v0, v1), v2)..., vn-1) on root, nil elsewhere */
static int l_reduce(lua_State *L) {
    const char *fname = "cluster.reduce";
    check_usable(L, fname);
    if (lua_type(L, 2) != LUA_TFUNCTION)
        return errorf(L, "%s: bad argument #2 (function expected, got %s)", fname, luaL_typename(L, 2));
    int root = check_root(L, 3, 3, fname);
    lua_settop(L, 2);
    if (!gather_to(L, 1, root, fname)) {
        lua_pushnil(L);
        return 1;
    }
    int t = lua_gettop(L);
    lua_rawgeti(L, t, 1);
    for (int r = 1; r < my_size; r++) {
        lua_pushvalue(L, 2);
        lua_insert(L, -2);
        lua_rawgeti(L, t, r + 1);
        lua_call(L, 2, 1);
    }
    return 1;
}

/* cluster.barrier() */
static int l_barrier(lua_State *L) {
    const char *fname = "cluster.barrier";
    check_usable(L, fname);
    MPI_Request r;
    LOCK();
    int rc = MPI_Ibarrier(comm_coll, &r);
    UNLOCK();
    mpi_check(L, rc, fname, "MPI_Ibarrier");
    wait_all(L, 1, &r, NULL, fname);
    return 0;
}

/* cluster.abort([code]): end the whole job now (MPI_Abort). */
static int l_abort(lua_State *L) {
    int code = (int)luaL_optinteger(L, 1, 1);
    fflush(NULL);
    MPI_Abort(MPI_COMM_WORLD, code);
    return 0;
}

/* cluster.info() -> {rank, size, host, thread_level, chunk} */
static int l_info(lua_State *L) {
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, my_rank);
    lua_setfield(L, -2, "rank");
    lua_pushinteger(L, my_size);
    lua_setfield(L, -2, "size");
    lua_pushstring(L, my_host);
    lua_setfield(L, -2, "host");
    lua_pushstring(L, threads_provided == MPI_THREAD_MULTIPLE ? "multiple"
                      : threads_provided == MPI_THREAD_SERIALIZED ? "serialized"
                      : threads_provided == MPI_THREAD_FUNNELED  ? "funneled"
                                                                  : "single");
    lua_setfield(L, -2, "threads");
    lua_pushnumber(L, (lua_Number)chunk);
    lua_setfield(L, -2, "chunk");
    char ver[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    MPI_Get_library_version(ver, &n);
    char *nl = strchr(ver, ',');
    if (nl) *nl = 0;
    lua_pushstring(L, ver);
    lua_setfield(L, -2, "mpi");
    return 1;
}

/* ------------------------------------------------------------ start */

static void at_exit(int status, void *arg) {
    (void)arg;
    if (getpid() != init_pid) return;
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin) return;
    if (status == 0 && !(api.stopping && api.stopping())) {
        pthread_mutex_lock(&mpi_lock);
        if (serving && my_rank == 0) { /* the workers' "leave" */
            char none = 0;
            for (int r = 1; r < my_size; r++) MPI_Send(&none, 0, MPI_BYTE, r, 0, comm_pool);
        }
        for (pending *p = pendings; p; p = p->next)
            for (int i = 0; i < p->n; i++)
                if (p->reqs[i] != MPI_REQUEST_NULL) MPI_Request_free(&p->reqs[i]);
        MPI_Finalize();
        pthread_mutex_unlock(&mpi_lock);
    } else {
        fflush(NULL);
        MPI_Abort(MPI_COMM_WORLD, status ? status : 1);
    }
}

static void *sym(void *h, const char *name, int *missing) {
    void *p = dlsym(h, name);
    if (!p) *missing = 1;
    return p;
}

/* Find concur's codec in the concur already loaded (see the top). */
static const char *find_api(lua_State *L) {
    if (api.encode) return NULL;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "concur");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        lua_pop(L, 1);
        return "require \"concur\" failed";
    }
    lua_getfield(L, -1, "encode");
    lua_CFunction f = lua_tocfunction(L, -1);
    lua_pop(L, 2);
    if (!f) return "concur.encode is not a C function";
    Dl_info info;
    void *h = NULL;
    if (dladdr((void *)(intptr_t)f, &info) && info.dli_fname)
        h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (!h || !dlsym(h, "cb_encode")) h = dlopen(NULL, RTLD_NOW);
    int missing = 0;
    typeof(api) a;
#define SYM(field, name)                                                                         \
    do {                                                                                         \
        void *p_ = sym(h, name, &missing);                                                       \
        memcpy(&a.field, &p_, sizeof p_);                                                        \
    } while (0)
    SYM(encode, "cb_encode");
    SYM(decode, "cb_decode");
    SYM(buf_take_at, "cb_buf_take_at");
    SYM(buf_give, "cb_buf_give");
    SYM(msg_release, "cc_msg_release");
    SYM(test, "cb_test");
    SYM(type_name, "cb_typename");
    SYM(interrupted, "cc_interrupted");
    SYM(buf_reserve, "cc_buf_reserve");
    SYM(pid, "cc_pid");
    SYM(stopping, "cc_stopping");
    SYM(now, "cc_now");
    SYM(deadline, "cc_deadline");
    if (missing) return "the loaded concur does not export its codec (cb_encode)";
    api = a;
    return NULL;
}

typedef struct hello {
    char magic[16];
    char lua[24];      /* "Lua 5.4" or LuaJIT's version */
    char concur[16];
    int32_t bits, number, integer, pad;
} hello;

static void describe(const hello *h, char *out, size_t n) {
    snprintf(out, n, "%s, %d-bit, %d-byte numbers, %d-byte integers, concur %s", h->lua, (int)h->bits,
             (int)h->number, (int)h->integer, h->concur);
}

/* Every rank tells every other what it is; any difference is refused on
 * every rank, naming both (bytecode and the codec's numbers are not
 * portable between them). */
static const char *handshake(lua_State *L) {
    hello me, *all = calloc((size_t)my_size, sizeof *all);
    if (!all) return "out of memory";
    memset(&me, 0, sizeof me);
    snprintf(me.magic, sizeof me.magic, "concur-cluster1");
#ifdef LUAJIT_VERSION
    snprintf(me.lua, sizeof me.lua, "%s", LUAJIT_VERSION);
#else
    snprintf(me.lua, sizeof me.lua, "%s", LUA_VERSION);
#endif
    const char *fake = getenv("CONCUR_CLUSTER_TEST_VERSION"); /* for the spec */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "concur");
    if (lua_pcall(L, 1, 1, 0) != 0) lua_pushnil(L);
    if (lua_istable(L, -1)) lua_getfield(L, -1, "version");
    else lua_pushnil(L);
    snprintf(me.concur, sizeof me.concur, "%s",
             fake && *fake ? fake : lua_isstring(L, -1) ? lua_tostring(L, -1) : CONCUR_VERSION);
    lua_pop(L, 2);
    me.bits = (int32_t)(sizeof(void *) * 8);
    me.number = (int32_t)sizeof(lua_Number);
    me.integer = (int32_t)sizeof(lua_Integer);
    int rc = MPI_Allgather(&me, sizeof me, MPI_BYTE, all, sizeof me, MPI_BYTE, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) {
        free(all);
        return "MPI_Allgather of the handshake failed";
    }
    for (int r = 1; r < my_size; r++) {
        if (memcmp(&all[r], &all[0], sizeof me) != 0) {
            char a[160], b[160];
            describe(&all[0], a, sizeof a);
            describe(&all[r], b, sizeof b);
            snprintf(init_error_buf, sizeof init_error_buf,
                     "ranks differ: rank 0 is %s; rank %d is %s (every rank must run the same "
                     "concur build: bytecode and numbers are not portable between them)",
                     a, r, b);
            free(all);
            return init_error_buf;
        }
    }
    free(all);
    return NULL;
}

static const char *start(lua_State *L) {
    const char *e = find_api(L);
    if (e) return e;
    const char *c = getenv("CONCUR_CLUSTER_CHUNK");
    if (c && atol(c) >= 64) chunk = (size_t)atol(c);
    if (chunk > (size_t)1 << 30) chunk = (size_t)1 << 30;
    /* libmpi's plugins expect its symbols global; a stock interpreter
     * opened us RTLD_LOCAL. And stay loaded: at_exit runs at exit. */
    dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    Dl_info info;
    if (dladdr((void *)(intptr_t)start, &info) && info.dli_fname)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) return "MPI was initialised by someone else in this process";
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &threads_provided) != MPI_SUCCESS)
        return "MPI_Init_thread failed";
    init_pid = getpid();
    on_exit(at_exit, NULL);
    MPI_Comm_rank(MPI_COMM_WORLD, &my_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &my_size);
    int n = 0;
    MPI_Get_processor_name(my_host, &n);
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_p2p);
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_p2p_chunks);
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_coll);
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_pool);
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_pool_chunks);
    MPI_Comm_set_errhandler(comm_pool, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(comm_pool_chunks, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(comm_p2p, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(comm_p2p_chunks, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(comm_coll, MPI_ERRORS_RETURN);
    int *ub, flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    if (flag) max_tag = *ub;
    return handshake(L);
}

static const luaL_Reg funcs[] = {
    {"rank", l_rank},       {"size", l_size},     {"hostname", l_hostname}, {"send", l_send},
    {"recv", l_recv},       {"bcast", l_bcast},   {"gather", l_gather},     {"allgather", l_allgather},
    {"reduce", l_reduce},   {"barrier", l_barrier}, {"abort", l_abort},     {"info", l_info},
    {NULL, NULL},
};

static const luaL_Reg private_funcs[] = {
    {"psend", l_psend}, {"precv", l_precv}, {"serving", l_serving}, {NULL, NULL},
};

int luaopen_concur_serve(lua_State *L);
int luaopen_concur_cluster(lua_State *L) {
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&once);
    if (!ready && !init_error) {
        const char *e = start(L);
        if (e) init_error = e;
        else ready = 1;
    }
    pthread_mutex_unlock(&once);
    if (init_error) return errorf(L, "%s: %s", MOD, init_error);
    cb_newlib(L, funcs);
    lua_pushliteral(L, CONCUR_VERSION);
    lua_setfield(L, -2, "version");
    int lib = lua_gettop(L);
    /* the pool's "mpi" and "auto" kinds (lib/concur/cluster_pool.lua) */
    if (luaL_loadbuffer(L, cluster_pool_lua, sizeof cluster_pool_lua - 1, "=concur/cluster_pool.lua"))
        return lua_error(L);
    lua_pushvalue(L, lib);
    cb_newlib(L, private_funcs);
    lua_call(L, 2, 1);
    lua_setfield(L, lib, "_pool");
    return 1;
}

/* concur.serve (`-l concur.serve`): ranks other than 0 serve the pool of
 * rank 0 and leave when it ends; rank 0 goes on to run the script. */
int luaopen_concur_serve(lua_State *L) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "concur.cluster");
    lua_call(L, 1, 1);
    if (my_rank != 0) {
        lua_getfield(L, -1, "_pool");
        lua_getfield(L, -1, "serve");
        lua_call(L, 0, 0); /* does not return: the rank exits when rank 0 ends */
    }
    serving = 1;
    lua_pushboolean(L, 1);
    return 1;
}
