/*
 * unwinder.c -- a forked child must be able to raise errors under LuaJIT.
 *
 * LuaJIT raises every Lua error by unwinding (_Unwind_RaiseException), and
 * registers the machine code it compiles with libgcc (__register_frame).
 * Once anything is registered, libgcc before GCC 13 looks unwind data up
 * under one global mutex (object_mutex in unwind-dw2-fde.c); so do
 * registering and unregistering. A thread that holds it at the moment
 * another thread forks leaves it held in the child by a thread that does
 * not exist there, and the child's first Lua error waits for ever. Seen
 * with Debian 12's libgcc: 4 children in 200 hung while one thread raised
 * errors in a loop (spec/process_spec.lua).
 *
 * The mutex is static in libgcc_s, out of reach of pthread_atfork; so
 * the parent finds it, and the child, still alone after fork, sets it back
 * to unlocked if it is held, as glibc does with its own locks and CPython
 * with its. What it guards are linked lists updated by single pointer
 * stores and a sorted copy built aside before it is published, so a child
 * forked mid-update sees the old list or the new one.
 *
 * Finding it: __register_frame_info_bases (exported) takes it with
 * "lea object_mutex(%rip), %rdi; call pthread_mutex_lock" a few
 * instructions in. The address the lea names is used only if it lies in
 * libgcc_s's writable data. The parent looks before each fork, since
 * libgcc_s can be loaded at any time (glibc loads it for pthread_cancel, a
 * C++ module links it), and decodes once per load. Elsewhere than x86-64,
 * or if the code has another shape, nothing is found and nothing done.
 */
#include "proc.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GLIBC__)
/* the address a "lea disp32(%rip), %rdi" followed by a call names, in the
 * first bytes of fn; 0 if there is none */
static uintptr_t lea_before_call(const unsigned char *fn, size_t len) {
    for (size_t i = 0; i + 12 <= len; i++) {
        if (fn[i] == 0x48 && fn[i + 1] == 0x8d && fn[i + 2] == 0x3d && fn[i + 7] == 0xe8) {
            int32_t disp;
            memcpy(&disp, fn + i + 3, 4);
            return (uintptr_t)(fn + i + 7) + (intptr_t)disp;
        }
    }
    return 0;
}

/* libgcc_s's writable data [lo, hi), from its program headers */
static int writable_data(struct dl_phdr_info *info, size_t size, void *arg) {
    uintptr_t *span = arg; /* in: span[0] an address of the object; out: lo, hi */
    int mine = 0;
    uintptr_t lo = 0, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t a = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type != PT_LOAD) continue;
        if (span[0] >= a && span[0] < a + ph->p_memsz) mine = 1;
        if (ph->p_flags & PF_W) lo = a, hi = a + ph->p_memsz;
    }
    if (!mine) return 0;
    span[0] = lo;
    span[1] = hi;
    return 1;
}

void *cc_unwinder_locate(void) {
    static void *decoded_fn;  /* __register_frame_info_bases when last decoded */
    static uintptr_t decoded; /* what it gave */
    void *h = dlopen("libgcc_s.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (!h) return NULL;
    void *fn = dlsym(h, "__register_frame_info_bases");
    uintptr_t m = 0;
    if (fn && fn == decoded_fn) {
        m = decoded;
    } else if (fn) {
        uintptr_t at = lea_before_call(fn, 96), span[2] = {(uintptr_t)fn, 0};
        if (at && at % 8 == 0 && dl_iterate_phdr(writable_data, span) &&
            at >= span[0] && at + sizeof(pthread_mutex_t) <= span[1])
            m = at;
        decoded_fn = fn;
        decoded = m;
    }
    dlclose(h);
    return (void *)m;
}
#else
void *cc_unwinder_locate(void) { return NULL; }
#endif

void cc_unwinder_release(void *mutex) {
    pthread_mutex_t *m = mutex;
    static const pthread_mutex_t unlocked = PTHREAD_MUTEX_INITIALIZER;
    if (m && m->__data.__lock != 0) memcpy(m, &unlocked, sizeof unlocked);
}
