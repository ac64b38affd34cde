/*
 * codec.h -- the wire format of concur's messages, shared by the encoder
 * (codec_encode.c, in the manner of Lua's ldump.c), the decoder
 * (codec_decode.c, lundump.c) and the loaded-module name index
 * (codec_modules.c). Only those three files include it; the rest of
 * bindings/ uses cb_encode/cb_decode from cb.h.
 *
 * A message is the cc.h header, then the payload:
 *
 *     header  := u32 nrefs, u32 format, cc_obj *refs[nrefs]
 *     payload := varint count, value*
 *     value   := NIL | FALSE | TRUE | INT zigzag-varint | FLOAT 8 bytes
 *              | STR varint len, bytes
 *              | TABLE varint id, varint narr, varint nhash, narr values,
 *                nhash (key value) pairs, value metatable-or-NIL
 *              | REF varint id                 (a table or function seen before)
 *              | FUNC varint id, u32 len, u64 checksum, bytecode, varint nups, values
 *              | CFUNC str module, str field   (a C function of a loaded module)
 *              | SHARED varint index           (into the header's object table)
 *              | GLOBALS                       (the receiving state's _G)
 *              | MODULE str name               (package.loaded[name] on arrival)
 *
 * Multi-byte fixed fields are in the host's byte order: a message never
 * leaves the machine that made it.
 *
 * The format number is written by every encode and checked where bytes come
 * from outside the process tree (concur.decode): a string kept from another
 * build is refused by name rather than misread. Messages that stay inside
 * one run need no check (a list stores small ones without their header).
 * Bump CB_FORMAT whenever the meaning of any byte above changes.
 */
#ifndef CB_CODEC_H
#define CB_CODEC_H

#include "cb.h"

#include <stdint.h>

/* The version of the layout above; 0 is every message made before the
 * header carried one. */
#define CB_FORMAT 1

enum cb_tag {
    T_NIL, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_TABLE, T_REF, T_FUNC,
    T_CFUNC, T_SHARED, T_GLOBALS, T_MODULE
};

/* Bounds, the same on both sides. */
#define CB_MAX_DEPTH 200        /* nesting of tables, functions and upvalues */
#define CB_MAX_REFS 4096        /* shared objects named by one message */
#define CB_MAX_UPVALUES 255     /* Lua's own limit (MAXUPVAL in lfunc.h) */
#define CB_VARINT_MAX 10        /* bytes in a 64-bit varint */
#define CB_FUNC_LEN_BYTES 4     /* FUNC's bytecode length: u32 */
#define CB_CHECKSUM_BYTES 8     /* FUNC's checksum: u64 */
#define CB_FLOAT_BYTES 8        /* FLOAT: a double */
#define CB_STR_(x) #x
#define CB_STR(x) CB_STR_(x)     /* a bound in a message: CB_STR(CB_MAX_REFS) */

/* Checksum of a function's bytecode (not keyed: it guards against
 * corruption, not forgery). */
static inline uint64_t cb_code_checksum(const void *p, size_t n) {
    return cc_fnv1a(p, n);
}

/* ---- the loaded-module name index (codec_modules.c) ----
 * A table in the Lua stack slot `slot` (nil until first needed) mapping each
 * loaded module's table to its name and each of its C functions to
 * {module, field}. Kept per state in the registry; stale once
 * package.loaded.concur is not the table it was built with. */
/* Make sure slot holds a fresh index; returns slot. */
int cb_modindex(lua_State *L, int slot);
/* Build it again into slot (a module was loaded since): indices above slot
 * stay valid. */
void cb_modindex_rebuild(lua_State *L, int slot);
/* Push package.loaded[name], running require when it is not loaded here. */
void cb_push_module(lua_State *L, const char *name, size_t n, const char *fname);

#endif
