/*
 * pipe.h -- framed messages over a socketpair (pipe.c).
 *
 * A frame is a u64 length then the message bytes. A sender takes the end's
 * send lock (a cc_mutex in the arena) around the whole frame, so two senders
 * on one end -- threads or processes -- never interleave. Sends use
 * MSG_NOSIGNAL: a gone reader is -EPIPE, never SIGPIPE. Receivers likewise
 * hold the end's recv lock for a whole frame.
 *
 * An end is a shared object (CC_T_PIPE) in the arena: its fd number is valid
 * in the process that made it and in every process forked from that one
 * afterwards (cc_pipe_usable tells). close() shuts the socket down for every
 * holder (the peer sees EOF at once, even if a forked child still has the
 * fd), and the fd itself is closed in a process when the last local handle
 * goes (cc_pipe_drop_local).
 */
#ifndef CC_PIPE_H
#define CC_PIPE_H
#include "cc.h"

typedef struct cc_pipe cc_pipe;
int cc_pipe_new(cc_pipe **a, cc_pipe **b, int duplex);   /* duplex 0: a reads, b writes */
int cc_pipe_send(cc_pipe *p, const void *msg, size_t len, double deadline);  /* -EPIPE, -EBADF (closed) */
int cc_pipe_recv(cc_pipe *p, cc_buf *out, double deadline);  /* -EPIPE at EOF, -ETIMEDOUT, -EBADF */
int cc_pipe_poll(cc_pipe *p, double deadline);               /* 1 readable (data or EOF), 0 timeout */
int cc_pipe_close(cc_pipe *p);
int cc_pipe_closed(cc_pipe *p);
int cc_pipe_readable(cc_pipe *p);   /* can recv */
int cc_pipe_writable(cc_pipe *p);   /* can send */
int cc_pipe_fd(cc_pipe *p);
int cc_pipe_usable(cc_pipe *p);     /* is the fd valid in this process? */
#endif
