/*
 * fastmsg.h -- one small scalar (nil, boolean, number, short string) as a
 * message, written and read without the codec's setup: for queue and pipe
 * put/get/send/recv, where the codec's per-call work (reserved stack slots,
 * a scratch buffer, the id table on the way back) cost more than the value.
 *
 * The bytes are exactly what cb_encode (codec.c) writes for the same value
 * -- the message header with no shared objects, the value count 1, the
 * value -- so either side may take the slow path: fm_decode reads only
 * messages of that shape and answers -1 for anything else, which the caller
 * hands to cb_decode (which also reports a corrupt message). Only bindings
 * that carry messages between their own put and get use this.
 */
#ifndef CB_FASTMSG_H
#define CB_FASTMSG_H

#include "cb.h"
#include "codec.h"

#include <stddef.h>
#include <string.h>

#define FM_SMALL 64 /* the largest message fm_encode writes */

/* The codec's own tags for the scalars (codec.h) */
enum { FM_NIL = T_NIL, FM_FALSE = T_FALSE, FM_TRUE = T_TRUE, FM_INT = T_INT, FM_FLOAT = T_FLOAT, FM_STR = T_STR };

static inline size_t fm_varint(unsigned char *p, uint64_t v) {
    size_t n = 0;
    do {
        unsigned char c = v & 0x7f;
        v >>= 7;
        p[n++] = c | (v ? 0x80 : 0);
    } while (v);
    return n;
}

/* Encode the value at idx into out: its length, or 0 when it is not a
 * scalar or would not fit in FM_SMALL bytes (then use cb_encode). */
static inline size_t fm_encode(lua_State *L, int idx, unsigned char out[FM_SMALL]) {
    const size_t h = sizeof(cc_msghdr);
    memset(out, 0, h); /* nrefs 0 */
    uint32_t format = CB_FORMAT;
    memcpy(out + offsetof(cc_msghdr, format), &format, sizeof format);
    out[h] = 1;        /* one value */
    unsigned char *p = out + h + 1;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: *p++ = FM_NIL; break;
    case LUA_TBOOLEAN: *p++ = lua_toboolean(L, idx) ? FM_TRUE : FM_FALSE; break;
    case LUA_TNUMBER:
        if (cb_isinteger(L, idx)) {
            int64_t v = (int64_t)lua_tointeger(L, idx);
            *p++ = FM_INT;
            p += fm_varint(p, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
        } else {
            double d = (double)lua_tonumber(L, idx);
            *p++ = FM_FLOAT;
            memcpy(p, &d, 8);
            p += 8;
        }
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        if (n > FM_SMALL - (h + 1 + 1 + 2)) return 0; /* two varint bytes hold it */
        *p++ = FM_STR;
        p += fm_varint(p, n);
        memcpy(p, s, n);
        p += n;
        break;
    }
    default: return 0;
    }
    return (size_t)(p - out);
}

/* The message of one string, n bytes at s, written into out (cap bytes):
 * its length, or 0 when it does not fit (then use cb_encode). The same
 * bytes as fm_encode and cb_encode write for that string. */
static inline size_t fm_encode_bytes(const char *s, size_t n, unsigned char *out, size_t cap) {
    const size_t h = sizeof(cc_msghdr);
    if (cap < h + 3 + 10 || n > cap - (h + 3 + 10)) return 0; /* ten varint bytes hold any length */
    memset(out, 0, h);
    uint32_t format = CB_FORMAT;
    memcpy(out + offsetof(cc_msghdr, format), &format, sizeof format);
    unsigned char *p = out + h;
    *p++ = 1;
    *p++ = FM_STR;
    p += fm_varint(p, n);
    memcpy(p, s, n);
    return (size_t)(p + n - out);
}

/* Reads the varint at *p (before end) into *v, moving *p past it: 0 when
 * the bytes end first or it is longer than 64 bits. */
static inline int fm_get_varint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0;; shift += 7) {
        if (*p == end || shift >= 64) return 0;
        unsigned c = *(*p)++;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return 1;
    }
}

/* The bytes of a message that is one string of the shape above, without
 * making a Lua string: 1 with *s and *n set, or 0 when it is anything else. */
static inline int fm_peek_str(const void *msg, size_t len, const char **s, size_t *n) {
    const size_t h = sizeof(cc_msghdr);
    const unsigned char *p = (const unsigned char *)msg + h + 2, *end = (const unsigned char *)msg + len;
    if (len < h + 3 || cc_msg_nrefs(msg) != 0 || p[-2] != 1 || p[-1] != FM_STR) return 0;
    uint64_t v;
    if (!fm_get_varint(&p, end, &v) || (uint64_t)(end - p) != v) return 0;
    *s = (const char *)p;
    *n = (size_t)v;
    return 1;
}

/* Push the value of a message of the shape above: 1, or -1 (nothing
 * pushed) when the message is anything else. */
static inline int fm_decode(lua_State *L, const void *msg, size_t len) {
    const size_t h = sizeof(cc_msghdr);
    const unsigned char *p = (const unsigned char *)msg + h + 2, *end = (const unsigned char *)msg + len;
    if (len < h + 2 || cc_msg_nrefs(msg) != 0 || p[-2] != 1) return -1;
    int tag = p[-1];
    if (tag <= FM_TRUE) {
        if (p != end) return -1;
        if (tag == FM_NIL) lua_pushnil(L);
        else lua_pushboolean(L, tag == FM_TRUE);
        return 1;
    }
    if (tag == FM_FLOAT) {
        if (end - p != 8) return -1;
        double d;
        memcpy(&d, p, 8);
        lua_pushnumber(L, (lua_Number)d);
        return 1;
    }
    if (tag != FM_INT && tag != FM_STR) return -1;
    uint64_t v;
    if (!fm_get_varint(&p, end, &v)) return -1;
    if (tag == FM_INT) {
        if (p != end) return -1;
        cb_pushinteger(L, (int64_t)(v >> 1) ^ -(int64_t)(v & 1));
        return 1;
    }
    if ((uint64_t)(end - p) != v) return -1;
    lua_pushlstring(L, (const char *)p, (size_t)v);
    return 1;
}

#endif
