/*
 * proc.c -- fork for process.spawn, waiting on children with deadlines,
 * and process.run for external programs.
 *
 * Waiting: a child is waited on through its result pipe (poll gives EOF
 * when it exits) and then waitpid; for process.run, through poll on its
 * output pipes. Where no fd exists, waitpid(WNOHANG) with a short backoff.
 *
 * Result pipes: every write end that a parent holds open is tracked, and a
 * new child closes all of them but its own. Otherwise a child forked by
 * another thread a moment later would inherit a sibling's write end and
 * that sibling's EOF would wait for it.
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TRACKED 1024
#define MAX_HOOKS 8

static pthread_mutex_t track_lock = PTHREAD_MUTEX_INITIALIZER;
static int tracked[MAX_TRACKED];
static int ntracked;
static void (*hooks[MAX_HOOKS])(void);
static int nhooks;

void cc_fork_track(int fd, int on) {
    pthread_mutex_lock(&track_lock);
    if (on) {
        if (ntracked < MAX_TRACKED) tracked[ntracked++] = fd;
    } else {
        for (int i = 0; i < ntracked; i++)
            if (tracked[i] == fd) {
                tracked[i] = tracked[--ntracked];
                break;
            }
    }
    pthread_mutex_unlock(&track_lock);
}

void cc_fork_hook(void (*fn)(void)) {
    for (int i = 0; i < nhooks; i++)
        if (hooks[i] == fn) return;
    if (nhooks < MAX_HOOKS) hooks[nhooks++] = fn;
}

pid_t cc_fork(int keep_fd) {
    fflush(NULL);
    pthread_mutex_lock(&track_lock);
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < ntracked; i++)
            if (tracked[i] != keep_fd) close(tracked[i]);
        /* our own result pipe stays tracked: a grandchild must not hold it
         * open, or our parent's join would wait for the grandchild too */
        ntracked = 0;
        if (keep_fd >= 0) tracked[ntracked++] = keep_fd;
        pthread_mutex_unlock(&track_lock);
        for (int i = 0; i < nhooks; i++) hooks[i]();
        return 0;
    }
    pthread_mutex_unlock(&track_lock);
    return pid < 0 ? -errno : pid;
}

int cc_read_all(int fd, cc_buf *out, double deadline) {
    for (;;) {
        /* grow as needed: most results are a few bytes, and a 64 KiB buffer
         * would cross malloc's mmap threshold on every spawn */
        if (cc_buf_reserve(out, out->len + 4096) != 0) return -ENOMEM;
        ssize_t n = read(fd, out->data + out->len, out->cap - out->len);
        if (n > 0) {
            out->len += (size_t)n;
            continue;
        }
        if (n == 0) return 0;
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return -errno;
        int r = cc_wait_fd(fd, POLLIN, deadline);
        if (r <= 0) return r ? r : -ETIMEDOUT;
    }
}

/* A pidfd becomes readable when the child exits: no polling, no naps. */
static int wait_pidfd(pid_t pid, double deadline) {
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0) return -ENOSYS;
    int r = cc_wait_fd(fd, POLLIN, deadline);
    close(fd);
    return r < 0 ? r : r ? 0 : -ETIMEDOUT;
}

int cc_wait_pid(pid_t pid, int *status, double deadline) {
    pid_t got = waitpid(pid, status, WNOHANG);
    if (got == pid) return 0;
    if (got < 0 && errno != EINTR) return -errno;
    int r = wait_pidfd(pid, deadline);
    if (r == 0) {
        while ((got = waitpid(pid, status, 0)) < 0 && errno == EINTR) {}
        return got == pid ? 0 : -errno;
    }
    if (r != -ENOSYS) return r;
    double nap = 0.0001;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid) return 0;
        if (r < 0 && errno != EINTR) return -errno;
        if (cc_interrupted()) return -EINTR;
        double now = cc_now();
        if (deadline >= 0 && now >= deadline) return -ETIMEDOUT;
        if (deadline >= 0 && now + nap > deadline) nap = deadline - now;
        cc_sleep(nap);
        if (nap < 0.01) nap *= 2;
    }
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* the child side of cc_run: never returns */
static void exec_child(char *const argv[], int in, int out, int err, int report) {
    /* Lift all three above 2 first: one of them may itself be 0, 1 or 2
     * (when the caller had those closed), and dup2 onto itself would keep
     * its close-on-exec flag, and a later dup2 could clobber it. */
    in = fcntl(in, F_DUPFD_CLOEXEC, 3);
    out = fcntl(out, F_DUPFD_CLOEXEC, 3);
    err = fcntl(err, F_DUPFD_CLOEXEC, 3);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    signal(SIGPIPE, SIG_DFL);
    execvp(argv[0], argv);
    int e = errno;
    if (write(report, &e, sizeof e) < 0) { /* nothing more to do */ }
    _exit(127);
}

static int drain(int fd, cc_buf *b) {
    if (cc_buf_reserve(b, b->len + 65536) != 0) return -ENOMEM;
    ssize_t n = read(fd, b->data + b->len, b->cap - b->len);
    if (n > 0) b->len += (size_t)n;
    return n == 0 ? 1 : 0; /* 1 = EOF */
}

int cc_run(char *const argv[], const char *in, size_t inlen, double deadline,
           cc_buf *out, cc_buf *err, int *status) {
    int pin[2], pout[2], perr[2], prep[2];
    /* stdin is a socketpair so feeding it uses MSG_NOSIGNAL: a program that
     * exits without reading its input must not SIGPIPE us */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pin)) return -errno;
    if (pipe2(pout, O_CLOEXEC)) { close(pin[0]); close(pin[1]); return -errno; }
    if (pipe2(perr, O_CLOEXEC)) { close(pin[0]); close(pin[1]); close(pout[0]); close(pout[1]); return -errno; }
    if (pipe2(prep, O_CLOEXEC)) {
        close(pin[0]); close(pin[1]); close(pout[0]); close(pout[1]); close(perr[0]); close(perr[1]);
        return -errno;
    }
    pid_t pid = cc_fork(-1);
    if (pid == 0) exec_child(argv, pin[0], pout[1], perr[1], prep[1]);
    close(pin[0]); close(pout[1]); close(perr[1]); close(prep[1]);
    if (pid < 0) {
        close(pin[1]); close(pout[0]); close(perr[0]); close(prep[0]);
        return (int)pid;
    }
    int e = 0;
    if (read(prep[0], &e, sizeof e) != (ssize_t)sizeof e) e = 0; /* EOF: exec worked */
    close(prep[0]);
    set_nonblock(pin[1]);
    set_nonblock(pout[0]);
    set_nonblock(perr[0]);
    size_t sent = 0;
    if (inlen == 0) { close(pin[1]); pin[1] = -1; }
    int open_out = 1, open_err = 1, r = 0;
    while (open_out || open_err) {
        struct pollfd p[3] = {{pout[0], POLLIN, 0}, {perr[0], POLLIN, 0}, {pin[1], POLLOUT, 0}};
        if (!open_out) p[0].fd = -1;
        if (!open_err) p[1].fd = -1;
        int ms = -1;
        double until = cc_wait_slice(deadline);
        if (until >= 0) {
            double left = until - cc_now();
            /* a day at most: a far deadline (1e300, inf) must not overflow */
            ms = left <= 0 ? 0 : left > 86400 ? 86400 * 1000 : (int)(left * 1000) + 1;
        }
        int n = poll(p, 3, ms);
        if (n < 0 && errno != EINTR) { r = -errno; break; }
        if (cc_interrupted()) { r = -EINTR; break; }
        if (n == 0 && deadline >= 0 && cc_now() >= deadline) { r = -ETIMEDOUT; break; }
        if (p[0].revents && drain(pout[0], out)) open_out = 0;
        if (p[1].revents && drain(perr[0], err)) open_err = 0;
        if (pin[1] >= 0 && p[2].revents) {
            ssize_t w = (p[2].revents & POLLOUT) ? send(pin[1], in + sent, inlen - sent, MSG_NOSIGNAL) : -1;
            if (w > 0) sent += (size_t)w;
            if (w < 0 && errno != EAGAIN) sent = inlen; /* reader gone: stop feeding */
            if (sent >= inlen) { close(pin[1]); pin[1] = -1; }
        }
    }
    if (pin[1] >= 0) close(pin[1]);
    close(pout[0]);
    close(perr[0]);
    if (r) kill(pid, SIGKILL);
    int w = cc_wait_pid(pid, status, CC_FOREVER);
    if (e) return -e;
    if (r) return r;
    return w;
}
