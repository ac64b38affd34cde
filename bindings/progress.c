/*
 * progress.c -- concur.progress(total, [label]): a shared counter that
 * workers step and that draws itself on stderr.
 *
 * The counter and who-draws-when live in the arena (runtime/progress.c);
 * this file checks arguments, finds the terminal's width and does the
 * writes: one write(2) per line, so lines from different processes never
 * interleave mid-line. On a terminal a line is "\r<line>\x1b[K" (redrawn
 * in place, the rest of the old line erased); the summary adds "\n". In a
 * log each line ends with "\n". A stepper never waits for stderr: a line
 * it cannot write at once is dropped (the summary alone waits), and a
 * reader that is gone costs the line, not a SIGPIPE.
 *
 * A line left open on the terminal (drawn without its newline) is closed
 * when the progress is abandoned: the creating state's handle is collected
 * (lua_close at the end of the script) or the process exits (an atexit
 * hook, for os.exit without closing the state). Only the handle made by
 * concur.progress in this process does that -- a worker's copy going away
 * says nothing about the work.
 */
#include "cb.h"
#include "../include/concur.h"
#include "../runtime/progress.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define MT "concur.progress"

/* ---- the creating process's open progress objects, for exit ---- */

#define NOPEN 64
static struct {
    cc_progress *p;
    pid_t pid;
} open_list[NOPEN];
static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static int atexit_set;

/* One line to stderr. A progress line must never kill the program: with
 * stderr a pipe whose reader is gone, write(2) raises SIGPIPE, so it is
 * blocked in this thread for the write and a SIGPIPE the write caused is
 * taken back (one that was already pending is left alone). Other errors
 * drop the line. */
static void write_all(const char *s, size_t n) {
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EPIPE && !was_pending) {
            struct timespec zero = {0, 0};
            sigtimedwait(&pipe_set, NULL, &zero);
        }
        if (w <= 0) break;
        s += w;
        n -= (size_t)w;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static int term_width(void) {
    struct winsize ws;
    if (ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    const char *e = getenv("COLUMNS");
    long w = e ? strtol(e, NULL, 10) : 0;
    return w > 0 && w < 100000 ? (int)w : 80;
}

/* Can a line go to stderr without blocking? A stepper is somebody's work
 * loop: a stalled reader (a full pipe, a terminal stopped by Ctrl-S) costs
 * it the line, not the wait. POLLOUT on a pipe means room for PIPE_BUF
 * bytes, more than a line. */
static int writable(void) {
    struct pollfd pf = {.fd = 2, .events = POLLOUT};
    return poll(&pf, 1, 0) == 1 && (pf.revents & POLLOUT);
}

/* Draw the line for count (final: the summary, which waits for stderr like
 * any other output). The caller holds the token. 1 when written. */
static int draw(cc_progress *p, int64_t count, int final) {
    if (!final && !writable()) return 0;
    char buf[1024];
    size_t n = 0;
    int tty = p->flags & CC_PROG_TTY;
    if (tty) buf[n++] = '\r';
    int width = tty && !final ? term_width() : 0;
    n += cc_progress_line(p, count, buf + n, sizeof buf - 16, width, final);
    if (tty) memcpy(buf + n, "\x1b[K", 3), n += 3;
    if (final || !tty) buf[n++] = '\n';
    write_all(buf, n);
    return 1;
}

/* Finish without a summary: close an open terminal line. */
static void abandon(cc_progress *p) {
    int partial;
    if (!cc_progress_finish(p, &partial)) return;
    if (partial) write_all("\n", 1);
    cc_progress_drawn(p, 0);
}

static void close_open(void) {
    pthread_mutex_lock(&open_mu);
    for (int i = 0; i < NOPEN; i++)
        if (open_list[i].p && open_list[i].pid == getpid()) {
            abandon(open_list[i].p);
            open_list[i].p = NULL;
        }
    pthread_mutex_unlock(&open_mu);
}

/* include/concur.h: end this process's open terminal lines before a
 * message (the host calls it before reporting an error). */
void concur_progress_break(void) {
    pthread_mutex_lock(&open_mu);
    for (int i = 0; i < NOPEN; i++)
        if (open_list[i].p && open_list[i].pid == getpid() && cc_progress_break(open_list[i].p))
            write_all("\n", 1);
    pthread_mutex_unlock(&open_mu);
}

/* A fork while another thread holds open_mu must not leave the child's
 * copy locked for ever (its exit would hang in close_open). */
static void fork_prepare(void) { pthread_mutex_lock(&open_mu); }
static void fork_after(void) { pthread_mutex_unlock(&open_mu); }

static void track(cc_progress *p, int on) {
    pthread_mutex_lock(&open_mu);
    if (!atexit_set) {
        atexit_set = atexit(close_open) == 0;
        pthread_atfork(fork_prepare, fork_after, fork_after);
    }
    for (int i = 0; i < NOPEN; i++) {
        if (on && !open_list[i].p) {
            open_list[i].p = p, open_list[i].pid = getpid();
            break;
        }
        if (!on && open_list[i].p == p && open_list[i].pid == getpid()) {
            open_list[i].p = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&open_mu); /* past NOPEN live ones: closed by __gc only */
}

/* ---- arguments ---- */

static const char *numtext(lua_State *L, int idx, char *b, size_t n) {
    if (cb_isinteger(L, idx))
        snprintf(b, n, "%lld", (long long)lua_tointeger(L, idx));
    else
        snprintf(b, n, "%.17g", (double)lua_tonumber(L, idx));
    return b;
}

/* A whole number 0..2^53 at idx, else an error naming what and why. */
static int64_t count_arg(lua_State *L, int idx, int arg, const char *fname, const char *what) {
    if (lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "%s: bad argument #%d (%s: number expected, got %s)", fname, arg,
                   what, cb_typeof(L, idx));
    int ok = 0;
    lua_Integer v = cb_tointegerx(L, idx, &ok);
    if (!ok || v < 0 || v > CC_PROGRESS_MAX) {
        char num[64];
        luaL_error(L, "%s: bad argument #%d (%s must be a whole number from 0 to 2^53, got %s)",
                   fname, arg, what, numtext(L, idx, num, sizeof num));
    }
    return (int64_t)v;
}

static cc_progress *self(lua_State *L, const char *fname) {
    return (cc_progress *)cb_self(L, CC_T_PROGRESS, fname);
}

/* ---- concur.progress ---- */

static int l_progress(lua_State *L) {
    int64_t total = lua_isnoneornil(L, 1) ? 0 : count_arg(L, 1, 1, "concur.progress", "total");
    size_t len = 0;
    const char *label = "";
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TSTRING)
            return luaL_error(L,
                              "concur.progress: bad argument #2 (label: string expected, got %s)",
                              cb_typeof(L, 2));
        label = lua_tolstring(L, 2, &len);
        if (len > CC_PROGRESS_LABEL)
            return luaL_error(L,
                              "concur.progress: bad argument #2 (label too long: %d bytes, at "
                              "most %d)",
                              (int)len, CC_PROGRESS_LABEL);
    }
    cc_progress *p;
    int r;
    CB_RETRY(L, r, cc_progress_new(&p, total, label, len, isatty(2) ? CC_PROG_TTY : 0));
    if (r) return cb_fail(L, r, "concur.progress");
    cb_handle *h = cb_push(L, &p->hdr);
    h->flags = (int)cc_pid(); /* the creator: its handle going away ends the line */
    track(p, 1);
    cb_pressure(L, sizeof *p);
    return 1;
}

/* ---- methods ---- */

static int p_step(lua_State *L) {
    cc_progress *p = self(L, "progress:step");
    int64_t n = 1;
    if (lua_gettop(L) > 1 && !lua_isnil(L, 2)) n = count_arg(L, 2, 1, "progress:step", "n");
    int r = cc_progress_add(p, n);
    int64_t shown;
    if (r > 0 && cc_progress_poll(p, &shown)) {
        int wrote = draw(p, shown, 0);
        cc_progress_drawn(p, wrote ? (int)(p->flags & CC_PROG_TTY) : -1);
    } else if (r < 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "the count %lld + %lld would pass 2^53",
                 (long long)cc_progress_count(p), (long long)n);
        return luaL_error(L, "progress:step: %s", msg);
    }
    return 0;
}

static int p_done(lua_State *L) {
    cc_progress *p = self(L, "progress:done");
    int partial;
    if (cc_progress_finish(p, &partial)) {
        draw(p, cc_progress_count(p), 1);
        cc_progress_drawn(p, 0);
    }
    return 0;
}

static int p_count(lua_State *L) {
    cb_pushinteger(L, cc_progress_count(self(L, "progress:count")));
    return 1;
}

static int p_total(lua_State *L) {
    cc_progress *p = self(L, "progress:total");
    if (p->total > 0) cb_pushinteger(L, p->total);
    else lua_pushnil(L);
    return 1;
}

static int p_label(lua_State *L) {
    cc_progress *p = self(L, "progress:label");
    lua_pushlstring(L, p->label, p->label_len);
    return 1;
}

static int p_elapsed(lua_State *L) {
    cc_progress *p = self(L, "progress:elapsed");
    int64_t end = atomic_load(&p->end); /* frozen at done */
    lua_pushnumber(L, (lua_Number)((end ? end : cc_progress_now()) - p->start) / 1e9);
    return 1;
}

static int p_isdone(lua_State *L) {
    cc_progress *p = self(L, "progress:finished");
    lua_pushboolean(L, (atomic_load(&p->state) & CC_PROG_DONE) != 0);
    return 1;
}

static int p_tostring(lua_State *L) {
    cc_progress *p = (cc_progress *)cb_check(L, 1, CC_T_PROGRESS, "progress:__tostring");
    char line[512];
    cc_progress_line(p, cc_progress_count(p), line, sizeof line, 0, 0);
    lua_pushfstring(L, "concur.progress(%s)%s", line,
                    (atomic_load(&p->state) & CC_PROG_DONE) ? " done" : "");
    return 1;
}

/* The creator's handle ends an unfinished line, then gives its count back
 * as every handle does. */
static int p_gc(lua_State *L) {
    cb_handle *h = luaL_testudata(L, 1, MT);
    if (!h || !h->obj) return 0;
    cc_obj *o = h->obj;
    if (h->owner == cc_pid() && h->flags == (int)cc_pid()) {
        abandon((cc_progress *)o);
        track((cc_progress *)o, 0);
    }
    h->obj = NULL;
    if (h->owner == cc_pid()) cc_release(o);
    return 0;
}

static const luaL_Reg methods[] = {
    {"step", p_step},   {"done", p_done},       {"count", p_count},       {"total", p_total},
    {"label", p_label}, {"elapsed", p_elapsed}, {"finished", p_isdone}, {NULL, NULL},
};

int cb_open_progress(lua_State *L) {
    static const luaL_Reg meta[] = {{"__tostring", p_tostring}, {"__gc", p_gc}, {NULL, NULL}};
    cb_lazytype(CC_T_PROGRESS, "progress", methods, meta, NULL);
    lua_pushcfunction(L, l_progress);
    return 1;
}
