/*
 * progress.c -- concur.progress's shared state: who draws, when, and what
 * the line says.
 *
 * Any stepper, in any thread or process, may draw, so the choice is made on
 * shared words with compare-and-swap, never under a lock a killed process
 * could keep:
 *
 * - On a terminal, time is cut into 100 ms slots; next_draw holds the start
 *   of the next one, and the stepper whose CAS moves it on draws that slot.
 *   So at most ~10 lines a second, whoever steps.
 * - Not on a terminal (a log), a line for each tenth of the total reached;
 *   the CAS that moves `tenth` on picks the drawer. With no total, one line
 *   every 10 s, chosen like the terminal's slots.
 * - The winner then takes the drawing token (a timestamp, so a drawer that
 *   was killed while holding it is overtaken after a second). The token
 *   keeps one line from being written over another and, above all, keeps a
 *   slow drawer's line from landing after the summary: finishing takes the
 *   token too, and nobody draws after DONE.
 *
 * Reading the clock costs more than the add, so a step looks at it only
 * when the count reaches check_at, which moves on by `stride` items,
 * adjusted so that the clock is read about every 10 ms at the current rate
 * (doubling while checks come too often, scaled down when they come too
 * late). If items suddenly slow by a factor k, the next redraw can come up
 * to ~10 ms * k late; it is never missed.
 */
#include "progress.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MS ((int64_t)1000000)
#define SLOT (100 * MS)       /* terminal redraws */
#define PLAIN_EVERY (10000 * MS) /* log lines when the total is unknown */
#define STALE (1000 * MS)     /* a token held this long belongs to a dead drawer */
#define MAX_STRIDE ((int64_t)1 << 20)

int64_t cc_progress_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int cc_progress_new(cc_progress **out, int64_t total, const char *label, size_t len, int flags) {
    if (total < 0 || total > CC_PROGRESS_MAX || len > CC_PROGRESS_LABEL) return -EINVAL;
    cc_progress *p = cc_calloc(sizeof *p);
    if (!p) return -ENOMEM;
    p->flags = (uint32_t)flags;
    p->total = total;
    p->start = cc_progress_now();
    /* a terminal shows the bar from the first step; a log says nothing
     * until there is something to say */
    p->next_draw = p->start + ((flags & CC_PROG_TTY) ? 0 : PLAIN_EVERY);
    p->checked = p->start;
    p->stride = 1;
    p->check_at = (!(flags & CC_PROG_TTY) && total > 0) ? (total + 9) / 10 : 1;
    if (p->check_at < 1) p->check_at = 1;
    for (size_t i = 0; i < len; i++) { /* one line stays one line */
        unsigned char c = (unsigned char)label[i];
        p->label[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    p->label_len = (uint32_t)len;
    cc_obj_init(&p->hdr, CC_T_PROGRESS);
    *out = p;
    return 0;
}

void cc_progress_destroy(cc_obj *o) { cc_free(o); }

/* The stamp this thread took the token with: giving it back is a CAS from
 * that stamp, so a drawer that was overtaken (stuck over STALE in its
 * write) cannot free the token of the one that overtook it. A thread
 * holds at most one token at a time (drawing runs no Lua). */
static __thread int64_t mine;

static void give(cc_progress *p) {
    int64_t held = mine;
    atomic_compare_exchange_strong(&p->drawing, &held, 0);
}

/* Take the drawing token; wait: keep trying (up to STALE) rather than give
 * up when another drawer has it. 1 when taken and not yet done. */
static int take(cc_progress *p, int wait) {
    for (;;) {
        int64_t now = cc_progress_now();
        int64_t held = atomic_load(&p->drawing);
        if (held == 0 || now - held > STALE) {
            if (atomic_compare_exchange_strong(&p->drawing, &held, now)) {
                mine = now;
                break;
            }
            continue;
        }
        if (!wait) return 0;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&p->state) & CC_PROG_DONE) {
        give(p);
        return 0;
    }
    return 1;
}

void cc_progress_drawn(cc_progress *p, int partial) {
    if (partial < 0)
        ; /* nothing was written: the screen is as it was */
    else if (partial)
        atomic_fetch_or(&p->state, CC_PROG_PARTIAL);
    else
        atomic_fetch_and(&p->state, ~(uint32_t)CC_PROG_PARTIAL);
    give(p);
}

/* Plain lines for a known total: the step that finds the count in a new
 * tenth draws it. Decided holding the token, with the count read there and
 * shown as read, so lines come out in order and no tenth comes twice (a
 * drawer that decided first but wrote second would print 60% after 70%). */
static int poll_tenths(cc_progress *p, int64_t *shown) {
    if (!take(p, 1)) return 0;
    int64_t c = cc_progress_count(p);
    int64_t t = (c < p->total ? c : p->total) * 10 / p->total;
    /* the first count of the next tenth: ceil((t+1) * total / 10) */
    int64_t next = t < 10 ? ((t + 1) * p->total + 9) / 10 : CC_PROGRESS_MAX + 1;
    atomic_store_explicit(&p->check_at, next, memory_order_relaxed);
    if (t > atomic_load_explicit(&p->tenth, memory_order_relaxed)) {
        atomic_store_explicit(&p->tenth, t, memory_order_relaxed);
        *shown = c;
        return 1;
    }
    give(p);
    return 0;
}

int cc_progress_poll(cc_progress *p, int64_t *shown) {
    int64_t c = cc_progress_count(p);
    if (atomic_load_explicit(&p->state, memory_order_relaxed) & CC_PROG_DONE) {
        atomic_store_explicit(&p->check_at, CC_PROGRESS_MAX + 1, memory_order_relaxed);
        return 0;
    }
    if (!(p->flags & CC_PROG_TTY) && p->total > 0) return poll_tenths(p, shown);
    int64_t now = cc_progress_now();
    int64_t dt = now - atomic_exchange_explicit(&p->checked, now, memory_order_relaxed);
    int64_t s = atomic_load_explicit(&p->stride, memory_order_relaxed);
    if (dt < 5 * MS)
        s = s * 2 > MAX_STRIDE ? MAX_STRIDE : s * 2;
    else if (dt > 20 * MS)
        s = s * (10 * MS) / dt; /* s <= 2^20: no overflow */
    if (s < 1) s = 1;
    atomic_store_explicit(&p->stride, s, memory_order_relaxed);
    atomic_store_explicit(&p->check_at, c + s, memory_order_relaxed);
    int64_t slot = atomic_load(&p->next_draw);
    if (now < slot) return 0;
    int64_t every = (p->flags & CC_PROG_TTY) ? SLOT : PLAIN_EVERY;
    if (!atomic_compare_exchange_strong(&p->next_draw, &slot, now + every)) return 0;
    if (!take(p, 0)) return 0;
    *shown = cc_progress_count(p); /* read holding the token: lines never go back */
    return 1;
}

int cc_progress_break(cc_progress *p) {
    return (atomic_fetch_and(&p->state, ~(uint32_t)CC_PROG_PARTIAL) & CC_PROG_PARTIAL) != 0;
}

int cc_progress_finish(cc_progress *p, int *partial) {
    *partial = 0;
    if (atomic_load(&p->state) & CC_PROG_DONE) return 0;
    if (!take(p, 1)) return 0; /* another finish got there first */
    uint32_t old = atomic_fetch_or(&p->state, CC_PROG_DONE);
    if (old & CC_PROG_DONE) {
        give(p);
        return 0;
    }
    atomic_store_explicit(&p->check_at, CC_PROGRESS_MAX + 1, memory_order_relaxed);
    atomic_store(&p->end, cc_progress_now());
    *partial = (old & CC_PROG_PARTIAL) != 0;
    return 1;
}

/* ---- the line ---- */

typedef struct line {
    char *buf;
    size_t len, cap;
    int cols;
} line;

static void put(line *l, const char *s, size_t n, int cols) {
    if (l->len + n >= l->cap) return; /* cap >= 512 holds every piece but the label */
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    l->buf[l->len] = 0;
    l->cols += cols;
}

static void puts_(line *l, const char *s) { put(l, s, strlen(s), (int)strlen(s)); }

/* Columns: one per UTF-8 character (continuation bytes take none). */
static int columns(const char *s, size_t n) {
    int c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

/* The longest prefix of s within cols columns, cut at a character start. */
static size_t prefix(const char *s, size_t n, int cols) {
    size_t i = 0;
    for (int c = 0; i < n; i++) {
        if (((unsigned char)s[i] & 0xc0) != 0x80 && c++ == cols) break;
    }
    return i;
}

static void fmt_rate(char *b, size_t n, double r) {
    if (!(r >= 0) || r > 1e18) snprintf(b, n, "?/s");
    else if (r < 1000) snprintf(b, n, "%.1f/s", r);
    else if (r < 1e6) snprintf(b, n, "%.1fk/s", r / 1e3);
    else if (r < 1e9) snprintf(b, n, "%.1fM/s", r / 1e6);
    else snprintf(b, n, "%.1fG/s", r / 1e9);
}

static void fmt_clock(char *b, size_t n, double s) {
    if (!(s >= 0) || s > 359999999) {
        snprintf(b, n, "?");
        return;
    }
    long long t = (long long)(s + 0.5);
    if (t >= 3600)
        snprintf(b, n, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(b, n, "%lld:%02lld", t / 60, t % 60);
}

static void fmt_elapsed(char *b, size_t n, double s) {
    if (s < 60) snprintf(b, n, "%.2fs", s);
    else fmt_clock(b, n, s);
}

size_t cc_progress_line(cc_progress *p, int64_t c, char *buf, size_t cap, int width, int final) {
    int64_t total = p->total;
    int64_t shown = total > 0 && c > total ? total : c; /* steps past total: clamped */
    int64_t end = atomic_load(&p->end);
    double secs = (double)((end ? end : cc_progress_now()) - p->start) / 1e9;
    double rate = secs > 0 ? (double)c / secs : 0;
    char counts[48], pct[8] = "", rt[24], eta[48] = "", el[24];
    if (total > 0) {
        snprintf(counts, sizeof counts, "%lld/%lld", (long long)shown, (long long)total);
        snprintf(pct, sizeof pct, "%3d%%", (int)(shown * 100 / total));
    } else {
        snprintf(counts, sizeof counts, "%lld", (long long)c);
    }
    fmt_rate(rt, sizeof rt, rate);
    line l = {buf, 0, cap, 0};
    buf[0] = 0;
    const char *lab = p->label;
    size_t lablen = p->label_len;

    if (final) { /* "label: 100/100 done in 1.23s (81.3/s)", never cut: it is a log line */
        fmt_elapsed(el, sizeof el, secs);
        char tail[160];
        snprintf(tail, sizeof tail, "%s done in %s (%s)", counts, el, rt);
        if (lablen) put(&l, lab, lablen < cap - 200 ? lablen : cap - 200, 0), puts_(&l, ": ");
        puts_(&l, tail);
        return l.len;
    }
    if (total > 0) {
        char t[24];
        if (shown >= total)
            snprintf(eta, sizeof eta, "ETA 0:00");
        else if (c > 0 && rate > 0) {
            fmt_clock(t, sizeof t, (double)(total - shown) / rate);
            snprintf(eta, sizeof eta, "ETA %s", t);
        } else {
            snprintf(eta, sizeof eta, "ETA ?");
        }
    } else {
        fmt_clock(el, sizeof el, secs);
        snprintf(eta, sizeof eta, "%s%s", width <= 0 ? "elapsed " : "", el);
    }
    if (width <= 0) { /* a log line: "label: 45/100 (45%) 12.3/s ETA 0:05" */
        if (lablen) put(&l, lab, lablen < cap - 200 ? lablen : cap - 200, 0), puts_(&l, ": ");
        puts_(&l, counts);
        if (total > 0) {
            const char *q = pct;
            while (*q == ' ') q++;
            puts_(&l, " ("), puts_(&l, q), puts_(&l, ")");
        }
        puts_(&l, " "), puts_(&l, rt), puts_(&l, " "), puts_(&l, eta);
        return l.len;
    }

    /* a terminal line within width - 1 columns (the last column would wrap
     * on some terminals): counts and percent first, then rate, ETA, the
     * label, and the bar in whatever is left */
    int avail = width - 1;
    if (avail > (int)cap - 64) avail = (int)cap - 64;
    int core = (int)strlen(counts) + (total > 0 ? 1 + (int)strlen(pct) : 0);
    if (core > avail) { /* absurdly narrow: as much of the counts as fits */
        size_t n = avail > 0 ? (size_t)avail : 0;
        put(&l, counts, n < strlen(counts) ? n : strlen(counts), 0);
        return l.len;
    }
    int used = core;
    int with_rate = used + 2 + (int)strlen(rt) <= avail;
    if (with_rate) used += 2 + (int)strlen(rt);
    int with_eta = used + 2 + (int)strlen(eta) <= avail;
    if (with_eta) used += 2 + (int)strlen(eta);
    int labcols = columns(lab, lablen);
    size_t labbytes = lablen;
    if (labcols && used + 2 + labcols > avail) { /* cut the label, or drop it */
        int room = avail - used - 2;
        labbytes = room >= 4 ? prefix(lab, lablen, room) : 0;
        labcols = room >= 4 ? room : 0;
        if (labcols > columns(lab, labbytes)) labcols = columns(lab, labbytes);
    }
    if (labbytes) used += labcols + 2;
    int bar = 0;
    if (total > 0 && avail - used >= 2 + 7) {
        bar = avail - used - 2 - 2; /* "  [" ... "]" */
        if (bar > 40) bar = 40;
    }
    if (labbytes) put(&l, lab, labbytes, labcols), puts_(&l, "  ");
    puts_(&l, counts);
    if (total > 0) puts_(&l, " "), puts_(&l, pct);
    if (bar) {
        int fill = (int)(shown * bar / total);
        char b[48];
        b[0] = '[';
        for (int i = 0; i < bar; i++) b[1 + i] = i < fill ? '#' : '.';
        b[bar + 1] = ']';
        puts_(&l, "  ");
        put(&l, b, (size_t)bar + 2, bar + 2);
    }
    if (with_rate) puts_(&l, "  "), puts_(&l, rt);
    if (with_eta) puts_(&l, "  "), puts_(&l, eta);
    return l.len;
}
