/*
 * pipe.c -- framed messages over a socketpair, across threads and processes,
 * that stay in step when a sender or a receiver dies, stops or gives up.
 *
 * Framing: a 24-byte header -- a magic word, a check word, the u64 length,
 * and the u64 offset of the frame in its direction's byte stream -- then
 * the message. The check word covers length and offset. A header is checked
 * before a byte of the body is trusted and before anything is allocated for
 * it, and its offset must be exactly where the previous frame ended: a
 * stream that has slipped out of step is *detected* and the pipe becomes
 * broken, instead of payload bytes being decoded as a length. Lengths are
 * bounded by CC_PIPE_MAX_MSG.
 *
 * The link. The two ends share a block in the arena, refcounted by them,
 * with one record per direction (frames sent by end i are d[i]): the send
 * lock, the progress of the frame being sent (send_left) and the bytes sent
 * so far (sent); the recv lock, the 64 KiB receive buffer, the progress of
 * the frame being received (len, left, keep, next, scan); and the broken
 * state. Progress is updated with single stores as bytes move (like libuv's
 * write_index), so whoever takes the lock next -- another thread or another
 * process -- finds the truth:
 *
 *  - A receiver that times out or is interrupted mid-frame copies the body
 *    bytes it already has into the arena (keep); the next recv resumes.
 *  - A receiver killed holding the recv lock hands it on with EOWNERDEAD.
 *    It may have taken any number of bytes off the socket without recording
 *    them (SIGKILL lands when a recv() returns, and a big recv() takes
 *    milliseconds), so the next receiver drops that frame and *scans* for
 *    the next real header: magic and check word valid, offset at or past
 *    the end of the dropped frame and not past what was sent. If the stream
 *    goes idle first (no frame being sent, socket empty: checked holding the
 *    send lock), everything was taken and it restarts at `sent`. The dead
 *    receiver's message is lost, as a queue item taken by a killed process.
 *  - A sender dies holding its robust send lock with send_left > 0, or is
 *    interrupted mid-frame: the pipe is broken. A receiver stalled mid-frame
 *    looks at the sender every WATCH seconds (trylock on the send lock:
 *    EOWNERDEAD, or free, with send_left > 0 means no one will finish the
 *    frame), so it does not need a timeout to notice. Breaking records why
 *    and shuts the socket down, which wakes every waiter on both ends; from
 *    then on send and recv on either end return -EPROTO. A stopped sender
 *    (SIGSTOP) still holds its lock: receivers time out and resume later.
 *
 * Staging. A small frame (up to STAGE / 2 with its header) is not written
 * to the socket by its send: it is appended, whole, to the direction's
 * staging area in the link (16 KiB, guarded by the send lock) and committed
 * with one store of st_len -- a sender killed before that store sent
 * nothing; after it, the frame is in shared memory for any receiver. The
 * staged bytes are the stream bytes [st_off, st_off + st_len), st_off being
 * `sent` when staging began. They reach the socket (one sendmsg for many
 * frames) when the area is full, before a large frame, or at once when a
 * receiver is about to sleep on the socket (it sets `want`, then looks at
 * st_len; the sender stores st_len, then looks at `want`: one of them sees
 * the other; a sender that takes over a dead sender's lock sets `want`,
 * which the dead one may have cleared in a flush that never wrote; and a
 * receiver that finds frames staged that it cannot take yet looks again
 * every WATCH seconds). A receiver that has read everything put on the socket
 * (next + buffered == sent) takes the staged frames itself under the send
 * lock: one memcpy into its buffer, committed sender side first (sent, then
 * st_len) and receiver side after (win). Killed between the two it loses
 * what it took, like a receiver killed after a recv(); the next one
 * resyncs. Whoever takes the send lock drops a staging that is no longer
 * ahead of `sent` (its taker or its flusher died after the fact). So with
 * a reader keeping up, small messages cost no system call on either side;
 * a sleeping reader costs one wake-up per sleep, as before. A send into a
 * pipe whose reading end was closed or destroyed fails with -EPIPE
 * (rclosed), since a staged send does not touch the socket.
 *
 * The receive buffer window (start, end) is one 64-bit word, so moving it
 * is one store. A frame larger than what is buffered is read straight into
 * the caller's buffer; a frame once started is never left half-sent by a
 * timeout (the deadline applies before the first byte only).
 *
 * Which processes may use an end: its fd number is valid in the process
 * that made it and in processes forked from that one afterwards. Every fork
 * bumps a counter in the arena; each process remembers its ancestry as
 * (ancestor pid, counter at that fork) pairs, inherited by its children. An
 * end records its creator and the counter at creation; cc_pipe_usable checks
 * the ancestry. Elsewhere the end is refused instead of writing to whatever
 * file has that number there.
 *
 * Descriptors: each process keeps a local table of the pipe fds it holds
 * (inherited through fork), each with the end's unique serial. An end's
 * fd is closed by the process that destroys it; every other holder closes
 * its copy when it next makes or destroys a pipe and finds that serial gone.
 * close() shuts the socket down for every holder (the peer sees EOF at
 * once, even while forked children still hold the fd).
 */
#include "pipe.h"
#include "wait.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF (64u * 1024u)
#define HDR 24u
#define MAGIC 0x31504343u /* "CCP1" */
#define WATCH 0.1         /* how often a receiver stalled mid-frame looks at the sender */
#define MAX_ANCESTRY 64
#define STAGE (16u * 1024u) /* per direction; frames up to STAGE / 2 are staged */

enum { INTACT = 0, SENDER_DIED, SENDER_STOPPED, BAD_HEADER, OUT_OF_STEP, CUT_SHORT };

/* One direction: frames sent by one end, received by the other. */
typedef struct dir {
    cc_mutex send_lock;
    _Atomic uint64_t send_left; /* bytes of the frame being sent still to go; 0 between frames */
    _Atomic uint64_t sent;      /* bytes ever put on the socket in this direction */
    cc_mutex recv_lock;
    /* the rest is guarded by recv_lock */
    _Atomic uint64_t win;       /* buffered bytes rbuf[start, end): start | end << 32 */
    _Atomic uint64_t len, left; /* frame being received: body length, body bytes not yet taken */
    char *_Atomic keep;         /* body bytes [0, len - left) of a receiver that stopped */
    _Atomic uint64_t next;      /* stream offset where the next header starts */
    _Atomic int scan;           /* lost our place: look for the next real header */
    char *rbuf;                 /* RBUF bytes in the arena; NULL if no one receives */
    cc_watch watch;             /* bumped after every send, and on close and break (wait.c) */
    /* staging, guarded by send_lock: whole small frames not yet on the
     * socket, stream bytes [st_off, st_off + st_len) */
    char *stage;                /* STAGE bytes in the arena; NULL if no one receives */
    _Atomic uint64_t st_off, st_len;
    _Atomic uint32_t want;      /* a receiver is about to sleep on the socket: flush */
    _Atomic uint32_t rclosed;   /* the receiving end was closed or destroyed */
} dir;

typedef struct plink {
    _Atomic uint32_t refs;
    _Atomic uint32_t broken; /* INTACT or why not */
    dir d[2];
} plink;

struct cc_pipe {
    cc_obj hdr;
    int fd;
    int side; /* sends into d[side], receives from d[!side] */
    int can_read, can_write;
    _Atomic int closed;
    pid_t creator;
    uint64_t birth;           /* fork counter when made */
    _Atomic uint64_t serial;  /* unique; 0 once destroyed */
    plink *ln;
};

/* ---- fork ancestry and the table of fds held here ---- */

static _Atomic uint64_t *fork_counter; /* in the arena */
static struct { pid_t pid; uint64_t at; } ancestry[MAX_ANCESTRY];
static int nancestry;
static uint64_t forking_at;
static pthread_once_t once = PTHREAD_ONCE_INIT;

typedef struct held { int fd; cc_pipe *p; uint64_t serial; } held;
static held *fds;
static size_t nfds, capfds;
static pthread_mutex_t fds_lock = PTHREAD_MUTEX_INITIALIZER;

static void before_fork(void) {
    pthread_mutex_lock(&fds_lock);
    if (fork_counter) forking_at = ++*fork_counter;
}

static void in_parent(void) { pthread_mutex_unlock(&fds_lock); }

static void in_child(void) {
    pthread_mutex_unlock(&fds_lock);
    if (nancestry < MAX_ANCESTRY) {
        ancestry[nancestry].pid = getppid();
        ancestry[nancestry].at = forking_at;
        nancestry++;
    }
}

static void setup(void) {
    fork_counter = cc_calloc(sizeof *fork_counter);
    pthread_atfork(before_fork, in_parent, in_child);
}

int cc_pipe_usable(cc_pipe *p) {
    if (p->creator == cc_pid()) return 1;
    for (int i = 0; i < nancestry; i++)
        if (ancestry[i].pid == p->creator && ancestry[i].at > p->birth) return 1;
    return 0;
}

/* Strictly increasing CLOCK_MONOTONIC nanoseconds: an end made at the
 * address of a destroyed one was made later, so its serial differs. */
static uint64_t new_serial(void) {
    static _Atomic uint64_t last;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t prev = atomic_load(&last), next;
    do next = now > prev ? now : prev + 1;
    while (!atomic_compare_exchange_weak(&last, &prev, next));
    return next;
}

/* Close the fds of ends that were destroyed in another process. */
static void sweep_locked(void) {
    for (size_t i = 0; i < nfds;) {
        if (atomic_load(&fds[i].p->serial) == fds[i].serial) {
            i++;
            continue;
        }
        close(fds[i].fd);
        fds[i] = fds[--nfds];
    }
}

static void sweep(void) {
    pthread_mutex_lock(&fds_lock);
    sweep_locked();
    pthread_mutex_unlock(&fds_lock);
}

static int track(cc_pipe *a, cc_pipe *b) {
    pthread_mutex_lock(&fds_lock);
    int r = 0;
    if (nfds + 2 > capfds) {
        size_t cap = capfds ? capfds * 2 : 64;
        held *n = realloc(fds, cap * sizeof *n);
        if (n) {
            fds = n;
            capfds = cap;
        } else {
            r = -ENOMEM;
        }
    }
    if (!r) {
        fds[nfds++] = (held){a->fd, a, a->serial};
        fds[nfds++] = (held){b->fd, b, b->serial};
    }
    pthread_mutex_unlock(&fds_lock);
    return r;
}

/* Close p's fd if this process holds it. */
static void untrack(cc_pipe *p) {
    pthread_mutex_lock(&fds_lock);
    for (size_t i = 0; i < nfds; i++) {
        if (fds[i].p == p && fds[i].serial == p->serial) {
            close(fds[i].fd);
            fds[i] = fds[--nfds];
            break;
        }
    }
    sweep_locked();
    if (nfds == 0) { /* nothing held: no table left behind (a module can be unloaded) */
        free(fds);
        fds = NULL;
        capfds = 0;
    }
    pthread_mutex_unlock(&fds_lock);
}

/* The module is unloaded (dlclose at lua_close) or the program ends: the
 * table goes; the fds it lists stay open, as the process's own. */
__attribute__((destructor)) static void forget_table(void) {
    free(fds);
    fds = NULL;
    nfds = capfds = 0;
}

/* ---- life cycle ---- */

static void link_free(plink *ln) {
    for (int i = 0; i < 2; i++) {
        dir *d = &ln->d[i];
        if (d->keep) cc_free(d->keep);
        if (d->rbuf) cc_free(d->rbuf);
        if (d->stage) cc_free(d->stage);
        cc_mutex_destroy(&d->send_lock);
        cc_mutex_destroy(&d->recv_lock);
    }
    cc_free(ln);
}

/* The receive buffers are blocks of their own (the arena's 80 KiB class,
 * shared with queue chunks), and only for directions that have a reader. */
static plink *link_new(int duplex) {
    plink *ln = cc_calloc(sizeof *ln);
    if (!ln) return NULL;
    atomic_store(&ln->refs, 2);
    atomic_store(&ln->broken, INTACT);
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        dir *d = &ln->d[i];
        cc_mutex_init(&d->send_lock);
        cc_mutex_init(&d->recv_lock);
        if (duplex || i == 1) { /* a one-way pipe: b (side 1) sends to a */
            d->rbuf = cc_alloc(RBUF);
            d->stage = cc_alloc(STAGE);
            if (!d->rbuf || !d->stage) ok = 0;
        }
    }
    if (!ok) {
        link_free(ln);
        return NULL;
    }
    return ln;
}

static void link_release(plink *ln) {
    if (atomic_fetch_sub(&ln->refs, 1) == 1) link_free(ln);
}

static cc_pipe *make_end(plink *ln, int side, int fd, int can_read, int can_write) {
    cc_pipe *p = cc_calloc(sizeof *p);
    if (!p) return NULL;
    cc_obj_init(&p->hdr, CC_T_PIPE);
    p->fd = fd;
    p->side = side;
    p->can_read = can_read;
    p->can_write = can_write;
    p->creator = cc_pid();
    p->birth = fork_counter ? *fork_counter : 0;
    p->serial = new_serial();
    p->ln = ln;
    return p;
}

int cc_pipe_new(cc_pipe **a, cc_pipe **b, int duplex) {
    pthread_once(&once, setup);
    sweep();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) return -errno;
    /* room for bursts of small messages and fewer wake-ups for big ones */
    int size = 1 << 20;
    for (int i = 0; i < 2; i++) {
        setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    plink *ln = link_new(duplex);
    cc_pipe *ea = ln ? make_end(ln, 0, sv[0], 1, duplex) : NULL;
    cc_pipe *eb = ea ? make_end(ln, 1, sv[1], duplex, 1) : NULL;
    int r = eb ? track(ea, eb) : -ENOMEM;
    if (r) {
        if (eb) cc_free(eb);
        if (ea) cc_free(ea);
        if (ln) link_free(ln);
        close(sv[0]);
        close(sv[1]);
        return r;
    }
    if (!duplex) { /* a reads, b writes */
        shutdown(sv[0], SHUT_WR);
        shutdown(sv[1], SHUT_RD);
    }
    *a = ea;
    *b = eb;
    return 0;
}

void cc_pipe_destroy(cc_obj *o) {
    cc_pipe *p = (cc_pipe *)o;
    if (p->can_read) atomic_store(&p->ln->d[!p->side].rclosed, 1); /* senders: -EPIPE */
    untrack(p);
    atomic_store(&p->serial, 0); /* other holders close their copies */
    link_release(p->ln);
    cc_free(p);
}

static void bump_both(plink *ln) {
    cc_watch_bump(&ln->d[0].watch);
    cc_watch_bump(&ln->d[1].watch);
}

int cc_pipe_close(cc_pipe *p) {
    if (!p->closed) {
        p->closed = 1;
        if (p->can_read) atomic_store(&p->ln->d[!p->side].rclosed, 1); /* senders: -EPIPE */
        if (cc_pipe_usable(p)) shutdown(p->fd, SHUT_RDWR);
        bump_both(p->ln);
    }
    return 0;
}

cc_watch *cc_pipe_watch(cc_pipe *p) { return &p->ln->d[!p->side].watch; }

int cc_pipe_closed(cc_pipe *p) { return p->closed; }
int cc_pipe_readable(cc_pipe *p) { return p->can_read; }
int cc_pipe_writable(cc_pipe *p) { return p->can_write; }
int cc_pipe_fd(cc_pipe *p) { return p->fd; }

const char *cc_pipe_broken(cc_pipe *p) {
    switch (atomic_load(&p->ln->broken)) {
    case INTACT: return NULL;
    case SENDER_DIED: return "a sender died in the middle of a message";
    case SENDER_STOPPED: return "a sender was interrupted in the middle of a message";
    case BAD_HEADER: return "a message header did not check out: the stream is out of step";
    case OUT_OF_STEP: return "the rest of a message never came: the stream is out of step";
    default: return "the connection ended in the middle of a message";
    }
}

/* Record why (the first reason wins) and wake everyone on both ends. */
static int set_broken(cc_pipe *p, uint32_t why) {
    uint32_t intact = INTACT;
    atomic_compare_exchange_strong(&p->ln->broken, &intact, why);
    shutdown(p->fd, SHUT_RDWR);
    bump_both(p->ln);
    return -EPROTO;
}

/* Progress stores: ordered (release) but without the full fence a plain
 * assignment to an _Atomic would cost; x86 makes them plain moves. */
static inline void put64(_Atomic uint64_t *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_release);
}

/* ---- frame headers ---- */

/* magic, check word, length, and the frame's offset in the direction's
 * byte stream: a receiver knows where the next header must start, and one
 * that lost its place can recognise the next real header */
static uint32_t check_word(uint64_t len, uint64_t off) {
    uint64_t h = (len ^ MAGIC) * 0x9E3779B97F4A7C15ull;
    h ^= (off + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
    return (uint32_t)(h >> 32) ^ (uint32_t)h;
}

static void put_header(unsigned char *h, uint64_t len, uint64_t off) {
    uint32_t m = MAGIC, c = check_word(len, off);
    memcpy(h, &m, 4);
    memcpy(h + 4, &c, 4);
    memcpy(h + 8, &len, 8);
    memcpy(h + 16, &off, 8);
}

static int header_ok(const char *h, uint64_t *len, uint64_t *off) {
    uint32_t m, c;
    memcpy(&m, h, 4);
    if (m != MAGIC) return 0;
    memcpy(&c, h + 4, 4);
    memcpy(len, h + 8, 8);
    memcpy(off, h + 16, 8);
    return c == check_word(*len, *off) && *len <= CC_PIPE_MAX_MSG;
}

/* ---- send ---- */

static void advance(struct msghdr *mh, size_t n) {
    while (n > 0 && mh->msg_iovlen > 0) {
        size_t take = n < mh->msg_iov[0].iov_len ? n : mh->msg_iov[0].iov_len;
        mh->msg_iov[0].iov_base = (char *)mh->msg_iov[0].iov_base + take;
        mh->msg_iov[0].iov_len -= take;
        n -= take;
        if (mh->msg_iov[0].iov_len == 0) {
            mh->msg_iov++;
            mh->msg_iovlen--;
        }
    }
}

/* Put bytes on the socket; their progress is in d->send_left all along. */
static int write_out(cc_pipe *p, dir *d, struct iovec *iov, int niov, size_t total, double deadline) {
    struct msghdr mh = {0};
    mh.msg_iov = iov;
    mh.msg_iovlen = (size_t)niov;
    size_t left = total;
    put64(&d->send_left, total);
    for (;;) {
        ssize_t n = sendmsg(p->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            left -= (size_t)n;
            put64(&d->sent, d->sent + (uint64_t)n);
            put64(&d->send_left, left);
            if (left == 0) return 0;
            advance(&mh, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        int r;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* a frame once started is finished: no deadline mid-frame */
            int w = cc_wait_fd(p->fd, POLLOUT, left < total ? CC_FOREVER : deadline);
            if (w > 0) continue;
            r = w == 0 ? -ETIMEDOUT : w;
        } else {
            r = (errno == EPIPE || errno == ECONNRESET) ? -EPIPE : -errno;
        }
        if (p->ln->broken) return -EPROTO;
        if (left < total && r != -EPIPE) set_broken(p, SENDER_STOPPED);
        put64(&d->send_left, 0);
        return r;
    }
}

static int write_frame(cc_pipe *p, dir *d, const void *msg, size_t len, double deadline) {
    unsigned char hdr[HDR];
    put_header(hdr, len, d->sent);
    struct iovec iov[2] = {{hdr, HDR}, {(void *)msg, len}};
    return write_out(p, d, iov, 2, HDR + len, deadline);
}

/* Staged bytes that are no longer ahead of the stream (a flusher died
 * after its last byte, or a receiver after taking them) are dropped.
 * send_lock held. */
static void stage_fix(dir *d) {
    if (d->st_len && d->st_off != d->sent) put64(&d->st_len, 0);
}

/* Put the staged frames on the socket. send_lock held. */
static int flush(cc_pipe *p, dir *d, double deadline) {
    atomic_store(&d->want, 0);
    if (!d->st_len) return 0;
    struct iovec iov = {d->stage, (size_t)d->st_len};
    int r = write_out(p, d, &iov, 1, (size_t)d->st_len, deadline);
    if (!r) put64(&d->st_len, 0); /* sent == st_off + st_len now: the commit */
    return r;
}

/* A small frame goes to the staging area: one memcpy, no system call. It
 * reaches the socket when the area fills, before a large frame, or at once
 * when a receiver is about to sleep (want); a receiver that finds the socket
 * drained takes it from there itself. */
static int stage_frame(cc_pipe *p, dir *d, const void *msg, size_t len, double deadline) {
    size_t need = HDR + len;
    if (d->st_len + need > STAGE) {
        int r = flush(p, d, deadline);
        if (r) return r;
    }
    if (!d->st_len) put64(&d->st_off, d->sent);
    char *at = d->stage + d->st_len;
    put_header((unsigned char *)at, len, d->st_off + d->st_len);
    memcpy(at + HDR, msg, len);
    atomic_store(&d->st_len, d->st_len + need); /* the commit; a full fence before want is read */
    if (atomic_load(&d->want)) {
        int r = flush(p, d, deadline);
        if (r == -ETIMEDOUT) r = 0; /* staged all the same: the receiver takes it */
        return r;
    }
    return 0;
}

int cc_pipe_send(cc_pipe *p, const void *msg, size_t len, double deadline) {
    if (p->closed) return -EBADF;
    if (!p->can_write) return -EINVAL;
    if ((uint64_t)len > CC_PIPE_MAX_MSG) return -EMSGSIZE;
    dir *d = &p->ln->d[p->side];
    int r = cc_mutex_lock(&d->send_lock, deadline);
    if (r == -EOWNERDEAD && d->send_left) set_broken(p, SENDER_DIED);
    else if (r && r != -EOWNERDEAD) return r;
    /* a sender killed in flush() after clearing `want` and before its
     * bytes reached the socket may have hidden a sleeping receiver's
     * request: flush what is staged from now on */
    if (r == -EOWNERDEAD) atomic_store(&d->want, 1);
    if (p->ln->broken) r = -EPROTO;
    else if (d->rclosed) r = -EPIPE;
    else {
        stage_fix(d);
        if (d->stage && HDR + len <= STAGE / 2) {
            r = stage_frame(p, d, msg, len, deadline);
        } else {
            r = flush(p, d, deadline);
            if (!r) r = write_frame(p, d, msg, len, deadline);
        }
    }
    cc_mutex_unlock(&d->send_lock);
    cc_watch_bump(&d->watch);
    return r;
}

/* ---- recv ---- */

#define WIN(start, end) ((uint64_t)(start) | (uint64_t)(end) << 32)

enum { W_PLAIN, W_MID, W_SCAN }; /* waiting for a header, mid-frame, resynchronising */
#define RESYNCED 2

static size_t buffered(dir *d) {
    uint64_t w = d->win;
    uint32_t start = (uint32_t)w, end = (uint32_t)(w >> 32);
    return start < end ? end - start : 0;
}

static char *bufp(dir *d) { return d->rbuf + (uint32_t)d->win; }

static void consume(dir *d, size_t n) { put64(&d->win, d->win + n); }

static int socket_empty(int fd) {
    struct pollfd pf = {fd, POLLIN, 0};
    return poll(&pf, 1, 0) == 0;
}

/* A receiver stalled mid-frame, or resynchronising, looks at the sender
 * (which cannot start a frame while we hold its lock): 0 while someone is
 * (or may soon be) writing; RESYNCED when the stream is idle and all of it
 * was taken (resynchronised at its end); else -EPROTO, broken. */
static int look(cc_pipe *p, dir *d, int mode) {
    int r = cc_mutex_trylock(&d->send_lock);
    if (r != 0 && r != -EOWNERDEAD) return 0;
    uint32_t why = INTACT;
    int res = 0;
    if (d->send_left) {
        why = r ? SENDER_DIED : SENDER_STOPPED;
    } else if (socket_empty(p->fd)) {
        if (mode == W_MID) {
            why = OUT_OF_STEP; /* no byte of the rest of this frame exists */
        } else { /* the rest was taken by the dead receiver: start afresh */
            put64(&d->win, 0);
            put64(&d->next, d->sent);
            put64(&d->left, 0); /* no frame in progress (drop_frame cleared it too) */
            d->scan = 0;
            res = RESYNCED;
        }
    }
    cc_mutex_unlock(&d->send_lock);
    return why ? set_broken(p, why) : res;
}

/* About to sleep on the socket: ask senders to flush what they stage from
 * now on, and look at what is staged already (1: something is). */
static int want_data(dir *d) {
    if (!d->stage) return 0;
    atomic_store(&d->want, 1); /* a full fence: then st_len is read */
    return atomic_load(&d->st_len) != 0;
}

static int caught_up(dir *d) { return !d->scan && d->next + buffered(d) == d->sent; }

/* Waiting for a header: 1 ready (or staged frames to take, or a WATCH
 * slice passed: look again), 0 timeout,
 * negative errno. busy: the last try found a sender holding the staging;
 * look again every millisecond rather than spin (it may be stopped), and
 * for up to BUSY_GRACE past the deadline (poll said ready: recv(0) must
 * find the frame a sender is putting on the socket right now). */
#define BUSY_GRACE 0.005

/* Before it sleeps, a receiver with nothing to take watches the direction
 * for up to SPIN seconds (1: something came -- staged, or put on the socket
 * -- 0: nothing). A peer that answers meanwhile, as in a round trip, finds
 * `want` clear and only stages its frame: no system call on either side and
 * no wake-up, which costs 10-20 us per hop across CPUs on a shared machine
 * (round trip 49 us, 9 us on one CPU). Not with one CPU to run on: watching
 * there keeps the peer it waits for off that CPU. Only from the idle state
 * (nothing staged, every byte sent read): a change then is news, never a
 * frame we already know we cannot take yet. */
#define SPIN 50e-6
static int spin_cpus(void) {
    static _Atomic int n; /* CPUs this process may run on, looked up once */
    int c = atomic_load_explicit(&n, memory_order_relaxed);
    if (!c) {
        cpu_set_t set;
        c = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        atomic_store_explicit(&n, c, memory_order_relaxed);
    }
    return c;
}

static int spin_for_data(dir *d, double deadline) {
    if (!d->stage || d->scan || spin_cpus() < 2) return 0;
    uint64_t have = d->next + buffered(d);
    if (atomic_load(&d->st_len) || atomic_load(&d->sent) != have) return 0;
    double until = cc_now() + SPIN;
    if (deadline >= 0 && deadline < until) {
        if (deadline <= until - SPIN) return 0; /* a look, not a wait */
        until = deadline;
    }
    for (unsigned k = 1;; k++) {
        if (atomic_load_explicit(&d->st_len, memory_order_relaxed) ||
            atomic_load_explicit(&d->sent, memory_order_relaxed) != have)
            return 1;
        cc_relax();
        if (!(k & 63) && (cc_now() > until || cc_interrupted())) return 0;
    }
}

static int wait_plain(cc_pipe *p, dir *d, double deadline, double busy_since) {
    if (busy_since < 0 && spin_for_data(d, deadline)) return 1;
    if (busy_since >= 0 && spin_cpus() > 1 && cc_now() - busy_since < SPIN) {
        /* a sender holds the staging for a memcpy (or is stopped): look
         * again in a moment, before asking for the socket */
        for (int k = 0; k < 64; k++) cc_relax();
        return 1;
    }
    int staged = want_data(d);
    if (staged && caught_up(d)) {
        if (busy_since < 0) return 1; /* staged since we looked: take it */
        double now = cc_now(), end = busy_since + BUSY_GRACE;
        if (deadline < 0 || deadline > end) end = deadline;
        if (end >= 0 && now >= end) return 0;
        double until = now + 0.001;
        if (end >= 0 && end < until) until = end;
        int w = cc_wait_fd(p->fd, POLLIN, until);
        return w < 0 ? w : 1;
    }
    /* Nothing staged: whoever stages next sees `want` and flushes, and the
     * socket wakes us. Read past `sent`: a sender is between its sendmsg
     * and its stores (it holds the lock, and sees `want` when it stages
     * next). Something staged while we are behind `sent` with the socket
     * drained: sleep in WATCH slices, the caller looks at the staging area
     * again after each (state a killed peer left must not hide a staged
     * frame for the whole deadline). */
    if (!staged || d->next + buffered(d) > d->sent) return cc_wait_fd(p->fd, POLLIN, deadline);
    double until = cc_now() + WATCH;
    if (deadline >= 0 && deadline < until) until = deadline;
    int w = cc_wait_fd(p->fd, POLLIN, until);
    if (w != 0) return w;
    return deadline >= 0 && cc_now() >= deadline ? 0 : 1;
}

/* Wait for input: 1 ready, 0 timeout, RESYNCED, negative errno. Mid-frame
 * and while resynchronising, wait in WATCH slices and look at the sender
 * between them. */
static int wait_in(cc_pipe *p, dir *d, double deadline, int mode) {
    if (mode == W_PLAIN) return wait_plain(p, d, deadline, -1);
    for (;;) {
        double until = cc_now() + WATCH;
        if (deadline >= 0 && deadline < until) until = deadline;
        want_data(d); /* later frames: a sender flushes them, we read the socket */
        int w = cc_wait_fd(p->fd, POLLIN, until);
        if (w != 0) return w;
        if (deadline >= 0 && cc_now() >= deadline) return 0;
        if (p->ln->broken) return -EPROTO;
        w = look(p, d, mode);
        if (w) return w;
    }
}

/* The socket said EOF (or reset). */
static int at_eof(cc_pipe *p, dir *d, int midframe) {
    if (p->closed) return -EBADF;
    if (p->ln->broken) return -EPROTO;
    if (!midframe) return -EPIPE;
    int r = cc_mutex_trylock(&d->send_lock);
    uint32_t why = CUT_SHORT;
    if (r == 0 || r == -EOWNERDEAD) {
        if (d->send_left) why = r ? SENDER_DIED : SENDER_STOPPED;
        cc_mutex_unlock(&d->send_lock);
    }
    return set_broken(p, why);
}

/* Take the staged frames into the window [*start, *end) (less than a
 * header, at the stream offset d->next) when every byte put on the socket
 * has been read: 1 took some, 0 nothing to take, -EBUSY (a sender holds
 * the lock), -EPROTO. The sender's side
 * is committed first: a receiver killed between the two stores loses what
 * it took, as one killed after a recv() does, and the next one resyncs. */
static int take_stage(cc_pipe *p, dir *d, uint32_t *start, uint32_t *end) {
    if (!d->stage || d->scan || !atomic_load_explicit(&d->st_len, memory_order_acquire)) return 0;
    if (d->next + (*end - *start) != d->sent) return 0; /* the socket first */
    /* a sender holding the lock is appending or flushing: what it flushes
     * is on the socket, read that (never sleep on its lock: it may be stopped) */
    int r = cc_mutex_trylock(&d->send_lock);
    if (r != 0 && r != -EOWNERDEAD) return -EBUSY;
    if (r == -EOWNERDEAD && d->send_left) {
        cc_mutex_unlock(&d->send_lock);
        return set_broken(p, SENDER_DIED);
    }
    stage_fix(d);
    uint64_t n = d->st_len;
    int got = 0;
    if (n && d->st_off == d->sent && d->next + (*end - *start) == d->sent) {
        if (RBUF - *end < n) { /* make room: the window is shorter than a header */
            uint32_t k = *end - *start;
            if (k > *start) abort();
            memcpy(d->rbuf, d->rbuf + *start, k);
            *start = 0;
            *end = k;
            put64(&d->win, WIN(*start, *end));
        }
        memcpy(d->rbuf + *end, d->stage, (size_t)n);
        put64(&d->sent, d->sent + n); /* the sender's side: the stream moved on */
        put64(&d->st_len, 0);
        *end += (uint32_t)n;
        put64(&d->win, WIN(*start, *end)); /* ours */
        got = 1;
    }
    cc_mutex_unlock(&d->send_lock);
    return got;
}

/* Pull bytes into the buffer, which holds less than a header (or nothing):
 * 1 got some, 0 EOF, RESYNCED, negative errno. */
static int fill(cc_pipe *p, dir *d, double deadline, int mode) {
    uint64_t w = d->win;
    uint32_t start = (uint32_t)w, end = (uint32_t)(w >> 32);
    if (start >= end) {
        start = end = 0;
        if (w) put64(&d->win, 0);
    } else if (end == RBUF) { /* a partial header at the very end */
        uint32_t n = end - start;
        if (n > start) abort(); /* n < HDR <= start: fill is only called short of a header */
        memcpy(d->rbuf, d->rbuf + start, n); /* the source stays intact until the store */
        start = 0;
        end = n;
        put64(&d->win, WIN(start, end));
    }
    double busy_since = -1;
    for (;;) {
        int t = mode == W_SCAN ? 0 : take_stage(p, d, &start, &end);
        if (t == -EBUSY) {
            if (busy_since < 0) busy_since = cc_now();
        } else if (t) {
            return t;
        } else {
            busy_since = -1;
        }
        ssize_t n = recv(p->fd, d->rbuf + end, RBUF - end, MSG_DONTWAIT);
        if (n > 0) {
            put64(&d->win, WIN(start, end + (uint32_t)n)); /* the commit */
            return 1;
        }
        if (n == 0 || (n < 0 && errno == ECONNRESET)) { /* EOF: what was staged before it first */
            t = mode == W_SCAN ? 0 : take_stage(p, d, &start, &end);
            if (t != -EBUSY) return t;
            /* a sender is finishing a frame (or is stopped): look again soon */
            if (deadline >= 0 && cc_now() >= deadline) return -ETIMEDOUT;
            if (cc_sleep(0.001) == -EINTR) return -EINTR;
            continue;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
        int r = mode == W_PLAIN ? wait_plain(p, d, deadline, busy_since) : wait_in(p, d, deadline, mode);
        if (r == 0) return -ETIMEDOUT;
        if (r < 0 || r == RESYNCED) return r;
    }
}

static void drop_keep(dir *d) {
    char *k = d->keep;
    if (k) {
        d->keep = NULL;
        cc_free(k);
    }
}

/* Give up the frame in progress: find the next one. No frame is in
 * progress any more (left 0): when the scan ends without a header -- look()
 * found the stream idle and resynchronised at its end -- take() must start
 * a frame, not resume the given-up one (which would read the next frames'
 * bytes as its body, or drop it again and scan past the staging forever).
 * scan is stored first: a receiver killed between the two stores leaves
 * scan set, and the next one calls this again. */
static int drop_frame(dir *d, int r) {
    d->scan = 1;
    put64(&d->left, 0);
    drop_keep(d);
    return r;
}

/* Park the body bytes read so far in the arena for the next receiver. */
static int keep_partial(dir *d, const char *data, size_t have, int r) {
    if (have == 0) return r;
    char *k = cc_alloc(have);
    if (!k) return drop_frame(d, -ENOMEM); /* cannot keep them: the message is dropped */
    memcpy(k, data, have);
    d->keep = k;
    return r;
}

/* After a receiver died holding the lock, or a message was dropped: the
 * next real header is the first one (magic, check word) whose offset is at
 * or past the end of the frame given up and not past what was sent. Bytes
 * before it were taken by the dead receiver or belong to dropped frames. */
static int resync(cc_pipe *p, dir *d, double deadline) {
    for (;;) {
        size_t n = buffered(d);
        const char *b = bufp(d);
        for (size_t i = 0; i + HDR <= n; i++) {
            uint64_t len, off;
            if (header_ok(b + i, &len, &off) && off >= d->next && off <= d->sent) {
                consume(d, i);
                put64(&d->next, off);
                put64(&d->left, 0);
                d->scan = 0;
                return 0;
            }
        }
        if (n >= HDR) consume(d, n - (HDR - 1)); /* keep what may start a header */
        int f = fill(p, d, deadline, W_SCAN);
        if (f == RESYNCED) return 0;
        if (f == 0) return at_eof(p, d, 0);
        if (f < 0) return f;
    }
}

/* Start a frame: read and check its header. */
static int start_frame(cc_pipe *p, dir *d, double deadline) {
    while (buffered(d) < HDR) {
        int f = fill(p, d, deadline, buffered(d) > 0 ? W_MID : W_PLAIN);
        if (f <= 0) return f == 0 ? at_eof(p, d, buffered(d) > 0) : f;
    }
    uint64_t len, off;
    if (!header_ok(bufp(d), &len, &off) || off != d->next) return set_broken(p, BAD_HEADER);
    put64(&d->len, len);
    put64(&d->left, len);
    put64(&d->next, off + HDR + len);
    consume(d, HDR);
    return 0;
}

/* Take the body: what was kept, what is buffered, then the socket. */
static int take_body(cc_pipe *p, dir *d, cc_buf *out, double deadline) {
    size_t len = (size_t)d->len, have = len - (size_t)d->left;
    if (cc_buf_reserve(out, len)) return drop_frame(d, -ENOBUFS); /* drop this message, not the pipe */
    if (have) {
        char *k = d->keep;
        memcpy(out->data, k, have);
        d->keep = NULL;
        cc_free(k);
    }
    size_t n = buffered(d);
    if (n > d->left) n = (size_t)d->left;
    memcpy(out->data + have, bufp(d), n);
    consume(d, n);
    put64(&d->left, d->left - n);
    have += n;
    while (d->left) {
        ssize_t got = recv(p->fd, out->data + have, (size_t)d->left, MSG_DONTWAIT);
        if (got > 0) {
            put64(&d->left, d->left - (uint64_t)got);
            have += (size_t)got;
            continue;
        }
        if (got == 0 || errno == ECONNRESET) return at_eof(p, d, 1);
        if (errno == EINTR) continue;
        int r = -errno;
        if (r == -EAGAIN || r == -EWOULDBLOCK) {
            int w = wait_in(p, d, deadline, W_MID);
            if (w > 0) continue;
            r = w == 0 ? -ETIMEDOUT : w;
        }
        if (r == -EPROTO) return r;
        return keep_partial(d, out->data, have, r);
    }
    out->len = len;
    return 0;
}

static int take(cc_pipe *p, dir *d, cc_buf *out, double deadline) {
    for (;;) {
        int r = 0;
        if (d->scan) r = resync(p, d, deadline);
        else if (d->left == 0) {
            r = start_frame(p, d, deadline);
            if (!r) return take_body(p, d, out, deadline);
        } else if (d->len != d->left && !d->keep) drop_frame(d, 0); /* bytes gone, no copy */
        else return take_body(p, d, out, deadline);
        if (r) return r;
    }
}

int cc_pipe_recv(cc_pipe *p, cc_buf *out, double deadline) {
    if (p->closed) return -EBADF;
    if (!p->can_read) return -EINVAL;
    dir *d = &p->ln->d[!p->side];
    int r = cc_mutex_lock(&d->recv_lock, deadline);
    if (r == -EOWNERDEAD) drop_frame(d, 0); /* the previous receiver died: its message with it */
    else if (r) return r;
    r = p->ln->broken ? -EPROTO : take(p, d, out, deadline);
    if (r) out->len = 0;
    cc_mutex_unlock(&d->recv_lock);
    return r;
}

int cc_pipe_poll(cc_pipe *p, double deadline) {
    if (p->closed || !p->can_read) return 0;
    if (p->ln->broken) return 1;
    dir *d = &p->ln->d[!p->side];
    if (buffered(d) || atomic_load(&d->st_len)) return 1;
    if (deadline >= 0 && deadline <= cc_now()) return cc_wait_fd(p->fd, POLLIN, deadline);
    if (want_data(d)) return 1;
    return cc_wait_fd(p->fd, POLLIN, deadline);
}

void cc_pipe_want(cc_pipe *p) {
    if (p->can_read) want_data(&p->ln->d[!p->side]);
}
