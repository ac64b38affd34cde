/*
 * wire.c -- concur.cluster's MPI plumbing (the design is at the top of
 * mpi/cluster.c): argument checks and errors, the polling waits and the
 * pending list, messages of any size over a communicator, and the start
 * (finding concur's codec, MPI_Init_thread, the handshake) and end (the
 * exit handler) of the job.
 */
#include "cluster.h"

cl_api api;
pthread_mutex_t mpi_lock = PTHREAD_MUTEX_INITIALIZER;
int ready;                /* MPI initialised by us and handshake passed */
const char *init_error;   /* the handshake's refusal, repeated to later requires */
static char init_error_buf[512];
pid_t init_pid;
int my_rank, my_size, threads_provided;
MPI_Comm comm_p2p, comm_p2p_chunks, comm_coll;
MPI_Comm comm_pool, comm_pool_chunks;
int serving;
size_t chunk = (size_t)1 << 30;
char my_host[MPI_MAX_PROCESSOR_NAME + 1];
pending *pendings;

/* ------------------------------------------------------------ helpers */

/* printf formats (lua_pushfstring has no %lld or %zu); messages are short */
int errorf(lua_State *L, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lua_pushstring(L, msg);
    return lua_error(L);
}

void mpi_check(lua_State *L, int rc, const char *fname, const char *what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, msg, &n);
    msg[n < MPI_MAX_ERROR_STRING ? n : MPI_MAX_ERROR_STRING - 1] = 0;
    errorf(L, "%s: %s failed: %s", fname, what, msg);
}

/* Communication belongs to the process that initialised MPI. */
void check_usable(lua_State *L, const char *fname) {
    if (api.pid() != init_pid)
        errorf(L,
               "%s: not available in a forked child (pid %d) of rank %d: MPI belongs to the "
               "rank's own process; send results back with the child's return value",
               fname, (int)getpid(), my_rank);
}

/* An integer argument in [lo, hi] (integral floats accepted; NaN, inf,
 * 2^63 and fractions refused, naming the argument). */
int check_range(lua_State *L, int idx, int arg, const char *fname, const char *what,
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

int tag_ub(void) {
    return max_tag;
}

/* Optional timeout -> absolute deadline (CC_FOREVER for nil / math.huge). */
double opt_deadline(lua_State *L, int idx, int arg, const char *fname) {
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
 * to 1 ms. 0, or -EINTR when the thread was cancelled. The first SPINS
 * steps read no clock (a clock read cost as much as the probe it follows:
 * 18% of a ping-pong's time) and look for a cancel every 16th. */
typedef struct backoff {
    double start;
    long sleep_ns;
    double yield_for; /* 0: 2 ms */
    unsigned spins;
} backoff;

enum { SPINS = 128 };

static int backoff_step(backoff *b) {
    if (b->spins < SPINS) {
        b->spins++;
        if (b->spins % 16 == 0 && api.interrupted && api.interrupted()) return -EINTR;
        return 0;
    }
    if (api.interrupted && api.interrupted()) return -EINTR;
    double now = api.now();
    if (b->start == 0) b->start = now;
    double waited = now - b->start;
    if (waited < 50e-6) return 0;
    /* yielding keeps a ping-pong between two ranks on a busy machine fast
     * (the peer may be off its core for a while); a pool's rank 0 waiting
     * for results of work that takes ms gives its core to the workers */
    if (waited < (b->yield_for > 0 ? b->yield_for : 2e-3)) {
        sched_yield();
        return 0;
    }
    if (b->sleep_ns < 20000) b->sleep_ns = 20000;
    struct timespec ts = {0, b->sleep_ns};
    nanosleep(&ts, NULL);
    if (b->sleep_ns < 1000000) b->sleep_ns *= 2;
    return 0;
}

void free_done_pendings(void) { /* under mpi_lock */
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
    backoff b = {0, 0, 0, 0};
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

void wait_all(lua_State *L, int n, MPI_Request *reqs, void *buf, const char *fname) {
    wait_all2(L, n, reqs, buf, NULL, fname);
}

/* ------------------------------------------------- bytes over MPI */

/* Send len bytes at data (a malloc'd block the caller gives up if this
 * raises: *owned is set to NULL then) to dest on comm / its chunk comm. */
void send_bytes(lua_State *L, MPI_Comm comm, MPI_Comm chunks, int dest, int tag,
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

static int rbox_gc(lua_State *L) {
    rbox *b = lua_touserdata(L, 1);
    free(b->p);
    b->p = NULL;
    return 0;
}

rbox *push_rbox(lua_State *L) {
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

void decode_box(lua_State *L, const char *fname);

/* Receive one message (from, tag may be MPI_ANY_*) and decode it: pushes
 * its value and returns 1 with *st filled, or returns 0 (nothing pushed)
 * when the deadline passes. A small message is taken into the per-state
 * scratch buffer 1 under the lock it was matched in; a descriptor's chunk
 * receives are posted in that same critical section (see the top). */
int recv_value(lua_State *L, MPI_Comm comm, MPI_Comm chunks, int from, int tag,
                      double deadline, MPI_Status *st, const char *fname) {
    /* (on comm_pool, an empty message is rank 0's "leave": returns 2) */
    backoff bo = {0, 0, comm == comm_pool ? 100e-6 : 0, 0};
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
        /* a small message (every scalar, a descriptor) lands on the C
         * stack: no scratch buffer, and nothing a nested call could reuse */
        unsigned char small[FM_SMALL];
        cc_buf *b = NULL;
        char *in = (char *)small;
        if (n < 0 || n > FM_SMALL) {
            b = api.buf_take_at(L, 1, frame);
            if (n < 0 || n > (MPI_Count)chunk || api.buf_reserve(b, (size_t)n) != 0) {
                char tiny[16]; /* take it off anyway: MPI truncates it */
                MPI_Mrecv(tiny, 0, MPI_BYTE, &m, MPI_STATUS_IGNORE);
                UNLOCK();
                api.buf_give(L, b);
                errorf(L, "%s: cannot take a message of %lld bytes (%s)", fname, (long long)n,
                       n > (MPI_Count)chunk ? "longer than a chunk: corrupt" : "out of memory");
            }
            in = b->data;
        }
        rc = MPI_Mrecv(in, (int)n, MPI_BYTE, &m, MPI_STATUS_IGNORE);
        uint32_t mark = 0;
        if (rc == MPI_SUCCESS && n == 16) memcpy(&mark, in, sizeof mark);
        if (rc != MPI_SUCCESS || mark != BIG_MARK) {
            UNLOCK();
            if (rc != MPI_SUCCESS && b) api.buf_give(L, b);
            mpi_check(L, rc, fname, "MPI_Mrecv");
            if (!b) {
                if (n < 8 || cc_msg_nrefs(small) != 0)
                    errorf(L, "%s: corrupt message (%zu bytes, not a concur value)", fname, (size_t)n);
                if (fm_decode(L, small, (size_t)n) == 1) return 1;
                int k = api.decode(L, small, (size_t)n, fname);
                if (k != 1) errorf(L, "%s: corrupt message (%d values, expected 1)", fname, k);
                return 1;
            }
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
        memcpy(&total, in + 8, sizeof total);
        size_t nchunks = (total + chunk - 1) / chunk;
        char *data = total && total <= ((uint64_t)1 << 40) ? malloc(total) : NULL;
        MPI_Request *reqs = data ? malloc(nchunks * sizeof *reqs) : NULL;
        int src = st->MPI_SOURCE;
        for (size_t i = 0; rc == MPI_SUCCESS && reqs && i < nchunks; i++) {
            size_t off = i * chunk, len = total - off < chunk ? total - off : chunk;
            rc = MPI_Irecv(data + off, (int)len, MPI_BYTE, src, 0, chunks, &reqs[i]);
        }
        UNLOCK();
        if (b) api.buf_give(L, b);
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

/* Decode the rbox on top (popped): pushes one value. */
void decode_box(lua_State *L, const char *fname) {
    rbox *box = lua_touserdata(L, -1);
    if (box->len < 8 || cc_msg_nrefs(box->p) != 0)
        errorf(L, "%s: corrupt message (%zu bytes, not a concur value)", fname, box->len);
    int n = api.decode(L, box->p, box->len, fname);
    if (n != 1) errorf(L, "%s: corrupt message (%d values, expected 1)", fname, n);
    lua_remove(L, -2);
}

/* Box a malloc'd block so an error frees it. */
char **own(lua_State *L, char *p, size_t len) {
    rbox *b = push_rbox(L);
    b->p = p;
    b->len = len;
    return &b->p;
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

const char *cl_start(lua_State *L) {
    const char *e = find_api(L);
    if (e) return e;
    const char *c = getenv("CONCUR_CLUSTER_CHUNK");
    if (c && atol(c) >= 64) chunk = (size_t)atol(c);
    if (chunk > (size_t)1 << 30) chunk = (size_t)1 << 30;
    /* libmpi's plugins expect its symbols global; a stock interpreter
     * opened us RTLD_LOCAL. And stay loaded: at_exit runs at exit. */
    dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    Dl_info info;
    if (dladdr((void *)(intptr_t)cl_start, &info) && info.dli_fname)
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

