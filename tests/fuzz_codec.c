/*
 * fuzz_codec.c -- libFuzzer harness for the codec's decoder (make fuzz).
 *
 * Every input is handed to cb_decode_protected in one long-lived state: the
 * decoder must return values or an error for any bytes, never crash, hang
 * or leak. The seed corpus (tests/fuzz_corpus) holds real messages made by
 * concur.encode: tables with cycles, functions with upvalues, floats, ...
 */
#include "../bindings/cb.h"
#include "../include/concur.h"

#include <stddef.h>
#include <stdint.h>

static lua_State *L;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!L) {
        L = luaL_newstate();
        luaL_openlibs(L);
        concur_openlibs(L);
    }
    /* messages from outside cannot name shared objects: the header's
     * pointer table is only meaningful inside one process tree */
    if (size >= sizeof(cc_msghdr) && cc_msg_nrefs(data)) return 0;
    cb_decode_protected(L, data, size);
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
