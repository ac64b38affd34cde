/*
 * queue.c -- a many-producer, many-consumer queue of messages across
 * threads and processes.
 *
 * Storage: a singly linked list of chunks in the arena (64 KiB, or one
 * message's size if larger). A message is a u32 length then its bytes,
 * padded to 8; producers append at the tail chunk, consumers read from the
 * head chunk and free it when drained. So a put is a memcpy and two stores
 * under the lock, and the arena allocator is touched once per 64 KiB, not
 * once per message.
 *
 * Crash safety: a producer writes the message first and then publishes it
 * with one store (the chunk's write offset); the count is bumped after, so
 * a producer SIGKILLed between the two leaves a readable message and a
 * count one short, which get tolerates (it never lets the count go below 0).
 * Readers decide emptiness from the chunks, never from the count.
 *
 * Joining: `unfinished` counts puts minus task_done calls (Python's
 * JoinableQueue); join sleeps on `all_done` until it is 0. It is bumped in
 * the same step as `count`, so a producer killed between the commit and
 * the count leaves a message nobody needs to mark done: harmless. A
 * consumer killed between get and task_done leaves join waiting: that is
 * what its timeout is for.
 *
 * Waiting: cc_cond (futex) with waiter counts: a put or get makes a system
 * call only when someone is asleep, and then one wake per sleeper, not one
 * per put while it wakes up (waitq: sleepers and pending wakes). Before
 * sleeping, a getter or putter drops the lock and watches the other side's
 * word for a few microseconds (SPIN_WAIT), then yields the CPU a few times
 * (SPIN_YIELD) still watching, and a locker that finds the lock taken
 * retries a few times (SPIN_LOCK): a producer and a consumer running side
 * by side then hand over without the kernel. The yields are for more
 * threads than cores: a getter that shares a core with its producer
 * cannot see a put while it spins, and once asleep it is woken by that
 * producer onto that same core, so each put cost a futex wake and a
 * context switch (a pool of 2 thread workers and its caller on 2 cores:
 * 5-28k futex calls per 10^5 submits, 2-3k with the yields). `watch` is
 * bumped on every put and on close for cc_wait_any (wait.c), which sleeps
 * on it.
 */
#include "queue.h"
#include "wait.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK (64u * 1024u)
#define SPIN_LOCK 100   /* trylocks before sleeping on the mutex */
#define SPIN_WAIT 250  /* pauses a getter or putter watches the queue before sleeping */
#define SPIN_YIELD 8   /* then yields of the CPU, still watching */
#define ALIGN8(n) (((n) + 7u) & ~(size_t)7u)

typedef struct chunk {
    struct chunk *next;
    size_t size, rd, wr;
    char data[];
} chunk;

/* A condition that is signalled at most once per sleeper: sleepers and
 * pending (wakes sent and not yet taken) are counted under the queue lock,
 * so a stream of puts to a queue whose getter is waking up makes one futex
 * wake, not one per put. Orders of the stores make a SIGKILL at any point
 * cost at most a spare wake, never a missed one: a waiter drops pending
 * before sleepers, a signaller wakes before it counts the wake. */
typedef struct waitq {
    cc_cond c;
    int32_t sleepers, pending;
} waitq;

struct cc_queue {
    cc_obj hdr;
    cc_mutex m;
    waitq not_empty, not_full;
    cc_watch watch;       /* bumped on every put and on close, for cc_wait_any */
    int64_t maxsize;
    int64_t count;
    int64_t unfinished;   /* put minus task_done (JoinableQueue) */
    cc_cond all_done;     /* broadcast when unfinished drops to 0 */
    int closed;
    chunk *head, *tail;
};

int cc_queue_new(cc_queue **out, int64_t maxsize) {
    cc_queue *q = cc_calloc(sizeof *q);
    if (!q) return -ENOMEM;
    cc_obj_init(&q->hdr, CC_T_QUEUE);
    int r = cc_mutex_init(&q->m);
    if (r) {
        cc_free(q);
        return r;
    }
    cc_cond_init(&q->not_empty.c);
    cc_cond_init(&q->not_full.c);
    cc_cond_init(&q->all_done);
    q->maxsize = maxsize > 0 ? maxsize : 0;
    *out = q;
    return 0;
}

void cc_queue_destroy(cc_obj *o) {
    cc_queue *q = (cc_queue *)o;
    for (chunk *c = q->head; c;) {
        while (c->rd < c->wr) {
            uint32_t len;
            memcpy(&len, c->data + c->rd, 4);
            cc_msg_release(c->data + c->rd + 8, len);
            c->rd += 8 + ALIGN8(len);
        }
        chunk *next = c->next;
        cc_free(c);
        c = next;
    }
    cc_mutex_destroy(&q->m);
    cc_free(q);
}

/* The lock is held for a memcpy: a locker that finds it taken tries again
 * a few times before the robust mutex puts it to sleep in the kernel (a
 * futex wait and a wake per collision otherwise). */
static int lock(cc_queue *q) {
    for (int i = 0; i < SPIN_LOCK; i++) {
        int r = cc_mutex_trylock(&q->m);
        if (r != -EBUSY) return r == -EOWNERDEAD ? 0 : r; /* consistent by construction */
        cc_relax();
    }
    int r = cc_mutex_lock_hard(&q->m);
    return r == -EOWNERDEAD ? 0 : r;
}

static void unlock(cc_queue *q) { cc_mutex_unlock(&q->m); }

/* Sleep on w (lock held; held again on return). */
static int wq_wait(cc_queue *q, waitq *w, double deadline) {
    w->sleepers++;
    int r = cc_cond_wait(&w->c, &q->m, deadline);
    if (w->pending > 0) w->pending--;
    if (w->sleepers > 0) w->sleepers--;
    return r;
}

/* Wake one sleeper that has no wake on its way yet; the sequence word
 * moves either way (spinners watch it). */
static void wq_signal(waitq *w) {
    if (w->sleepers > w->pending) {
        cc_cond_signal(&w->c);
        w->pending++;
    } else {
        atomic_fetch_add_explicit(&w->c.seq, 1, memory_order_release);
    }
}

static void wq_broadcast(waitq *w) {
    cc_cond_broadcast(&w->c);
    if (w->pending < w->sleepers) w->pending = w->sleepers;
}

/* cc_watch_bump without its full fence: the lock is held, and a sleeper
 * in wait.c registers before it checks the queue under this same lock, so
 * either that check sees our item or this load sees the sleeper. */
static void notify_event(cc_queue *q) {
    cc_watch *w = &q->watch;
    atomic_store_explicit(&w->seq, atomic_load_explicit(&w->seq, memory_order_relaxed) + 1,
                          memory_order_release);
    if (atomic_load_explicit(&w->sleepers, memory_order_relaxed)) cc_futex_wake(&w->seq, INT_MAX);
}

/* Append one message; the caller holds the lock and checked room. */
static int append(cc_queue *q, const void *msg, size_t len) {
    size_t need = 8 + ALIGN8(len);
    chunk *t = q->tail;
    if (!t || t->size - t->wr < need) {
        size_t size = need > CHUNK ? need : CHUNK;
        chunk *c = cc_alloc(sizeof *c + size);
        if (!c) return -ENOMEM;
        c->next = NULL;
        c->size = size;
        c->rd = c->wr = 0;
        if (t) t->next = c; /* publish the chunk */
        else q->head = c;
        q->tail = t = c;
    }
    uint32_t l32 = (uint32_t)len;
    memcpy(t->data + t->wr, &l32, 4);
    memcpy(t->data + t->wr + 8, msg, len);
    t->wr += need; /* the commit */
    q->count++;
    q->unfinished++;
    return 0;
}

/* Append as many of the n messages at *pp (lens[i] each) as fit in the
 * tail chunk (a new one if the first does not) and in the room left; one
 * commit store for the run. Lock held, room checked. The count appended,
 * or 0 with *err set. */
static size_t append_run(cc_queue *q, const char **pp, const size_t *lens, size_t n, int *err) {
    if (lens[0] > UINT32_MAX) {
        *err = -EMSGSIZE;
        return 0;
    }
    chunk *t = q->tail;
    if (!t || t->size - t->wr < 8 + ALIGN8(lens[0])) {
        *err = append(q, *pp, lens[0]); /* makes the chunk */
        if (*err) return 0;
        *pp += lens[0];
        return 1;
    }
    size_t limit = n;
    if (q->maxsize) limit = q->count < q->maxsize ? (size_t)(q->maxsize - q->count) : 0;
    if (limit > n) limit = n;
    const char *p = *pp;
    size_t wr = t->wr, k = 0;
    while (k < limit) {
        size_t len = lens[k], need = 8 + ALIGN8(len);
        if (len > UINT32_MAX || t->size - wr < need) break;
        uint32_t l32 = (uint32_t)len;
        memcpy(t->data + wr, &l32, 4);
        memcpy(t->data + wr + 8, p, len);
        wr += need;
        p += len;
        k++;
    }
    t->wr = wr; /* the commit */
    q->count += (int64_t)k;
    q->unfinished += (int64_t)k;
    *pp = p;
    return k;
}

/* Take the head message into out (appending at out->len); lock held, the
 * queue is not empty. */
static int take(cc_queue *q, cc_buf *out) {
    chunk *h = q->head;
    while (h->rd == h->wr && h->next) { /* drained chunk: drop it */
        q->head = h->next;
        cc_free(h);
        h = q->head;
    }
    uint32_t len;
    memcpy(&len, h->data + h->rd, 4);
    if (cc_buf_reserve(out, out->len + len) != 0) return -ENOMEM;
    memcpy(out->data + out->len, h->data + h->rd + 8, len);
    out->len += len;
    h->rd += 8 + ALIGN8(len); /* the commit */
    if (q->count > 0) q->count--;
    if (h->rd == h->wr && !h->next) h->rd = h->wr = 0; /* reuse the last chunk */
    return 0;
}

/* Take up to room messages from the head chunk into out (appending), their
 * sizes into lens; lock held, the queue is not empty. One commit store for
 * the run: a getter killed before it leaves them all in the queue. */
static size_t take_run(cc_queue *q, cc_buf *out, size_t *lens, size_t room) {
    chunk *h = q->head;
    while (h->rd == h->wr && h->next) { /* drained chunk: drop it */
        q->head = h->next;
        cc_free(h);
        h = q->head;
    }
    size_t rd = h->rd, k = 0;
    while (k < room && rd < h->wr) {
        uint32_t len;
        memcpy(&len, h->data + rd, 4);
        if (out->cap - out->len < len && cc_buf_reserve(out, out->len + len) != 0) break;
        memcpy(out->data + out->len, h->data + rd + 8, len);
        out->len += len;
        lens[k++] = len;
        rd += 8 + ALIGN8(len);
    }
    h->rd = rd; /* the commit */
    q->count = q->count > (int64_t)k ? q->count - (int64_t)k : 0;
    if (h->rd == h->wr && !h->next) h->rd = h->wr = 0; /* reuse the last chunk */
    return k;
}

static int is_empty(cc_queue *q) {
    for (chunk *c = q->head; c; c = c->next)
        if (c->rd < c->wr) return 0;
    return 1;
}

static int is_full(cc_queue *q) { return q->maxsize && q->count >= q->maxsize; }

/* Before sleeping on a condition: drop the lock and watch the word that
 * the other side bumps (seq) for a short while. A producer and a consumer
 * running side by side then hand over without a futex wake per message.
 * Returns with the lock held again. */
static void spin_on(cc_queue *q, _Atomic uint32_t *word) {
    uint32_t seen = atomic_load_explicit(word, memory_order_relaxed);
    unlock(q);
    int i = 0;
    for (; i < SPIN_WAIT; i++) {
        cc_relax();
        if (atomic_load_explicit(word, memory_order_acquire) != seen) break;
    }
    for (int y = 0; i == SPIN_WAIT && y < SPIN_YIELD; y++) {
        sched_yield();
        if (atomic_load_explicit(word, memory_order_acquire) != seen) break;
    }
    lock(q);
}

/* A zero timeout (a poll) does not spin. */
static int worth_spinning(double deadline) { return deadline < 0 || deadline > cc_now(); }

static int wait_room(cc_queue *q, double deadline) {
    int spun = 0;
    while (!q->closed && is_full(q)) {
        if (!spun++ && worth_spinning(deadline)) {
            spin_on(q, &q->not_full.c.seq);
            continue;
        }
        int r = wq_wait(q, &q->not_full, deadline);
        if (r && r != -EOWNERDEAD) {
            if (!q->closed && !is_full(q)) wq_signal(&q->not_full); /* pass on a wake we may have had */
            return r;
        }
    }
    return q->closed ? -EPIPE : 0;
}

int cc_queue_put(cc_queue *q, const void *msg, size_t len, double deadline) {
    if (len > UINT32_MAX) return -EMSGSIZE;
    lock(q);
    int r = wait_room(q, deadline);
    if (!r) r = append(q, msg, len);
    if (!r) {
        wq_signal(&q->not_empty);
        notify_event(q);
    }
    unlock(q);
    return r;
}

int64_t cc_queue_put_many(cc_queue *q, const void *buf, const size_t *lens, size_t n,
                          double deadline) {
    const char *p = buf;
    size_t done = 0;
    lock(q);
    int r = 0;
    while (done < n) {
        r = wait_room(q, deadline);
        if (r) break;
        size_t before = done;
        while (done < n && !is_full(q)) {
            size_t k = append_run(q, &p, lens + done, n - done, &r);
            if (!k) break;
            done += k;
        }
        if (done > before) { /* also when append failed part way */
            wq_broadcast(&q->not_empty);
            notify_event(q);
        }
        if (r) break;
    }
    unlock(q);
    return done ? (int64_t)done : r;
}

static int wait_item(cc_queue *q, double deadline) {
    int spun = 0;
    while (is_empty(q)) {
        if (q->closed) return -EPIPE;
        if (!spun++ && worth_spinning(deadline)) {
            spin_on(q, &q->watch.seq);
            continue;
        }
        int r = wq_wait(q, &q->not_empty, deadline);
        if (r && r != -EOWNERDEAD) {
            if (!is_empty(q)) wq_signal(&q->not_empty); /* pass on a wake we may have had */
            return r;
        }
    }
    return 0;
}

int cc_queue_get(cc_queue *q, cc_buf *out, double deadline) {
    lock(q);
    int r = wait_item(q, deadline);
    out->len = 0;
    if (!r) r = take(q, out);
    if (!r && q->maxsize) wq_signal(&q->not_full);
    unlock(q);
    return r;
}

int cc_queue_get_many(cc_queue *q, size_t max, cc_buf *out, size_t **lens, size_t *n,
                      double deadline) {
    *n = 0;
    *lens = NULL;
    out->len = 0;
    lock(q);
    int r = wait_item(q, deadline);
    if (!r) {
        size_t cap = max < 1024 ? max : 1024;
        *lens = malloc(cap * sizeof **lens);
        if (!*lens) r = -ENOMEM;
        while (!r && *n < max && !is_empty(q)) {
            if (*n == cap) {
                size_t *g = realloc(*lens, (cap *= 2) * sizeof **lens);
                if (!g) break;
                *lens = g;
            }
            size_t room = cap - *n < max - *n ? cap - *n : max - *n;
            size_t k = take_run(q, out, *lens + *n, room);
            if (!k) r = -ENOMEM; /* no process memory for the next one */
            *n += k;
        }
        if (*n) r = 0;
        if (q->maxsize) wq_broadcast(&q->not_full);
    }
    unlock(q);
    return r;
}

int cc_queue_get_small(cc_queue *q, void *buf, size_t cap, size_t *len, double deadline) {
    lock(q);
    int r = wait_item(q, deadline);
    if (!r) {
        chunk *h = q->head;
        while (h->rd == h->wr && h->next) { /* drained chunk: drop it */
            q->head = h->next;
            cc_free(h);
            h = q->head;
        }
        uint32_t l32;
        memcpy(&l32, h->data + h->rd, 4);
        if (l32 > cap) {
            r = -E2BIG; /* left where it is */
        } else {
            memcpy(buf, h->data + h->rd + 8, l32);
            *len = l32;
            h->rd += 8 + ALIGN8(l32); /* the commit */
            if (q->count > 0) q->count--;
            if (h->rd == h->wr && !h->next) h->rd = h->wr = 0; /* reuse the last chunk */
            if (q->maxsize) wq_signal(&q->not_full);
        }
    }
    unlock(q);
    return r;
}

int64_t cc_queue_len(cc_queue *q) {
    lock(q);
    int64_t n = q->count;
    unlock(q);
    return n;
}

int64_t cc_queue_maxsize(cc_queue *q) { return q->maxsize; }

int cc_queue_close(cc_queue *q) {
    lock(q);
    q->closed = 1;
    wq_broadcast(&q->not_empty);
    wq_broadcast(&q->not_full);
    notify_event(q);
    unlock(q);
    return 0;
}

int cc_queue_closed(cc_queue *q) { return __atomic_load_n(&q->closed, __ATOMIC_ACQUIRE); }

/* For concur.wait: ready means an item is there or the queue is closed. */
int cc_queue_ready(cc_queue *q) {
    lock(q);
    int r = q->closed || !is_empty(q);
    unlock(q);
    return r;
}

cc_watch *cc_queue_watch(cc_queue *q) { return &q->watch; }

int cc_queue_task_done(cc_queue *q) {
    lock(q);
    int r = 0;
    if (q->unfinished <= 0) r = -EINVAL;
    else if (--q->unfinished == 0) cc_cond_broadcast(&q->all_done);
    unlock(q);
    return r;
}

int cc_queue_join(cc_queue *q, double deadline) {
    lock(q);
    int r = 0;
    while (q->unfinished > 0) {
        r = cc_cond_wait(&q->all_done, &q->m, deadline);
        if (r == -EOWNERDEAD) r = 0;
        if (r) break;
    }
    if (q->unfinished <= 0) r = 0; /* done at the deadline counts as done */
    unlock(q);
    return r;
}
