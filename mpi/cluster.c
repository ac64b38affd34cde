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
 * backoff (128 probes, spin to ~50 us, then yield, then sleep 20 us doubling to 1 ms), which
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
 * The pool. lib/concur/cluster_pool.lua (compiled in) adds the "mpi" and
 * "auto" kinds to concur.pool over a communicator of its own (psend/precv
 * below), so a script's own recv never sees pool traffic. luaopen_concur_serve
 * (`-l concur.serve`, serve.so is a link to this object) makes every rank
 * but 0 a pool worker before the script is read.
 *
 * Files. This one is the Lua API; mpi/wire.c the MPI plumbing (waits,
 * bytes of any size, start and end of the job); mpi/cluster.h what they share.
 *
 * End of job. The module stays loaded (RTLD_NODELETE) and registers an
 * on_exit handler in the process that initialised MPI: exit status 0 (and
 * the host not stopping after an uncaught error or a signal) calls
 * MPI_Finalize; anything else calls MPI_Abort, so one failing rank ends the
 * whole job at once instead of leaving the others waiting on it. Before
 * MPI_Finalize, rank 0 of a pool-serve job sends each other rank an empty
 * message on the pool communicator: "leave".
 */
#include "cluster.h"
#include "cluster_pool_lua.h" /* generated from lib/concur/cluster_pool.lua */

/* ------------------------------------------------- values <-> bytes */

/* Where the first shared object in the value at idx is: pushes its path
 * (".jobs[2].q", "<upvalue q>", "<metatable>...") and returns 1, or returns
 * 0. seen: the stack slot of a table of tables and functions visited. Only
 * run to word a refusal, so the second walk costs nothing on success. */
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

/* MPI_Isend, then one MPI_Test, under the lock (freeing the sends that
 * finished since): MPI's return code; *done tells whether MPI is through
 * with data. */
static int isend_test(const void *data, size_t len, int to, int tag, MPI_Comm comm, MPI_Request *r,
                      int *done) {
    *done = 0;
    LOCK();
    if (pendings) free_done_pendings();
    int rc = MPI_Isend(data, (int)len, MPI_BYTE, to, tag, comm, r);
    if (rc == MPI_SUCCESS) rc = MPI_Test(r, done, MPI_STATUS_IGNORE);
    UNLOCK();
    return rc;
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
    unsigned char small[FM_SMALL];
    size_t slen = fm_encode(L, 1, small);
    if (slen) { /* one small scalar: no codec, no scratch buffer */
        char *p = malloc(slen); /* MPI may read it after we return */
        if (!p) errorf(L, "%s: out of memory", fname);
        memcpy(p, small, slen);
        MPI_Request r;
        int done;
        int rc = isend_test(p, slen, to, tag, comm, &r, &done);
        if (rc != MPI_SUCCESS) free(p);
        mpi_check(L, rc, fname, "MPI_Isend");
        if (!done) wait_all(L, 1, &r, p, fname);
        free(p);
        return 0;
    }
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
    int done;
    int rc = isend_test(b->data, b->len, to, tag, comm, &r, &done);
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
static const luaL_Reg funcs[] = {
    {"rank", l_rank},       {"size", l_size},     {"hostname", l_hostname}, {"send", l_send},
    {"recv", l_recv},       {"bcast", l_bcast},   {"gather", l_gather},     {"allgather", l_allgather},
    {"reduce", l_reduce},   {"barrier", l_barrier}, {"abort", l_abort},     {"info", l_info},
    {NULL, NULL},
};

static const luaL_Reg private_funcs[] = {
    {"psend", l_psend}, {"precv", l_precv}, {"serving", l_serving}, {NULL, NULL},
};

#define EXPORT __attribute__((visibility("default")))
EXPORT int luaopen_concur_serve(lua_State *L);
EXPORT int luaopen_concur_cluster(lua_State *L) {
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&once);
    if (!ready && !init_error) {
        const char *e = cl_start(L);
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
EXPORT int luaopen_concur_serve(lua_State *L) {
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
