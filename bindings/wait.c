/*
 * wait.c -- concur.wait(objects, [timeout]): the objects that are ready,
 * like Python's multiprocessing.connection.wait. A pipe end is ready when
 * recv would not block (data buffered or on the socket, or EOF); a queue
 * when it has an item or is closed; a process handle when its child has
 * ended (exited or killed, joined or not); a thread handle when its
 * function has returned or failed. An empty table on timeout.
 *
 * A process is checked with waitid(WNOWAIT): that sees an ended child
 * without reaping it, so join still finds its status, and the pid cannot
 * be reused while the zombie is there. Its sleep is a pidfd in the same
 * poll() as the pipes, so a child's exit wakes the wait at once.
 *
 * How it sleeps: pipes and processes only -> one poll() on their fds until
 * the deadline; one queue and nothing else -> a futex wait on the queue's
 * event word (bumped by every put and by close); a mix with queues or
 * threads (or no pidfd from the kernel) -> poll() in slices that grow from
 * 0.5 ms to 10 ms, checking between slices. So those waits wake at once,
 * and a mixed wait costs at most 10 ms of latency and a handful of
 * wake-ups per second.
 */
#include "cb.h"
#include "../runtime/pipe.h"
#include "../runtime/queue.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_OBJS 1024

/* The pidfds of one call, in a userdata whose __gc closes what a raise
 * left open. */
typedef struct pidfds {
    int n;
    int fd[];
} pidfds;

static void close_all(pidfds *p) {
    for (int i = 0; i < p->n; i++) close(p->fd[i]);
    p->n = 0;
}

static int pidfds_gc(lua_State *L) {
    close_all(lua_touserdata(L, 1));
    return 0;
}

static const char PIDFDS_MT = 'w';

static pidfds *new_pidfds(lua_State *L, int n) {
    pidfds *p = lua_newuserdata(L, sizeof *p + sizeof(int) * (size_t)(n ? n : 1));
    p->n = 0;
    cb_rawgetp(L, LUA_REGISTRYINDEX, &PIDFDS_MT);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, pidfds_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        cb_rawsetp(L, LUA_REGISTRYINDEX, &PIDFDS_MT);
    }
    lua_setmetatable(L, -2);
    return p;
}

static int pidfd_of(pid_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

/* Has this child of ours ended? Leaves it for join to reap. */
static int child_ended(pid_t pid) {
    siginfo_t si;
    si.si_pid = 0;
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
        return errno == ECHILD; /* reaped by someone: gone, so ended */
    return si.si_pid == pid;
}

/* Is the value at idx ready? It was checked to be one of the kinds. */
static int is_ready(lua_State *L, int idx) {
    cc_obj *o = cb_test(L, idx);
    pid_t pid;
    int state;
    if (o && o->type == CC_T_QUEUE) return cc_queue_ready((cc_queue *)o);
    if (o) return cc_pipe_poll((cc_pipe *)o, 0) > 0 || cc_pipe_closed((cc_pipe *)o);
    if (cb_process_probe(L, idx, &pid, &state))
        return state == CB_PROBE_ENDED || (state == CB_PROBE_RUNNING && child_ended(pid));
    return cb_thread_probe(L, idx, &state) && state == CB_PROBE_ENDED;
}

/* Push the ready objects as an array; their count. */
static int collect(lua_State *L, int objs, int n) {
    lua_newtable(L);
    int k = 0;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, objs, i);
        if (is_ready(L, lua_gettop(L))) lua_rawseti(L, -2, ++k);
        else lua_pop(L, 1);
    }
    return k;
}

static int bad_object(lua_State *L, int i, const char *why) {
    return luaL_error(L, "concur.wait: bad object at [%d] (%s)", i, why);
}

static int l_wait(lua_State *L) {
    cb_checktable(L, 1, 1, "concur.wait");
    double deadline = cb_opt_deadline(L, 2, "concur.wait");
    lua_settop(L, 2);
    int n = (int)cb_rawlen(L, 1);
    if (n > MAX_OBJS) return luaL_error(L, "concur.wait: too many objects (at most %d)", MAX_OBJS);
    struct pollfd *fds = lua_newuserdata(L, sizeof(struct pollfd) * (size_t)(n ? n : 1));
    pidfds *pf = new_pidfds(L, n);
    int nfds = 0, nqueues = 0, sliced = 0;
    cc_queue *only_queue = NULL;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        cc_obj *o = cb_test(L, -1);
        pid_t pid;
        int state, fd = -1;
        if (o && o->type == CC_T_QUEUE) {
            nqueues++;
            only_queue = (cc_queue *)o;
        } else if (o && o->type == CC_T_PIPE) {
            cc_pipe *p = (cc_pipe *)o;
            if (!cc_pipe_usable(p))
                return luaL_error(L, "concur.wait: the pipe end at [%d] cannot be used in this process", i);
            fd = cc_pipe_fd(p);
        } else if (!o && cb_process_probe(L, -1, &pid, &state)) {
            if (state == CB_PROBE_FINALIZED) return bad_object(L, i, "the process handle was finalized");
            if (state == CB_PROBE_FOREIGN)
                return bad_object(L, i, "a process spawned by another process");
            if (state == CB_PROBE_RUNNING) {
                fd = pf->fd[pf->n] = pidfd_of(pid);
                if (fd >= 0) pf->n++;
                else sliced = 1; /* no pidfd here: check between slices */
            }
        } else if (!o && cb_thread_probe(L, -1, &state)) {
            if (state == CB_PROBE_FINALIZED) return bad_object(L, i, "the thread handle was finalized");
            if (state == CB_PROBE_FOREIGN) return bad_object(L, i, "a thread of another process");
            sliced = 1;
        } else {
            return bad_object(L, i, "pipe end, queue, process or thread expected");
        }
        lua_pop(L, 1);
        if (fd >= 0) {
            fds[nfds].fd = fd;
            fds[nfds].events = POLLIN;
            fds[nfds].revents = 0;
            nfds++;
        }
    }
    if (nqueues) sliced = 1;
    double slice = 0.0005;
    for (;;) {
        if (collect(L, 1, n) > 0) break;
        lua_pop(L, 1);
        if (cc_interrupted()) return cb_fail(L, -EINTR, "concur.wait"); /* __gc closes pf */
        double now = cc_now();
        if (deadline >= 0 && now >= deadline) {
            lua_newtable(L);
            break;
        }
        if (nfds == 0 && nqueues == 1 && n == 1) {
            _Atomic uint32_t *word = cc_queue_event_word(only_queue);
            _Atomic uint32_t *waiters = cc_queue_event_waiters(only_queue);
            uint32_t seen = *word;
            (*waiters)++;
            if (!cc_queue_ready(only_queue)) cc_futex_wait(word, seen, cc_wait_slice(deadline));
            (*waiters)--;
            continue;
        }
        double until = sliced ? now + slice : cc_wait_slice(deadline);
        if (deadline >= 0 && (until < 0 || until > deadline)) until = deadline;
        int ms = until < 0 ? -1 : (int)((until - now) * 1000) + 1;
        if (nfds) poll(fds, (nfds_t)nfds, ms);
        else cc_sleep(until - now);
        if (slice < 0.01) slice *= 2;
    }
    close_all(pf);
    return 1;
}

int cb_open_wait(lua_State *L) {
    lua_pushcfunction(L, l_wait);
    return 1;
}
