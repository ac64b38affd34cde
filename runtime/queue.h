/*
 * queue.h -- a many-producer many-consumer queue of messages (queue.c),
 * across threads and processes. maxsize 0 = unbounded (bounded by the arena).
 *
 * put blocks while the queue is full; get blocks while it is empty. Waiting
 * is a cc_cond with a waiter count, so put/get make no system call unless
 * someone is actually asleep. close() wakes everyone: later puts fail with
 * -EPIPE, gets drain what is left then fail with -EPIPE.
 */
#ifndef CC_QUEUE_H
#define CC_QUEUE_H
#include "cc.h"

typedef struct cc_queue cc_queue;
int cc_queue_new(cc_queue **out, int64_t maxsize);
int cc_queue_put(cc_queue *q, const void *msg, size_t len, double deadline);
/* Put n messages laid end to end, lens[i] each; blocks for room as needed.
 * Returns the number put (>= 0) or a negative errno if none were. */
int64_t cc_queue_put_many(cc_queue *q, const void *buf, const size_t *lens, size_t n, double deadline);
int cc_queue_get(cc_queue *q, cc_buf *out, double deadline);   /* out->len = message size */
/* The same into buf when the next message fits in cap bytes (*len its
 * size); -E2BIG leaves a larger one in the queue (then use cc_queue_get). */
int cc_queue_get_small(cc_queue *q, void *buf, size_t cap, size_t *len, double deadline);
/* Take up to max messages under one lock (waits for the first): end to end
 * in out, sizes appended to *lens (malloc'd, caller frees); *n = count. */
int cc_queue_get_many(cc_queue *q, size_t max, cc_buf *out, size_t **lens, size_t *n, double deadline);
int64_t cc_queue_len(cc_queue *q);
int64_t cc_queue_maxsize(cc_queue *q);
int cc_queue_close(cc_queue *q);
int cc_queue_closed(cc_queue *q);
/* Joinable queues: every put adds an unfinished task, task_done removes
 * one (-EINVAL when none is left), join waits until none is left:
 * 0, -ETIMEDOUT or -EINTR. */
int cc_queue_task_done(cc_queue *q);
int cc_queue_join(cc_queue *q, double deadline);
#endif
