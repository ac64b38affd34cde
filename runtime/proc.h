/* proc.h -- fork for process.spawn, waiting with deadlines, and running
 * external programs (proc.c). */
#ifndef CC_PROC_H
#define CC_PROC_H
#include "cc.h"
#include <sys/types.h>

/* Track a descriptor that must not leak into later children. */
void cc_fork_track(int fd, int on);
/* pipe2(O_CLOEXEC | flags) with both ends tracked from the start (no fork
 * in between can inherit them untracked); 0 or -errno. */
int cc_pipe_tracked(int fds[2], int flags);
/* Untrack and close (no-op for fd < 0). */
void cc_close_tracked(int fd);

/* libgcc's unwinder lock across fork (unwinder.c): the parent locates it
 * before forking (NULL where it cannot be found); the child, still alone,
 * unlocks it if a thread left behind held it, so it can raise LuaJIT
 * errors. */
void *cc_unwinder_locate(void);
void cc_unwinder_release(void *mutex);

/* ---- children of process.spawn ----
 *
 * The record of a forked child that runs code of ours (not exec): the
 * runtime owns it, as libuv owns a uv_process_t; the bindings only turn
 * its fields into Lua values. The child reports through a result pipe: one
 * status byte (CC_CHILD_OK, CC_CHILD_FINISHING), then an opaque message
 * whose references (cc_msg_retain) the record owns once it is read. Once
 * read, result is "status byte, message" when the whole of it arrived, and
 * empty when the child sent nothing or died while sending. */
enum { CC_CHILD_OK = 1, CC_CHILD_FINISHING = 0x80 };

typedef struct cc_child {
    pid_t pid;          /* > 0 once forked */
    pid_t owner;        /* the process that forked it; in any other process
                           (a forked copy of the record) it is not a child */
    int rfd;            /* result pipe, -1 once read to EOF */
    int reaped, status; /* waitpid status once reaped */
    int daemon;
    int stopped;        /* stopped by cc_child_stop (or by a signal at exit) */
    int holds_refs;     /* result holds a whole message owning references */
    cc_buf result;      /* status byte, then the message */
    cc_buf held;        /* cc_obj *[]: one count on each object the child can
                           reach, taken by the caller before the fork and
                           given back once the child is reaped */
    char name[64];
} cc_child;

/* A zeroed record (rfd -1, owner this process), or NULL. */
cc_child *cc_child_new(void);
/* Release what the record holds -- the result's references and the held
 * counts, only in the owner and only once the child is reaped (an unreaped
 * child keeps them: a leak, never a use after free) -- and free it. It does
 * not wait: reap first (cc_child_finish, cc_child_stop). */
void cc_child_free(cc_child *c);
/* Is c a child of the calling process? */
int cc_child_mine(const cc_child *c);
/* Fork with a result pipe: returns 0 in the child with *wfd the pipe's
 * write end (for cc_child_send), the pid in the parent, or -errno. */
pid_t cc_child_fork(cc_child *c, int *wfd);
/* In the child: write the status byte and the message (with its length,
 * so a cut message is told from a whole one), close wfd. */
void cc_child_send(int wfd, int status, const void *msg, size_t len);
/* Reap without blocking: 1 once the child is gone (not ours: 0). */
int cc_child_poll(cc_child *c);
/* Read the result to EOF, then reap; 0 or -ETIMEDOUT, -EINTR, -errno.
 * returned: a child that sent CC_CHILD_FINISHING (it still joins its own
 * workers) counts as done once its result is in; it is reaped later. */
int cc_child_finish(cc_child *c, double deadline, int returned);
/* Send sig: 0, -ESRCH once it has been reaped, or -errno. */
int cc_child_kill(cc_child *c, int sig);
/* SIGTERM (a daemon: SIGKILL), grace seconds, SIGKILL; reap, keep any
 * result it wrote, and note it for the exit line when the program is
 * stopping. Not cut short by the calling thread's interruption. */
void cc_child_stop(cc_child *c, double grace);

/* CPUs this process may run on (at least 1). */
int cc_cpu_count(void);

/* The program is ending abnormally (uncaught error, signal, failing
 * os.exit): unjoined workers are stopped, not joined. Process-wide; a new
 * child starts with it off. */
void cc_set_stopping(int on);
int cc_stopping(void);
/* Note a worker stopped at exit ("process 123 (name)"); the notes print as
 * one line on stderr from cc_exit_report, which also runs at exit(). */
void cc_exit_note(const char *what);
void cc_exit_report(void);

/* Read everything from fd until EOF or deadline (0, -ETIMEDOUT, -EINTR). */
int cc_read_all(int fd, cc_buf *out, double deadline);
/* Reap pid: 0 with *status, -ETIMEDOUT, -EINTR, or -ECHILD. */
int cc_wait_pid(pid_t pid, int *status, double deadline);

/* process.run: argv[0] searched in PATH; stdin fed from in; stdout/stderr
 * collected. 0 with *status (a waitpid status), -ETIMEDOUT (the program was
 * killed with SIGKILL; *status is still set), or -errno (e.g. exec failed:
 * -ENOENT). */
int cc_run(char *const argv[], const char *in, size_t inlen, double deadline,
           cc_buf *out, cc_buf *err, int *status);
#endif
