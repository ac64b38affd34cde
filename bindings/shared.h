/*
 * shared.h -- what the bindings of the shared library's containers share:
 * list.c (shared.list), dict.c (shared.dict) and shared.c (the library
 * table and the tostring both use). Only those files include it.
 */
#ifndef CB_SHARED_H
#define CB_SHARED_H

#include "cb.h"
#include "../runtime/list.h"

/* The two per-state scratch buffers (cb_buf_take's which): a dict call
 * holds a key and a value at once; a list call the item going in or the
 * item coming out. */
enum { BUF_KEY = 0, BUF_VALUE = 1, BUF_PUT = 0, BUF_GET = 1 };

/* A read (get, pop, remove, a snapshot) allocates only process memory for
 * the copy it hands out, so its -ENOMEM is malloc failing, not the arena. */
static inline int cb_read_failed(lua_State *L, int r, const char *fname) {
    return r == -ENOMEM ? cb_oom(L, fname) : cb_fail(L, r, fname);
}

/* Register the type and set tbl.list / tbl.dict in the table on top. */
void cb_open_list(lua_State *L);
void cb_open_dict(lua_State *L);

/* l:totable() / d:totable(): a snapshot under one lock (also the
 * printer's view of a nested container). */
int cb_list_totable(lua_State *L);
int cb_dict_totable(lua_State *L);

/* tostring(l) / tostring(d): label, then a bounded rendering of the
 * container's snapshot (shared.c). */
int cb_shared_tostring(lua_State *L, const char *label, lua_CFunction snapshot);

#endif
