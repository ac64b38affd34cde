/*
 * proc.c -- fork for process.spawn, waiting on children with deadlines,
 * and process.run for external programs.
 *
 * Waiting: a child is waited on through its result pipe (poll gives EOF
 * when it exits) and then waitpid; for process.run, through poll on its
 * output pipes. Where no fd exists, waitpid(WNOHANG) with a short backoff.
 *
 * Internal pipes: every end that a parent holds open (result pipes, and
 * all of process.run's) is created close-on-exec and tracked under one lock
 * from the moment it exists, and a new child closes all of them but its
 * own. Otherwise a child forked by another thread a moment later would
 * inherit a sibling's write end and that sibling's EOF would wait for it.
 *
 * Children die with their parent: right after fork a child asks for
 * SIGKILL when its parent goes (PR_SET_PDEATHSIG), then compares getppid()
 * with the pid recorded before the fork, in case the parent died before
 * the request. A grandchild does the same with its own parent, so killing
 * the root takes the whole tree down. SIGINT and SIGTERM go back to their
 * default action in the child: the host's handlers are for the script.
 *
 * Ending abnormally (cc_set_stopping): an uncaught error, a signal or a
 * failing os.exit make the bindings stop unjoined workers instead of
 * joining them; what they stopped is noted (cc_exit_note) and printed as
 * one line on stderr at exit.
 */
#include "proc.h"
#include "thread.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TRACKED 1024

static pthread_mutex_t track_lock = PTHREAD_MUTEX_INITIALIZER;
/* process.spawn children forked and not yet reaped: while one lives it
 * shares the heap, and folding it (cc_heap_prefork) would copy it */
static _Atomic int live_children;
static int tracked[MAX_TRACKED];
static int ntracked;

static void track_locked(int fd) {
    if (ntracked < MAX_TRACKED) tracked[ntracked++] = fd;
}

static void untrack_locked(int fd) {
    for (int i = 0; i < ntracked; i++)
        if (tracked[i] == fd) {
            tracked[i] = tracked[--ntracked];
            return;
        }
}

void cc_fork_track(int fd, int on) {
    pthread_mutex_lock(&track_lock);
    if (on) track_locked(fd);
    else untrack_locked(fd);
    pthread_mutex_unlock(&track_lock);
}

int cc_pipe_tracked(int fds[2], int flags) {
    pthread_mutex_lock(&track_lock);
    int r = pipe2(fds, O_CLOEXEC | flags) ? -errno : 0;
    if (!r) {
        track_locked(fds[0]);
        track_locked(fds[1]);
    }
    pthread_mutex_unlock(&track_lock);
    return r;
}

static int socketpair_tracked(int fds[2]) {
    pthread_mutex_lock(&track_lock);
    int r = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) ? -errno : 0;
    if (!r) {
        track_locked(fds[0]);
        track_locked(fds[1]);
    }
    pthread_mutex_unlock(&track_lock);
    return r;
}

void cc_close_tracked(int fd) {
    if (fd < 0) return;
    pthread_mutex_lock(&track_lock);
    untrack_locked(fd);
    close(fd);
    pthread_mutex_unlock(&track_lock);
}

/* ---- ending abnormally ---- */

static _Atomic int stopping;
static pthread_mutex_t note_lock = PTHREAD_MUTEX_INITIALIZER;
static char notes[512];
static int nnotes, notes_cut, note_atexit;

void cc_set_stopping(int on) { stopping = on; }
int cc_stopping(void) { return stopping; }

static void report_atexit(void) { cc_exit_report(); }

void cc_exit_note(const char *what) {
    pthread_mutex_lock(&note_lock);
    size_t len = strlen(notes);
    if (len + strlen(what) + 3 < sizeof notes)
        snprintf(notes + len, sizeof notes - len, "%s%s", nnotes ? ", " : "", what);
    else notes_cut = 1;
    nnotes++;
    if (!note_atexit) note_atexit = atexit(report_atexit) == 0;
    pthread_mutex_unlock(&note_lock);
}

void cc_exit_report(void) {
    pthread_mutex_lock(&note_lock);
    if (nnotes)
        fprintf(stderr, "concur: stopped at exit: %s%s\n", notes, notes_cut ? ", ..." : "");
    fflush(stderr);
    nnotes = 0;
    notes_cut = 0;
    notes[0] = '\0';
    pthread_mutex_unlock(&note_lock);
}

/* In a new child: die with the parent, whatever killed it. */
static void die_with_parent(pid_t parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(128 + SIGKILL); /* it died before we asked */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

/* fork() after flushing stdio (so no buffered line is printed twice). In
 * the child, closes every tracked descriptor but keep[0..nkeep) -- the
 * write ends of other children's result pipes, so their readers see EOF
 * when those children exit. The child dies with its parent (SIGKILL,
 * PR_SET_PDEATHSIG) and has the default action for SIGINT and SIGTERM.
 * 0 in the child, the pid in the parent, or -errno. */
static pid_t fork_keeping(const int *keep, int nkeep) {
    fflush(NULL);
    pid_t parent = getpid();
    void *unwinder = cc_unwinder_locate();
    cc_heap_prefork(atomic_load(&live_children) > 0);
    pthread_mutex_lock(&track_lock);
    pid_t pid = fork();
    if (pid == 0) {
        cc_unwinder_release(unwinder);
        die_with_parent(parent);
        int n = 0;
        for (int i = 0; i < ntracked; i++) {
            int kept = 0;
            for (int k = 0; k < nkeep; k++) kept |= tracked[i] == keep[k];
            if (kept) tracked[n++] = tracked[i];
            else close(tracked[i]);
        }
        /* our own result pipe stays tracked: a grandchild must not hold it
         * open, or our parent's join would wait for the grandchild too */
        ntracked = n;
        pthread_mutex_unlock(&track_lock);
        atomic_store(&live_children, 0); /* the parent's children are not ours */
        /* what the parent was stopping or noting is not ours */
        stopping = 0;
        nnotes = 0;
        notes_cut = 0;
        notes[0] = '\0';
        pthread_mutex_init(&note_lock, NULL);
        return 0;
    }
    pthread_mutex_unlock(&track_lock);
    return pid < 0 ? -errno : pid;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

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
        got = waitpid(pid, status, WNOHANG);
        if (got == pid) return 0;
        if (got < 0 && errno != EINTR) return -errno;
        if (cc_interrupted()) return -EINTR;
        double now = cc_now();
        if (deadline >= 0 && now >= deadline) return -ETIMEDOUT;
        if (deadline >= 0 && now + nap > deadline) nap = deadline - now;
        cc_sleep(nap);
        if (nap < 0.01) nap *= 2;
    }
}

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
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, prep[2] = {-1, -1};
    /* stdin is a socketpair so feeding it uses MSG_NOSIGNAL: a program that
     * exits without reading its input must not SIGPIPE us */
    int r = socketpair_tracked(pin);
    if (r || (r = cc_pipe_tracked(pout, 0)) || (r = cc_pipe_tracked(perr, 0)) ||
        (r = cc_pipe_tracked(prep, 0)))
        goto error;
    int keep[4] = {pin[0], pout[1], perr[1], prep[1]};
    pid_t pid = fork_keeping(keep, 4);
    if (pid == 0) exec_child(argv, pin[0], pout[1], perr[1], prep[1]);
    if (pid < 0) {
        r = (int)pid;
        goto error;
    }
    /* the child's ends are the child's */
    cc_close_tracked(pin[0]); cc_close_tracked(pout[1]); cc_close_tracked(perr[1]);
    cc_close_tracked(prep[1]);
    int e = 0;
    if (read(prep[0], &e, sizeof e) != (ssize_t)sizeof e) e = 0; /* EOF: exec worked */
    cc_close_tracked(prep[0]);
    set_nonblock(pin[1]);
    set_nonblock(pout[0]);
    set_nonblock(perr[0]);
    size_t sent = 0;
    if (inlen == 0) { cc_close_tracked(pin[1]); pin[1] = -1; }
    int open_out = 1, open_err = 1;
    while (open_out || open_err) {
        struct pollfd p[3] = {{pout[0], POLLIN, 0}, {perr[0], POLLIN, 0}, {pin[1], POLLOUT, 0}};
        if (!open_out) p[0].fd = -1;
        if (!open_err) p[1].fd = -1;
        int n = poll(p, 3, cc_poll_ms(cc_wait_slice(deadline)));
        if (n < 0 && errno != EINTR) { r = -errno; break; }
        if (cc_interrupted()) { r = -EINTR; break; }
        if (n == 0 && deadline >= 0 && cc_now() >= deadline) { r = -ETIMEDOUT; break; }
        if (p[0].revents && drain(pout[0], out)) open_out = 0;
        if (p[1].revents && drain(perr[0], err)) open_err = 0;
        if (pin[1] >= 0 && p[2].revents) {
            ssize_t w = (p[2].revents & POLLOUT) ? send(pin[1], in + sent, inlen - sent, MSG_NOSIGNAL) : -1;
            if (w > 0) sent += (size_t)w;
            if (w < 0 && errno != EAGAIN) sent = inlen; /* reader gone: stop feeding */
            if (sent >= inlen) { cc_close_tracked(pin[1]); pin[1] = -1; }
        }
    }
    cc_close_tracked(pin[1]);
    cc_close_tracked(pout[0]);
    cc_close_tracked(perr[0]);
    if (r) kill(pid, SIGKILL);
    int w = cc_wait_pid(pid, status, CC_FOREVER);
    if (e) return -e;
    if (r) return r;
    return w;
error: /* nothing forked: close whatever was made (cc_close_tracked skips -1) */
    for (int i = 0; i < 2; i++) {
        cc_close_tracked(pin[i]);
        cc_close_tracked(pout[i]);
        cc_close_tracked(perr[i]);
        cc_close_tracked(prep[i]);
    }
    return r;
}

/* ---- children of process.spawn ---- */

cc_child *cc_child_new(void) {
    cc_child *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->rfd = -1;
    c->owner = cc_pid();
    return c;
}

int cc_child_mine(const cc_child *c) { return c->owner == cc_pid(); }

static void close_result(cc_child *c) {
    if (c->rfd >= 0) {
        close(c->rfd);
        c->rfd = -1;
    }
}

/* Give back the counts kept for the child: only the owner holds them (in
 * another process the record is a copy), and only once the child is gone
 * (reaped, or never forked). */
static void release_held(cc_child *c) {
    int mine = cc_child_mine(c) && (c->reaped || c->pid <= 0);
    for (size_t off = 0; mine && off < c->held.len; off += sizeof(cc_obj *)) {
        cc_obj *o;
        memcpy(&o, c->held.data + off, sizeof o);
        cc_release(o);
    }
    cc_buf_free(&c->held);
}

void cc_child_free(cc_child *c) {
    if (!c) return;
    close_result(c);
    if (c->holds_refs && cc_child_mine(c)) cc_msg_release(c->result.data + 1, c->result.len - 1);
    release_held(c);
    cc_buf_free(&c->result);
    free(c);
}

pid_t cc_child_fork(cc_child *c, int *wfd) {
    int fds[2];
    /* both ends tracked from birth: a fork by another thread must not
     * inherit them (the write end would hold our EOF back) */
    int r = cc_pipe_tracked(fds, 0);
    if (r) return r;
    pid_t pid = fork_keeping(&fds[1], 1);
    if (pid == 0) { /* fork_keeping closed the read end here */
        *wfd = fds[1];
        return 0;
    }
    if (pid < 0) {
        r = (int)pid;
        goto error;
    }
    cc_close_tracked(fds[1]);
    /* the read end is ours alone; children forked later need not close it */
    cc_fork_track(fds[0], 0);
    set_nonblock(fds[0]);
    c->pid = pid;
    c->owner = cc_pid();
    atomic_fetch_add(&live_children, 1);
    c->rfd = fds[0];
    return pid;
error:
    cc_close_tracked(fds[0]);
    cc_close_tracked(fds[1]);
    return r;
}

static void write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* the parent is gone: nobody to tell */
        p += w;
        n -= (size_t)w;
    }
}

/* On the pipe: the status byte, the message's length (8 bytes), the
 * message. The length tells a whole result from one cut short by a kill. */
#define RESULT_HEAD 9

void cc_child_send(int wfd, int status, const void *msg, size_t len) {
    unsigned char head[RESULT_HEAD];
    uint64_t n = len;
    head[0] = (unsigned char)status;
    memcpy(head + 1, &n, sizeof n);
    write_all(wfd, head, sizeof head);
    if (len) write_all(wfd, msg, len);
    cc_close_tracked(wfd);
}

/* The pipe was read to EOF: keep "status byte, message" if all of it came,
 * else nothing -- the child died while sending (a kill), which is what join
 * must report, not a corrupt message. The references a cut message names
 * are given back if its header and reference list arrived (they are the
 * message's: the child took them when it encoded); otherwise they leak. */
static void take_result(cc_child *c) {
    uint64_t n = 0;
    size_t got = c->result.len;
    if (got >= RESULT_HEAD) memcpy(&n, c->result.data + 1, sizeof n);
    if (got >= RESULT_HEAD && n == got - RESULT_HEAD) {
        memmove(c->result.data + 1, c->result.data + RESULT_HEAD, got - RESULT_HEAD);
        c->result.len = got - (RESULT_HEAD - 1);
        c->holds_refs = c->result.len > 1; /* the message owns its references */
        return;
    }
    if (got > RESULT_HEAD) cc_msg_release(c->result.data + RESULT_HEAD, got - RESULT_HEAD);
    c->result.len = 0;
    c->holds_refs = 0;
}

static void reaped(cc_child *c) {
    if (!c->reaped && cc_child_mine(c)) atomic_fetch_sub(&live_children, 1);
    c->reaped = 1;
    release_held(c);
}

int cc_child_poll(cc_child *c) {
    if (c->reaped) return 1;
    if (!cc_child_mine(c) || c->pid <= 0) return 0;
    if (waitpid(c->pid, &c->status, WNOHANG) == c->pid) reaped(c);
    return c->reaped;
}

int cc_child_finish(cc_child *c, double deadline, int returned) {
    if (c->rfd >= 0) {
        int r = cc_read_all(c->rfd, &c->result, deadline);
        if (r) return r;
        close_result(c);
        take_result(c);
    }
    if (!c->reaped) {
        double until = deadline;
        int done = returned && c->result.len > 0 && (c->result.data[0] & CC_CHILD_FINISHING);
        if (done) { /* a short look: it may have ended already */
            double soon = cc_deadline(0.1);
            if (until < 0 || soon < until) until = soon;
        }
        int r = cc_wait_pid(c->pid, &c->status, until);
        if (r == -ETIMEDOUT && done) return 0;
        if (r) return r;
        reaped(c);
    }
    return 0;
}

int cc_child_kill(cc_child *c, int sig) {
    if (cc_child_poll(c)) return -ESRCH;
    return kill(c->pid, sig) ? -errno : 0;
}

void cc_child_stop(cc_child *c, double grace) {
    _Atomic int *flag = cc_interrupt_get();
    cc_interrupt_set(NULL);
    if (!cc_child_poll(c)) {
        kill(c->pid, c->daemon ? SIGKILL : SIGTERM);
        int r = cc_wait_pid(c->pid, &c->status, cc_deadline(grace));
        if (r == -ETIMEDOUT) {
            kill(c->pid, SIGKILL);
            r = cc_wait_pid(c->pid, &c->status, CC_FOREVER);
        }
        if (r) c->status = 0;
        reaped(c);
        c->stopped = 1;
        if (!c->daemon && cc_stopping()) {
            char note[96];
            snprintf(note, sizeof note, "process %d (%s)", (int)c->pid, c->name);
            cc_exit_note(note);
        }
    } else if (WIFSIGNALED(c->status)) {
        c->stopped = 1; /* Ctrl-C reached it too: nothing to report */
    }
    /* it may have written its result before it was stopped (or ended) */
    if (c->rfd >= 0 && cc_read_all(c->rfd, &c->result, cc_deadline(0.5)) == 0) take_result(c);
    else c->result.len = 0; /* not all of it: as if it sent nothing */
    close_result(c);
    cc_interrupt_set(flag);
}

int cc_cpu_count(void) {
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? n : 1;
}
