/*
 * list.h -- shared.list and shared.dict storage (list.c, dict.c).
 *
 * Items are messages (see cc.h). A container owns the references of the
 * messages it holds. Reading an item copies its bytes into a cc_buf and
 * retains its references for the reader (who hands them to the decoder);
 * removing an item moves them to the reader without touching the counts.
 * Every operation takes the container's robust mutex once; a holder that
 * dies mid-operation leaves the container as it was before or after that
 * operation (a mutation commits with a single store, or for a list's set and
 * middle insert/remove through a redo record that the next locker finishes;
 * see list.c). A kill can leak a block, never free one twice.
 *
 * Indices are 0-based here; the bindings translate Lua's 1-based indices.
 */
#ifndef CC_LIST_H
#define CC_LIST_H
#include "cc.h"

typedef struct cc_list cc_list;

int cc_list_new(cc_list **out);                     /* refs = 1 */
int64_t cc_list_len(cc_list *l);
int cc_list_append(cc_list *l, const void *msg, size_t len);
/* Append n messages laid end to end in buf, lens[i] each, under one lock. */
int cc_list_extend(cc_list *l, const void *buf, const size_t *lens, size_t n);
int cc_list_get(cc_list *l, int64_t i, cc_buf *out);        /* -ERANGE */
int cc_list_set(cc_list *l, int64_t i, const void *msg, size_t len); /* i == len appends */
int cc_list_insert(cc_list *l, int64_t i, const void *msg, size_t len);
int cc_list_remove(cc_list *l, int64_t i, cc_buf *out);     /* pop = remove(len-1) */
int cc_list_pop(cc_list *l, cc_buf *out);                   /* -ERANGE when empty */
int cc_list_clear(cc_list *l);
/* Snapshot every item under one lock: out holds them end to end, *lens
 * (malloc'd, caller frees) their sizes, *n their count. */
int cc_list_snapshot(cc_list *l, cc_buf *out, size_t **lens, size_t *n);

typedef struct cc_dict cc_dict;
/* Keys are messages too (the encoded key); equality is byte equality of the
 * encoded key, which the codec makes canonical for strings/numbers/booleans. */
int cc_dict_new(cc_dict **out);
int64_t cc_dict_len(cc_dict *d);
int cc_dict_get(cc_dict *d, const void *key, size_t klen, cc_buf *out); /* -ENOENT */
int cc_dict_set(cc_dict *d, const void *key, size_t klen, const void *val, size_t vlen);
int cc_dict_delete(cc_dict *d, const void *key, size_t klen, cc_buf *out); /* -ENOENT */
int cc_dict_clear(cc_dict *d);
/* Snapshot: key0 val0 key1 val1 ... end to end in out, lens[2n]. */
int cc_dict_snapshot(cc_dict *d, cc_buf *out, size_t **lens, size_t *n);
#endif
