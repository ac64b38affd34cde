/*
 * wait.h -- sleep until one of several things is ready (wait.c): queues,
 * pipe ends, child processes, and anything else through a probe function.
 * concur.wait (bindings/wait.c) only converts its arguments to this.
 *
 * A watch is what queues and pipes expose for it: a word that moves
 * whenever the object may have become ready (a put, a send, a close), and
 * a count of who sleeps on it, so moving it makes a system call only when
 * someone does. A sleeper killed while registered leaves the count one too
 * high: later bumps make a spare wake, never a missed one.
 */
#ifndef CC_WAIT_H
#define CC_WAIT_H
#include "cc.h"

typedef struct cc_watch {
    _Atomic uint32_t seq;
    _Atomic uint32_t sleepers;
} cc_watch;
void cc_watch_bump(cc_watch *w);   /* the object may be ready now: wake its sleepers */

typedef struct cc_queue cc_queue;
typedef struct cc_pipe cc_pipe;

enum cc_wait_kind {
    CC_WAIT_READY,   /* already known to be ready */
    CC_WAIT_QUEUE,   /* an item is there, or the queue is closed */
    CC_WAIT_PIPE,    /* recv would not block: data, EOF, closed or broken */
    CC_WAIT_CHILD,   /* a child process of ours has ended (not reaped here) */
    CC_WAIT_PROBE,   /* probe(arg) returns 1: checked between short sleeps */
};

typedef struct cc_waitable {
    int kind;
    cc_queue *queue;
    cc_pipe *pipe;              /* usable in this process: the caller checked */
    pid_t pid;
    int (*probe)(void *arg);
    void *arg;
    int ready;                  /* out: 1 when ready at return */
    int fd;                     /* wait.c's own: a pidfd, or -1 */
} cc_waitable;

/* Sleep until at least one of w[0..n) is ready or the deadline passes:
 * the number ready (each with .ready set), 0 at the deadline, -EINTR when
 * cc_interrupted(). Opens and closes its own descriptors. */
int cc_wait_any(cc_waitable *w, int n, double deadline);

/* For wait.c: the watches of a queue and of the direction a pipe end
 * receives from (queue.c, pipe.c). */
cc_watch *cc_queue_watch(cc_queue *q);
int cc_queue_ready(cc_queue *q);   /* an item is there, or it is closed */
cc_watch *cc_pipe_watch(cc_pipe *p);
#endif
