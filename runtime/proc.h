/* proc.h -- fork for process.spawn, waiting with deadlines, and running
 * external programs (proc.c). */
#ifndef CC_PROC_H
#define CC_PROC_H
#include "cc.h"
#include <sys/types.h>

/* fork() after flushing stdio (so no buffered line is printed twice). In
 * the child, closes the write ends of other children's result pipes (so
 * their readers see EOF when those children exit) and runs the fork hooks.
 * The child dies with its parent (SIGKILL, PR_SET_PDEATHSIG) and has the
 * default action for SIGINT and SIGTERM.
 * keep_fd: the result pipe the child itself will write (-1 for none). */
pid_t cc_fork(int keep_fd);
/* Track a descriptor that must not leak into later children. */
void cc_fork_track(int fd, int on);
/* pipe2(O_CLOEXEC | flags) with both ends tracked from the start (no fork
 * in between can inherit them untracked); 0 or -errno. */
int cc_pipe_tracked(int fds[2], int flags);
/* Untrack and close (no-op for fd < 0). */
void cc_close_tracked(int fd);
void cc_fork_hook(void (*fn)(void));   /* run in every child, in order */

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
