/*
 * pipe.h -- framed messages over a socketpair (pipe.c).
 *
 * A frame is a 24-byte header (a magic word, a check word, the u64 length,
 * the frame's u64 offset in its direction's stream) then the message bytes. A sender takes its direction's
 * send lock (a robust cc_mutex in the arena) around the whole frame, so two
 * senders on one end -- threads or processes -- never interleave. Sends use
 * MSG_NOSIGNAL: a gone reader is -EPIPE, never SIGPIPE. Receivers likewise
 * hold the direction's recv lock for a whole frame.
 *
 * Faults. The two ends share a "link" in the arena that records the
 * progress of the frame being sent and of the frame being received in each
 * direction. A receiver that times out mid-frame keeps what it read (the
 * next recv, in any thread or process, resumes); a receiver killed mid-frame
 * costs its one message (the next one finds the next real header); a sender that
 * dies or is interrupted mid-frame, or a header that does not check out,
 * makes the pipe *broken*: every later send and recv on either end returns
 * -EPROTO and cc_pipe_broken() says why.
 *
 * Small frames are staged in the link's shared memory and reach the
 * socket in batches (or are taken from there by a receiver that has read
 * the socket dry): see pipe.c. Sends into an end whose reader was closed
 * fail with -EPIPE.
 *
 * An end is a shared object (CC_T_PIPE) in the arena: its fd number is valid
 * in the process that made it and in every process forked from that one
 * afterwards (cc_pipe_usable tells). close() shuts the socket down for every
 * holder (the peer sees EOF at once, even if a forked child still has the
 * fd). Each process keeps a table of the pipe fds it holds; the fd of an end
 * destroyed elsewhere is closed at the next pipe creation or destruction.
 */
#ifndef CC_PIPE_H
#define CC_PIPE_H
#include "cc.h"

/* The largest message a pipe carries; a header announcing more is corrupt. */
#define CC_PIPE_MAX_MSG ((uint64_t)1 << 32)

typedef struct cc_pipe cc_pipe;
int cc_pipe_new(cc_pipe **a, cc_pipe **b, int duplex);   /* duplex 0: a reads, b writes */
/* 0; -EPIPE (peer closed), -EBADF (this end closed), -EPROTO (broken),
 * -EMSGSIZE (len > CC_PIPE_MAX_MSG), -ETIMEDOUT (only before the first byte),
 * -EINTR (interrupted; mid-frame this breaks the pipe). */
int cc_pipe_send(cc_pipe *p, const void *msg, size_t len, double deadline);
/* 0; -EPIPE at EOF, -ETIMEDOUT, -EINTR (the partial frame is kept), -EBADF,
 * -EPROTO (broken), -ENOBUFS (no process memory for the message: it is
 * dropped), -ENOMEM (no arena memory to keep a partial frame: it is dropped). */
int cc_pipe_recv(cc_pipe *p, cc_buf *out, double deadline);
int cc_pipe_poll(cc_pipe *p, double deadline);  /* 1 readable (data, EOF or broken), 0 timeout */
/* Before sleeping on the fd elsewhere (concur.wait's poll): senders put
 * what they stage on the socket from now on. */
void cc_pipe_want(cc_pipe *p);
int cc_pipe_close(cc_pipe *p);
int cc_pipe_closed(cc_pipe *p);
const char *cc_pipe_broken(cc_pipe *p);  /* NULL, or why the pipe is broken */
int cc_pipe_readable(cc_pipe *p);   /* can recv */
int cc_pipe_writable(cc_pipe *p);   /* can send */
int cc_pipe_fd(cc_pipe *p);
int cc_pipe_usable(cc_pipe *p);     /* is the fd valid in this process? */
#endif
