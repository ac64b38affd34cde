/*
 * obj.c -- reference counts of shared objects, message reference tables,
 * and the process-local byte buffer.
 *
 * A shared object's count lives in the arena and counts holders in every
 * process: Lua handles, messages in queues, lists and pipes. When it drops
 * to zero the object is destroyed by its type's function, chosen by a
 * static switch so any process can destroy any type.
 */
#include "cc.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include <string.h>

void cc_obj_init(cc_obj *o, enum cc_type t) {
    atomic_store(&o->refs, 1);
    o->type = t;
}

void cc_retain(cc_obj *o) { atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed); }

static void destroy(cc_obj *o) {
    void (*fn)(cc_obj *) = NULL;
    switch ((enum cc_type)o->type) {
    case CC_T_LIST: fn = cc_list_destroy; break;
    case CC_T_DICT: fn = cc_dict_destroy; break;
    case CC_T_QUEUE: fn = cc_queue_destroy; break;
    case CC_T_LOCK:
    case CC_T_RLOCK: fn = cc_lock_destroy; break;
    case CC_T_SEM: fn = cc_sem_destroy; break;
    case CC_T_EVENT: fn = cc_event_destroy; break;
    case CC_T_COND: fn = cc_condvar_destroy; break;
    case CC_T_BARRIER: fn = cc_barrier_destroy; break;
    case CC_T_PIPE: fn = cc_pipe_destroy; break;
    case CC_T_ARRAY:
    case CC_T_VALUE: fn = cc_array_destroy; break;
    case CC_T_PROGRESS: fn = cc_progress_destroy; break;
    default: break;
    }
    if (fn) fn(o);
    else abort(); /* an object of no known type: a broken invariant */
}

void cc_release(cc_obj *o) {
    if (atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1) destroy(o);
}

int cc_obj_valid(const cc_obj *o) {
    return o && ((uintptr_t)o & 7) == 0 && cc_in_arena(o) && o->type > CC_T_NONE &&
           o->type < CC_T_MAX && atomic_load(&((cc_obj *)o)->refs) > 0;
}

/* ---- messages ---- */

size_t cc_msg_payload_offset(uint32_t nrefs) {
    return sizeof(cc_msghdr) + (size_t)nrefs * sizeof(cc_obj *);
}

/* The number of references in a well-formed message, else 0. */
static uint32_t msg_nrefs(const void *msg, size_t len) {
    if (len < sizeof(cc_msghdr)) return 0;
    uint32_t n = cc_msg_nrefs(msg);
    return cc_msg_payload_offset(n) > len ? 0 : n;
}

void cc_msg_retain(const void *msg, size_t len) {
    uint32_t n = msg_nrefs(msg, len);
    for (uint32_t i = 0; i < n; i++) cc_retain(cc_msg_ref(msg, i));
}

void cc_msg_release(const void *msg, size_t len) {
    uint32_t n = msg_nrefs(msg, len);
    for (uint32_t i = 0; i < n; i++) cc_release(cc_msg_ref(msg, i));
}

/* ---- process-local buffers ---- */

int cc_buf_reserve(cc_buf *b, size_t need) {
    if (need <= b->cap) return 0;
    if (need > CC_BUF_MAX) return -ENOMEM;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2; /* cannot wrap: need <= 2^40 */
    char *d = realloc(b->data, cap);
    if (!d) return -ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

void cc_buf_free(cc_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
