/*
 * cb.h -- what the binding files share: the codec, shared-object handles,
 * timeouts and error conventions. Only bindings/ includes this.
 *
 * Handles. A shared object (cc_obj in the arena) appears in Lua as a full
 * userdata holding one reference count (cb_handle); its metatable is the one
 * registered for its type under the name "concur.<type>". __gc releases the
 * count. A handle can be "closed" locally only where the type says so.
 *
 * Errors. Misuse raises: "queue:put: cannot send a coroutine (argument 1,
 * field "job.co")". Expected outcomes return: nil, "timeout" / nil, "closed".
 */
#ifndef CB_H
#define CB_H

#include "compat.h"
#include <errno.h>
#include "../runtime/cc.h"

/* ---- the codec (codec.h: the format; codec_encode.c, codec_decode.c) ---- */
/* Encode the n values at stack[first..first+n-1] into one message in out
 * (out->len is set; the message owns a reference on every shared object it
 * names). On a value that cannot cross, raises an error
 * "<fname>: cannot send a <type> (argument <k>, field "a.b")"; argument
 * numbers count from argbase. out is reset, not appended to. */
void cb_encode(lua_State *L, int first, int n, cc_buf *out, const char *fname, int argbase);
/* Decode a message: pushes its values, returns how many. Takes over the
 * message's references (the caller must not release them afterwards), also
 * on error. Raises "<fname>: corrupt message (...)" on bad input. */
int cb_decode(lua_State *L, const void *msg, size_t len, const char *fname);
/* The same for bytes from outside (concur.decode): refuses a message of
 * another format version ("<fname>: message format N, this build reads M")
 * and, unless trust, Lua functions (bytecode is not verified by the VM), C
 * functions and module names (decoding must not run require). */
int cb_decode_string(lua_State *L, const void *msg, size_t len, const char *fname, int trust);
/* Decode without raising: returns the count, or -1 with an error message
 * pushed. Used by the fuzz harness and by paths that must not longjmp. */
int cb_decode_protected(lua_State *L, const void *msg, size_t len);

/* ---- handles (concur.c) ---- */
typedef struct cb_handle {
    cc_obj *obj;        /* NULL once released */
    int flags;          /* per-handle state for types that need it */
    pid_t owner;        /* the process whose count this handle holds: a
                           forked child's GC must not release its parent's */
} cb_handle;

/* Register a type: metatable "concur.<name>" with methods as __index and
 * the given metamethods (plus a default __gc/__tostring/__close when absent). */
void cb_newtype(lua_State *L, enum cc_type t, const char *name,
                const luaL_Reg *methods, const luaL_Reg *meta);
/* The same on first use: nothing is made now; the first push or check of a
 * handle of type t in a state makes the metatable there, as cb_newtype and
 * then cb_index_with_methods(index) when index is not NULL. name, methods
 * and meta must be static (they are kept for the process). */
void cb_lazytype(enum cc_type t, const char *name, const luaL_Reg *methods,
                 const luaL_Reg *meta, lua_CFunction index);
/* Make metatable tname's __index the closure index, with the methods
 * table cb_newtype made as its upvalue: index reads items (numbers, keys)
 * and finds methods in lua_upvalueindex(1) for other keys. */
void cb_index_with_methods(lua_State *L, const char *tname, lua_CFunction index);
/* Give the library table on top a metatable whose __call is call
 * (queue(...) as queue.new(...)). */
void cb_callable(lua_State *L, lua_CFunction call);
/* Push a handle for o, taking over one reference (the caller's). */
cb_handle *cb_push(lua_State *L, cc_obj *o);
/* Check that argument idx is a handle of type t; raises naming fname. */
cc_obj *cb_check(lua_State *L, int idx, enum cc_type t, const char *fname);
cc_obj *cb_check_any(lua_State *L, int idx, const char *fname);
/* In a method registered through cb_newtype: argument 1 must be a handle of
 * type t (one pointer compare with the metatable upvalue on the fast path;
 * t = CC_T_NONE accepts any concur object, the caller then checks). */
cc_obj *cb_self(lua_State *L, enum cc_type t, const char *fname);
cc_obj *cb_test(lua_State *L, int idx);          /* any concur handle, or NULL */
/* Push a metatable of its own for the handle at idx: a copy of its type's,
 * marked so that cb_check and cb_test still know the handle. The caller
 * changes fields (a per-handle __index: methods found without a C call)
 * and sets it. */
void cb_derive(lua_State *L, int idx);
/* Give the handle at idx a metatable of its own (cb_derive) whose __index is
 * `methods` as closures bound to it (upvalue 1 = the handle), so a method
 * checks its receiver with one address compare (locks, queues). */
void cb_bind_methods(lua_State *L, int idx, const luaL_Reg *methods);
/* Retain every object that has a handle in this state and list them in held
 * (an array of cc_obj *, held->len bytes): all that a child forked from this
 * state can reach. The caller releases each one later. 0 or -ENOMEM. */
int cb_retain_reachable(lua_State *L, cc_buf *held);
/* What to call the value at idx after "got" in an argument error: a
 * userdata's __name (FILE*, concur.queue), else its type, as luaL_typeerror. */
const char *cb_typeof(lua_State *L, int idx);
const char *cb_typename(enum cc_type t);         /* "queue", "list", ... */

/* ---- common helpers (concur.c) ---- */
/* The one argument-error path. "<fname>: bad argument #<arg> (<msg>)",
 * or "<fname>: bad self (<msg>)" for arg 0: names the function on both VMs
 * (LuaJIT's luaL_argerror says '?' inside methods). arg counts from the
 * first argument after self for methods. */
int cb_argerror(lua_State *L, int arg, const char *fname, const char *msg);
/* The same from a stack index: a method's ("type:verb") self is index 1. */
int cb_idxerror(lua_State *L, int idx, const char *fname, const char *msg);
/* "<expected> expected, got <cb_typeof>" for the value at stack index idx. */
int cb_typeerror(lua_State *L, int idx, const char *fname, const char *expected);
void cb_checktable(lua_State *L, int idx, int arg, const char *fname);
void cb_checkfunction(lua_State *L, int idx, int arg, const char *fname);
/* An integer (integral floats too, on both VMs) at idx, else the error above. */
lua_Integer cb_checkint(lua_State *L, int idx, int arg, const char *fname);
lua_Integer cb_optint(lua_State *L, int idx, int arg, const char *fname, lua_Integer def);
/* Optional timeout argument (nil/none = forever; negative = error) -> deadline */
double cb_opt_deadline(lua_State *L, int idx, const char *fname);
/* Map a negative errno from the runtime to Lua: -ETIMEDOUT -> nil,"timeout";
 * -EPIPE -> nil,"closed"; -EINTR -> raises "interrupted"; -ENOMEM -> raises
 * the arena-exhausted message; others raise "<fname>: <strerror>".
 * Returns the number of values pushed (for `return cb_fail(...)`). */
int cb_fail(lua_State *L, int err, const char *fname);
/* Raise the "shared memory exhausted (N MiB in use of M; set CONCUR_SHM)" error. */
int cb_nomem(lua_State *L, const char *fname);
/* Raise "<fname>: out of memory (process memory, not the shared arena)":
 * for a -ENOMEM that came from malloc (a copy handed out, a buffer). */
int cb_oom(lua_State *L, const char *fname);
/* A full garbage collection (unless the script stopped the collector):
 * run before reporting the arena exhausted, then retry once. */
void cb_collect(lua_State *L);
#define CB_RETRY(L, r, expr)                                                                     \
    do {                                                                                         \
        (r) = (expr);                                                                            \
        if ((r) == -ENOMEM || (r) == -EMFILE || (r) == -ENFILE) {                                \
            cb_collect(L);                                                                       \
            (r) = (expr);                                                                        \
        }                                                                                        \
    } while (0)
/* Tell the collector a new handle pins this many bytes outside the Lua heap. */
void cb_pressure(lua_State *L, size_t bytes);
/* Make sure the arena exists (reads CONCUR_SHM the first time). */
void cb_arena(lua_State *L);

/* A message handler for lua_pcall: a string error gets the traceback. */
int cb_msghandler(lua_State *L);
/* For each userdata of metatable mt that is a key of registry[key]: call
 * fn(L, ud, arg), which keeps the stack balanced; a true result removes the
 * key. (Unjoined process and thread handles, closed at exit.) */
void cb_registry_drain(lua_State *L, const void *key, const char *mt,
                       int (*fn)(lua_State *L, void *ud, int arg), int arg);
/* t = registry[key] (a table); t[stack[idx]] = on and true or nil. */
void cb_registry_mark(lua_State *L, const void *key, int idx, int on);
/* Give the userdata on top of the stack a metatable of its own holding
 * only __gc = gc, and keep it in the registry under key (popped). */
void cb_keep_with_gc(lua_State *L, const void *key, lua_CFunction gc);
/* A per-state scratch buffer (which = 0 or 1) for one call, reused so
 * put/get/send/recv allocate nothing; safe against re-entry from
 * finalizers, required modules and metamethods (see concur.c). Give it
 * back with cb_buf_give before returning; a call that raises need not. */
#define cb_buf_take(L, which) cb_buf_take_at(L, which, __builtin_frame_address(0))
cc_buf *cb_buf_take_at(lua_State *L, int which, const void *frame);
void cb_buf_give(lua_State *L, cc_buf *b);
/* In a forked child: no frame of the parent's call chain will ever run
 * again, so nothing is held. */
void cb_buf_forget_frames(lua_State *L);

/* Messages end to end, owned by a userdata pushed on the stack: whatever
 * has not been taken over when the call raises is released by its __gc. */
typedef struct cb_batch {
    cc_buf all;
    size_t *lens;
    size_t n, cap;
    size_t next, off;   /* messages [next, n) still own their references */
} cb_batch;
cb_batch *cb_batch_new(lua_State *L);           /* pushes it */
/* Append a copy of one message; its references move into the batch (also
 * when this raises for lack of memory). */
void cb_batch_add(lua_State *L, cb_batch *b, const void *msg, size_t len, const char *fname);
/* Messages [0, upto) were taken over by someone else (a queue, a list). */
void cb_batch_keep(cb_batch *b, size_t upto);
/* Release what is still owned and free the memory now. */
void cb_batch_free(lua_State *L, cb_batch *b);
/* Decode message i (at byte offset off): pushes its values, their count. */
int cb_batch_decode(lua_State *L, cb_batch *b, size_t i, size_t off, const char *fname);
/* Push a sequence of the batch's messages decoded in order (one value
 * each: list items, queue messages), then free the batch. */
void cb_batch_totable(lua_State *L, cb_batch *b, const char *fname);

/* Per-library openers: each pushes its library table. */
int cb_open_process(lua_State *L);
int cb_open_thread(lua_State *L);
int cb_open_shared(lua_State *L);
int cb_open_pipe(lua_State *L);
int cb_open_lock(lua_State *L);
int cb_open_queue(lua_State *L);
int cb_open_primes(lua_State *L);
int cb_open_wait(lua_State *L);    /* pushes the concur.wait function */
/* Adds array and value to the shared table on top of the stack (array.c). */
void cb_open_array(lua_State *L);

/* For concur.wait: is the value at idx a process (process.c) or thread
 * (thread.c) handle? 0 if not; else 1 with *state one of the CB_PROBE_*
 * below and, for a process, *pid its child (not reaped while RUNNING, so
 * the pid cannot have been reused). */
enum { CB_PROBE_RUNNING, CB_PROBE_ENDED, CB_PROBE_FINALIZED, CB_PROBE_FOREIGN };
int cb_process_probe(lua_State *L, int idx, pid_t *pid, int *state);
int cb_thread_probe(lua_State *L, int idx, int *state);

#endif
