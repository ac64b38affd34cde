/*
 * pipe.c -- framed messages over a socketpair, across threads and processes.
 *
 * Framing: a u64 length, then the message. A sender holds the end's send
 * lock (a cc_mutex in the arena) for the whole frame and writes header and
 * body with one sendmsg (MSG_NOSIGNAL: a vanished reader is -EPIPE, never a
 * SIGPIPE), so two senders never interleave. A receiver holds the recv lock
 * for a whole frame.
 *
 * Receive buffer: each end has a 64 KiB buffer in the arena, guarded by the
 * recv lock, so one read() can bring in many small frames and the next
 * recv() -- from any thread or process holding the end -- takes them from
 * memory. A frame larger than the buffer is read straight into the caller's
 * buffer.
 *
 * Which processes may use an end: its fd number is valid in the process
 * that made it and in processes forked from that one afterwards. Every fork
 * bumps a counter in the arena; each process remembers its ancestry as
 * (ancestor pid, counter at that fork) pairs, inherited by its children. An
 * end records its creator and the counter at creation; cc_pipe_usable checks
 * the ancestry. Elsewhere the end is refused instead of writing to whatever
 * file has that number there.
 *
 * close() shuts the socket down for every holder (the peer sees EOF at once,
 * even while forked children still hold the fd) and marks the end closed.
 * The fd itself is closed when the end is destroyed, by the process that
 * destroys it (if the fd is valid there); other processes drop it at exit.
 */
#include "pipe.h"

#include <errno.h>
#include <stddef.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define RBUF (64u * 1024u)
#define MAX_ANCESTRY 64

struct cc_pipe {
    cc_obj hdr;
    int fd;
    int can_read, can_write;
    _Atomic int closed;
    pid_t creator;
    uint64_t birth;        /* fork counter when made */
    cc_mutex send_lock, recv_lock;
    size_t rpos, rlen;     /* buffered bytes: rbuf[rpos, rlen) */
    char rbuf[RBUF];
};

/* ---- fork ancestry ---- */

static _Atomic uint64_t *fork_counter; /* in the arena */
static struct { pid_t pid; uint64_t at; } ancestry[MAX_ANCESTRY];
static int nancestry;
static uint64_t forking_at;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void before_fork(void) {
    if (fork_counter) forking_at = ++*fork_counter;
}

static void in_child(void) {
    if (nancestry < MAX_ANCESTRY) {
        ancestry[nancestry].pid = getppid();
        ancestry[nancestry].at = forking_at;
        nancestry++;
    }
}

static void setup(void) {
    fork_counter = cc_calloc(sizeof *fork_counter);
    pthread_atfork(before_fork, NULL, in_child);
}

int cc_pipe_usable(cc_pipe *p) {
    if (p->creator == cc_pid()) return 1;
    for (int i = 0; i < nancestry; i++)
        if (ancestry[i].pid == p->creator && ancestry[i].at > p->birth) return 1;
    return 0;
}

/* ---- life cycle ---- */

static int make_end(cc_pipe **out, int fd, int can_read, int can_write) {
    cc_pipe *p = cc_alloc(sizeof *p);
    if (!p) return -ENOMEM;
    memset(p, 0, offsetof(cc_pipe, rbuf));
    cc_obj_init(&p->hdr, CC_T_PIPE);
    p->fd = fd;
    p->can_read = can_read;
    p->can_write = can_write;
    p->creator = cc_pid();
    p->birth = fork_counter ? *fork_counter : 0;
    cc_mutex_init(&p->send_lock);
    cc_mutex_init(&p->recv_lock);
    *out = p;
    return 0;
}

int cc_pipe_new(cc_pipe **a, cc_pipe **b, int duplex) {
    pthread_once(&once, setup);
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds)) return -errno;
    /* room for bursts of small messages and fewer wake-ups for big ones */
    int size = 1 << 20;
    for (int i = 0; i < 2; i++) {
        setsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    int r = make_end(a, fds[0], 1, duplex);
    if (!r) {
        r = make_end(b, fds[1], duplex, 1);
        if (r) cc_release(&(*a)->hdr);
    }
    if (r) {
        close(fds[0]);
        close(fds[1]);
        return r;
    }
    if (!duplex) { /* a reads, b writes */
        shutdown(fds[0], SHUT_WR);
        shutdown(fds[1], SHUT_RD);
    }
    return 0;
}

void cc_pipe_destroy(cc_obj *o) {
    cc_pipe *p = (cc_pipe *)o;
    if (cc_pipe_usable(p)) close(p->fd);
    cc_mutex_destroy(&p->send_lock);
    cc_mutex_destroy(&p->recv_lock);
    cc_free(p);
}

int cc_pipe_close(cc_pipe *p) {
    if (!p->closed) {
        p->closed = 1;
        if (cc_pipe_usable(p)) shutdown(p->fd, SHUT_RDWR);
    }
    return 0;
}

int cc_pipe_closed(cc_pipe *p) { return p->closed; }
int cc_pipe_readable(cc_pipe *p) { return p->can_read; }
int cc_pipe_writable(cc_pipe *p) { return p->can_write; }
int cc_pipe_fd(cc_pipe *p) { return p->fd; }

/* ---- waiting ---- */

/* ---- send ---- */

int cc_pipe_send(cc_pipe *p, const void *msg, size_t len, double deadline) {
    if (p->closed) return -EBADF;
    if (!p->can_write) return -EINVAL;
    uint64_t hdr = len;
    struct iovec iov[2] = {{&hdr, 8}, {(void *)msg, len}};
    struct msghdr mh = {0};
    mh.msg_iov = iov;
    mh.msg_iovlen = 2;
    int r = cc_mutex_lock(&p->send_lock, deadline);
    if (r && r != -EOWNERDEAD) return r;
    size_t left = 8 + len;
    while (left > 0) {
        ssize_t n = sendmsg(p->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            left -= (size_t)n;
            while (n > 0 && mh.msg_iovlen > 0) { /* advance the iovecs */
                size_t take = (size_t)n < mh.msg_iov[0].iov_len ? (size_t)n : mh.msg_iov[0].iov_len;
                mh.msg_iov[0].iov_base = (char *)mh.msg_iov[0].iov_base + take;
                mh.msg_iov[0].iov_len -= take;
                n -= (ssize_t)take;
                if (mh.msg_iov[0].iov_len == 0) {
                    mh.msg_iov++;
                    mh.msg_iovlen--;
                }
            }
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* a frame once started is finished: no deadline mid-frame */
            int w = cc_wait_fd(p->fd, POLLOUT, left < 8 + len ? CC_FOREVER : deadline);
            if (w == 0) {
                r = -ETIMEDOUT;
                break;
            }
            if (w < 0) {
                r = w;
                break;
            }
            continue;
        }
        r = (errno == EPIPE || errno == ECONNRESET) ? -EPIPE : -errno;
        break;
    }
    if (left == 0) r = 0;
    cc_mutex_unlock(&p->send_lock);
    return r;
}

/* ---- recv ---- */

/* Pull bytes into the end's buffer; 1 got some, 0 EOF, negative errno. */
static int fill(cc_pipe *p, double deadline) {
    if (p->rpos == p->rlen) p->rpos = p->rlen = 0;
    else if (p->rpos > 0 && p->rlen == RBUF) { /* make room at the end */
        memmove(p->rbuf, p->rbuf + p->rpos, p->rlen - p->rpos);
        p->rlen -= p->rpos;
        p->rpos = 0;
    }
    for (;;) {
        ssize_t n = recv(p->fd, p->rbuf + p->rlen, RBUF - p->rlen, MSG_DONTWAIT);
        if (n > 0) {
            p->rlen += (size_t)n; /* the commit */
            return 1;
        }
        if (n == 0) return 0;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return errno == ECONNRESET ? 0 : -errno;
        int w = cc_wait_fd(p->fd, POLLIN, deadline);
        if (w == 0) return -ETIMEDOUT;
        if (w < 0) return w;
    }
}

static size_t buffered(cc_pipe *p) { return p->rlen - p->rpos; }

/* Read exactly n bytes of a frame already started (no deadline). */
static int read_exact(cc_pipe *p, char *dst, size_t n) {
    size_t have = buffered(p) < n ? buffered(p) : n;
    memcpy(dst, p->rbuf + p->rpos, have);
    p->rpos += have;
    while (have < n) {
        ssize_t got = recv(p->fd, dst + have, n - have, 0);
        if (got > 0) have += (size_t)got;
        else if (got == 0) return -EPIPE; /* a frame cut short: the writer died */
        else if (errno != EINTR && errno != EAGAIN) return -errno;
        else if (errno == EAGAIN && cc_wait_fd(p->fd, POLLIN, CC_FOREVER) < 0) return -EINTR;
    }
    return 0;
}

int cc_pipe_recv(cc_pipe *p, cc_buf *out, double deadline) {
    if (p->closed) return -EBADF;
    if (!p->can_read) return -EINVAL;
    int r = cc_mutex_lock(&p->recv_lock, deadline);
    if (r && r != -EOWNERDEAD) return r;
    r = 0;
    while (buffered(p) < 8) {
        int f = fill(p, deadline);
        if (f <= 0) {
            r = f == 0 ? -EPIPE : f;
            break;
        }
    }
    if (!r) {
        uint64_t len;
        memcpy(&len, p->rbuf + p->rpos, 8);
        p->rpos += 8;
        r = cc_buf_reserve(out, len);
        if (!r) r = read_exact(p, out->data, len);
        out->len = r ? 0 : len;
    }
    cc_mutex_unlock(&p->recv_lock);
    return r;
}

int cc_pipe_poll(cc_pipe *p, double deadline) {
    if (p->closed || !p->can_read) return 0;
    if (buffered(p)) return 1;
    int w = cc_wait_fd(p->fd, POLLIN, deadline);
    return w;
}
