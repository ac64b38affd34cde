/*
 * progress.h -- a shared progress counter (concur.progress): the count, the
 * total and the drawing state live in one arena block, so every thread and
 * every forked process steps the same counter and any of them may draw.
 *
 * The runtime decides *who* draws and *what* the line says; the binding
 * does the write(2) (nothing in runtime/ prints). A step is one atomic add
 * and one compare against check_at; only a step that reaches check_at looks
 * at the clock (cc_progress_poll), so a tight loop pays a clock read only
 * every few milliseconds' worth of items.
 */
#ifndef CC_PROGRESS_H
#define CC_PROGRESS_H
#include "cc.h"

#include <errno.h>
#include <stdatomic.h>

/* Counts and totals stay at or below 2^53: exact as doubles (LuaJIT), and
 * far from int64 overflow however many steppers add at once. */
#define CC_PROGRESS_MAX ((int64_t)1 << 53)
#define CC_PROGRESS_LABEL 200 /* bytes */

enum {
    CC_PROG_TTY = 1,     /* flags: redraw one line in place, else plain lines */
    CC_PROG_DONE = 1,    /* state: finished (or abandoned); nobody draws again */
    CC_PROG_PARTIAL = 2, /* state: a tty line without its newline is on screen */
};

typedef struct cc_progress {
    cc_obj hdr;                 /* CC_T_PROGRESS */
    uint32_t flags;             /* CC_PROG_TTY */
    _Atomic uint32_t state;     /* CC_PROG_DONE | CC_PROG_PARTIAL */
    int64_t total;              /* 0: unknown */
    int64_t start;              /* CLOCK_MONOTONIC ns: one clock for every process */
    _Atomic int64_t count;
    _Atomic int64_t check_at;   /* the count at which a stepper looks at the clock */
    _Atomic int64_t stride;     /* how far check_at moves: ~10 ms of items */
    _Atomic int64_t checked;    /* ns of the last look */
    _Atomic int64_t next_draw;  /* ns: the next tty slot; CAS decides who draws it */
    _Atomic int64_t tenth;      /* plain lines: the last tenth reported */
    _Atomic int64_t drawing;    /* ns the current drawer started writing; 0 = none */
    _Atomic int64_t end;        /* ns of the finish; 0 while running */
    uint32_t label_len;
    char label[CC_PROGRESS_LABEL + 1];
} cc_progress;

/* A new counter at 0. label (len bytes, control bytes shown as '?') is
 * copied. -EINVAL (total < 0 or > CC_PROGRESS_MAX, label too long),
 * -ENOMEM (the arena is full). */
int cc_progress_new(cc_progress **out, int64_t total, const char *label, size_t len, int flags);

/* Add n (0 <= n <= CC_PROGRESS_MAX): 1 when the caller should call
 * cc_progress_poll, 0 when not, -ERANGE (nothing added) when the count
 * would pass CC_PROGRESS_MAX. */
static inline int cc_progress_add(cc_progress *p, int64_t n) {
    int64_t c = atomic_fetch_add_explicit(&p->count, n, memory_order_relaxed) + n;
    if (c > CC_PROGRESS_MAX) {
        atomic_fetch_sub_explicit(&p->count, n, memory_order_relaxed);
        return -ERANGE;
    }
    return c >= atomic_load_explicit(&p->check_at, memory_order_relaxed);
}

static inline int64_t cc_progress_count(const cc_progress *p) {
    return atomic_load_explicit(&((cc_progress *)p)->count, memory_order_relaxed);
}

/* A step reached check_at: move check_at on and decide whether the caller
 * draws now. 1: the caller holds the drawing token and must write the line
 * for the count put in *shown (cc_progress_line) and then call
 * cc_progress_drawn; 0: nothing to do. */
int cc_progress_poll(cc_progress *p, int64_t *shown);
/* Give the token back. partial: 1 the line written has no newline (a
 * terminal line), 0 it ended one, -1 nothing was written. */
void cc_progress_drawn(cc_progress *p, int partial);

/* Someone else is about to write a line (an error message): 1 when a
 * terminal line was open, which the caller now ends with a newline; the
 * next draw starts afresh either way. */
int cc_progress_break(cc_progress *p);

/* Finish: 1 when this call finished it (the caller holds the token, writes
 * the summary or, for abandon, a newline when *partial says a tty line is
 * open, then calls cc_progress_drawn(p, 0)); 0 when it was already done.
 * A drawer that died holding the token is waited for at most 1 s. */
int cc_progress_finish(cc_progress *p, int *partial);

/* The line for count (the current count for the summary and tostring),
 * NUL-terminated, at most width - 1
 * columns when width > 0 (the bar fills the room left; the label is cut
 * before counts and percent are); final: the summary. Returns its length
 * in bytes. cap >= 512. */
size_t cc_progress_line(cc_progress *p, int64_t count, char *buf, size_t cap, int width,
                        int final);

int64_t cc_progress_now(void); /* CLOCK_MONOTONIC ns */
#endif
