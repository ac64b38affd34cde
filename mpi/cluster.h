/*
 * cluster.h -- what mpi/cluster.c (the Lua API) and mpi/wire.c (MPI
 * plumbing: waits, bytes of any size, start and end of the job) share.
 * Built with -fvisibility=hidden: only luaopen_* leave the module, so no
 * name here can bind to a symbol of the host executable.
 */
#ifndef CONCUR_CLUSTER_H
#define CONCUR_CLUSTER_H

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
#include "../bindings/cb.h" /* prototypes only: the module links none of it */
#include "../bindings/fastmsg.h" /* inline: one small scalar without the codec */
#include "../runtime/proc.h"

#define MOD "concur.cluster"
#define BIG_MARK 0xFFFFFFFFu
#define MAX_DEPTH 200

/* Each field has the type of the function it is looked up as, so a change
 * of a prototype in bindings/cb.h or runtime/cc.h fails this build instead
 * of calling through a stale signature. */
typedef struct cl_api {
    typeof(&cb_encode) encode;
    typeof(&cb_decode) decode;
    typeof(&cb_buf_take_at) buf_take_at;
    typeof(&cb_buf_give) buf_give;
    typeof(&cc_msg_release) msg_release;
    typeof(&cb_test) test;
    typeof(&cb_typename) type_name;
    typeof(&cc_interrupted) interrupted;
    typeof(&cc_buf_reserve) buf_reserve;
    typeof(&cc_pid) pid; /* cached getpid, refreshed in forked children */
    typeof(&cc_stopping) stopping;
    typeof(&cc_now) now;
    typeof(&cc_deadline) deadline;
} cl_api;
extern cl_api api;

extern pthread_mutex_t mpi_lock;
extern int ready;
extern const char *init_error;
extern pid_t init_pid;
extern int my_rank, my_size, threads_provided;
extern MPI_Comm comm_p2p, comm_p2p_chunks, comm_coll;
extern MPI_Comm comm_pool, comm_pool_chunks; /* the pool's own channel */
extern int serving;                          /* rank 0 of a pool-serve job */
extern size_t chunk;                         /* longest single MPI message */
extern char my_host[MPI_MAX_PROCESSOR_NAME + 1];

typedef struct pending {
    struct pending *next;
    int n;
    MPI_Request *reqs;
    void *buf, *buf2;
} pending;
extern pending *pendings;

#define LOCK() pthread_mutex_lock(&mpi_lock)
#define UNLOCK() pthread_mutex_unlock(&mpi_lock)

/* A received (or to-be-sent) message owned by a userdata, freed by __gc. */
typedef struct rbox {
    char *p;
    size_t len;
} rbox;

/* ---- wire.c: errors, arguments, waits, bytes over MPI ---- */
int errorf(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mpi_check(lua_State *L, int rc, const char *fname, const char *what);
void check_usable(lua_State *L, const char *fname);
int check_range(lua_State *L, int idx, int arg, const char *fname, const char *what, long long lo,
                long long hi);
int tag_ub(void);
double opt_deadline(lua_State *L, int idx, int arg, const char *fname);
void free_done_pendings(void);
void wait_all(lua_State *L, int n, MPI_Request *reqs, void *buf, const char *fname);
void send_bytes(lua_State *L, MPI_Comm comm, MPI_Comm chunks, int dest, int tag, char **owned,
                size_t len, const char *fname);
rbox *push_rbox(lua_State *L);
int recv_value(lua_State *L, MPI_Comm comm, MPI_Comm chunks, int from, int tag, double deadline,
               MPI_Status *st, const char *fname);
void decode_box(lua_State *L, const char *fname);
char **own(lua_State *L, char *p, size_t len);
/* MPI_Init_thread, the handshake and the exit handler, once per process:
 * NULL, or why the module cannot be used */
const char *cl_start(lua_State *L);

#endif
