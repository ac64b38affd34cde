/*
 * asan_fork.c -- makes fork() safe for ASan's own allocator. Linked into the
 * ASan host (make test's ASan pass, make sanitize) and into
 * build/asan/libasan-fork.so, the runtime make sanitize preloads into the
 * stock interpreters for the ASan modules.
 *
 * Why: concur forks processes from a program that may be running threads,
 * and the child then allocates. glibc's malloc takes its locks around fork,
 * so that is safe in a normal build. ASan's allocator replaces malloc, and
 * before LLVM 18 (llvm-project PR 75290, "[asan] Install pthread_atfork")
 * it has no fork handler: if another thread holds an allocator or
 * stack-depot lock at the moment of fork, the child's first malloc waits
 * forever. With clang 14 this hung spec/queue_spec.lua's mixed
 * threads-and-processes test in a child stuck in
 * SizeClassAllocator64::GetFromAllocator.
 *
 * The fix is what LLVM 18 does: take those locks (thread registry,
 * allocator, stack depot) before fork and drop them after, in parent and
 * child. The functions are internal to the static ASan runtime (hidden:
 * only a static link can reach them, which is why the modules are run with
 * libasan-fork.so, the static runtime linked into a shared object with this
 * file, rather than with clang's shared runtime, which does not export them).
 * Declared by their C++ names because the runtime has no C interface for
 * them. Compiled to nothing from clang 18 on, whose runtime installs its
 * own handler (the locks are not recursive: taking them twice would hang).
 */
#if defined(__clang__) && __clang_major__ < 18
#include <pthread.h>

/* __lsan::{Lock,Unlock}ThreadRegistry(), __lsan::{Lock,Unlock}Allocator(),
 * __sanitizer::StackDepot{Lock,Unlock}All() */
void _ZN6__lsan18LockThreadRegistryEv(void);
void _ZN6__lsan20UnlockThreadRegistryEv(void);
void _ZN6__lsan13LockAllocatorEv(void);
void _ZN6__lsan15UnlockAllocatorEv(void);
void _ZN11__sanitizer17StackDepotLockAllEv(void);
void _ZN11__sanitizer19StackDepotUnlockAllEv(void);

/* the order LLVM 18 uses: threads, allocator, stack depot; reversed after */
static void before(void) {
    _ZN6__lsan18LockThreadRegistryEv();
    _ZN6__lsan13LockAllocatorEv();
    _ZN11__sanitizer17StackDepotLockAllEv();
}

static void after(void) {
    _ZN11__sanitizer19StackDepotUnlockAllEv();
    _ZN6__lsan15UnlockAllocatorEv();
    _ZN6__lsan20UnlockThreadRegistryEv();
}

__attribute__((constructor)) static void install(void) {
    pthread_atfork(before, after, after);
}
#endif

#ifdef CONCUR_ASAN_PRELOAD
/* In libasan-fork.so, preloaded into a stock interpreter: once loaded, take
 * LD_PRELOAD out of the environment, so the programs a spec starts (sh, ps
 * through io.popen or process.run) run as they are. An uninstrumented ps
 * with the ASan runtime preloaded hangs in textdomain(); forked children
 * keep the runtime, being copies. */
#include <stdlib.h>

__attribute__((constructor)) static void unexport(void) { unsetenv("LD_PRELOAD"); }
#endif
