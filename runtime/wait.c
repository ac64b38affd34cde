/*
 * wait.c -- cc_wait_any: sleep until one of several queues, pipe ends,
 * child processes or probed things is ready (concur.wait).
 *
 * Queues and pipe ends each expose a watch (wait.h): a word bumped on every
 * put, send, close and break, with a sleepers count. The protocol: register
 * (sleepers++), read the word, check readiness, sleep while the word still
 * has the value read, unregister. A bump after our check moves the word, so
 * the sleep returns at once; a bump before it is seen by the check. The
 * register-then-read and the bump-then-look-at-sleepers pairs are sequentially
 * consistent, so one side always sees the other.
 *
 * How it sleeps:
 *  - queues and pipes: one futex_waitv on all their words (up to 128; the
 *    kernel's limit), so a put or a send wakes it at once. A pipe whose peer
 *    is killed ends without a bump; while pipes are in the set the sleep is
 *    cut into slices growing from 1 ms to 10 ms to notice that.
 *  - pipes and child processes without queues: one poll() on their fds (a
 *    pidfd per child) until the deadline, woken by data, EOF or the exit.
 *  - queues together with children, or anything probed (threads), or more
 *    than 128 watches, or no futex_waitv/pidfd from the kernel: sleep in
 *    slices growing from 0.5 ms to 10 ms and check between them.
 * A child is checked with waitid(WNOWAIT): seen ended without being reaped,
 * so join still finds its status and the pid cannot be reused meanwhile.
 */
#include "wait.h"
#include "pipe.h"
#include "queue.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WATCHES 128 /* FUTEX_WAITV_MAX */

void cc_watch_bump(cc_watch *w) {
    atomic_fetch_add(&w->seq, 1);
    if (atomic_load(&w->sleepers)) cc_futex_wake(&w->seq, INT_MAX);
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

static int is_ready(cc_waitable *w) {
    switch (w->kind) {
    case CC_WAIT_READY: return 1;
    case CC_WAIT_QUEUE: return cc_queue_ready(w->queue);
    case CC_WAIT_PIPE: return cc_pipe_poll(w->pipe, 0) > 0 || cc_pipe_closed(w->pipe);
    case CC_WAIT_CHILD: return child_ended(w->pid);
    default: return w->probe(w->arg) > 0;
    }
}

static int collect(cc_waitable *w, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) k += (w[i].ready = is_ready(&w[i]));
    return k;
}

static cc_watch *watch_of(cc_waitable *w) {
    if (w->kind == CC_WAIT_QUEUE) return cc_queue_watch(w->queue);
    if (w->kind == CC_WAIT_PIPE) return cc_pipe_watch(w->pipe);
    return NULL;
}

/* futex_waitv on every watch, while each still has the value in vals[]:
 * 0 (woken, or a word had moved), -ETIMEDOUT, -ENOSYS. */
static int sleep_watches(struct futex_waitv *v, int nv, double until) {
#ifdef SYS_futex_waitv
    struct timespec ts, *tp = NULL;
    if (until >= 0) {
        cc_timespec(until, &ts);
        tp = &ts;
    }
    long r = syscall(SYS_futex_waitv, v, (unsigned)nv, 0, tp, CLOCK_MONOTONIC);
    if (r >= 0 || errno == EAGAIN || errno == EINTR) return 0;
    return -errno;
#else
    (void)v;
    (void)nv;
    (void)until;
    return -ENOSYS;
#endif
}

typedef struct plan {
    int nwatch, npipe, nfd, sliced;
    struct futex_waitv *v;   /* one per watch */
    cc_watch **watch;
    struct pollfd *fds;
} plan;

static void unregister(plan *p) {
    for (int i = 0; i < p->nwatch; i++) atomic_fetch_sub(&p->watch[i]->sleepers, 1);
}

/* One sleep until `until` (or sooner); the caller checks afterwards. */
static void sleep_once(cc_waitable *w, int n, plan *p, double until, double now) {
    if (p->nwatch && !p->nfd && !p->sliced) {
        for (int i = 0; i < p->nwatch; i++) atomic_fetch_add(&p->watch[i]->sleepers, 1);
        for (int i = 0; i < p->nwatch; i++) p->v[i].val = atomic_load(&p->watch[i]->seq);
        if (collect(w, n) == 0 && sleep_watches(p->v, p->nwatch, until) == -ENOSYS)
            p->sliced = 1; /* no futex_waitv here: slices from now on */
        unregister(p);
        return;
    }
    int ms = until < 0 ? -1 : (int)((until - now) * 1000) + 1;
    if (p->npipe && !p->nwatch) { /* senders must put staged frames on the socket for poll() to see */
        for (int i = 0; i < n; i++)
            if (w[i].kind == CC_WAIT_PIPE) cc_pipe_want(w[i].pipe);
        if (collect(w, n) > 0) return;
    }
    if (p->nfd) poll(p->fds, (nfds_t)p->nfd, ms);
    else cc_sleep(until < 0 ? 1.0 : until - now); /* nothing to wait on: idle, not spinning */
}

int cc_wait_any(cc_waitable *w, int n, double deadline) {
    plan p = {0};
    p.v = calloc((size_t)(n ? n : 1), sizeof *p.v);
    p.watch = calloc((size_t)(n ? n : 1), sizeof *p.watch);
    p.fds = calloc((size_t)(n ? n : 1), sizeof *p.fds);
    int r = 0;
    if (!p.v || !p.watch || !p.fds) {
        r = -ENOMEM;
        goto out;
    }
    int nqueue = 0;
    for (int i = 0; i < n; i++) nqueue += w[i].kind == CC_WAIT_QUEUE;
    for (int i = 0; i < n; i++) {
        w[i].fd = -1;
        w[i].ready = 0;
        cc_watch *wt = nqueue ? watch_of(&w[i]) : NULL; /* no queues: poll() sees it all */
        if (wt) {
            p.watch[p.nwatch] = wt;
            p.v[p.nwatch].uaddr = (uintptr_t)&wt->seq;
            p.v[p.nwatch].flags = FUTEX_32; /* not private: shared with other processes */
            p.nwatch++;
        }
        int fd = -1;
        if (w[i].kind == CC_WAIT_PIPE) {
            p.npipe++;
            if (!nqueue) fd = cc_pipe_fd(w[i].pipe); /* with queues, its watch wakes us */
        } else if (w[i].kind == CC_WAIT_CHILD) {
            fd = w[i].fd = pidfd_of(w[i].pid);
            if (fd < 0 || nqueue) p.sliced = 1; /* a futex cannot see an exit: slices */
        } else if (w[i].kind == CC_WAIT_PROBE) {
            p.sliced = 1;
        }
        if (fd >= 0) p.fds[p.nfd++] = (struct pollfd){fd, POLLIN, 0};
    }
    if (p.nwatch > MAX_WATCHES) p.sliced = 1;
    double slice = nqueue && !p.sliced ? 0.001 : 0.0005;
    for (;;) {
        r = collect(w, n);
        if (r > 0) break;
        if (cc_interrupted()) {
            r = -EINTR;
            break;
        }
        double now = cc_now();
        if (deadline >= 0 && now >= deadline) {
            r = 0;
            break;
        }
        /* slices: for what no word or fd announces (probes, children next
         * to queues, a pipe peer killed while queues are watched) */
        int slicing = p.sliced || (p.nwatch && p.npipe);
        double until = slicing ? now + slice : cc_wait_slice(deadline);
        if (deadline >= 0 && (until < 0 || until > deadline)) until = deadline;
        sleep_once(w, n, &p, until, now);
        if (slice < 0.01) slice *= 2;
    }
out:
    for (int i = 0; i < n; i++)
        if (w[i].fd >= 0) {
            close(w[i].fd);
            w[i].fd = -1;
        }
    free(p.v);
    free(p.watch);
    free(p.fds);
    return r;
}
