/*
 * primes.c -- the tutorial's CPU-bound work, in C: is_prime by trial
 * division over 6k +- 1 (the same algorithm the Python tutorial uses, so
 * the comparison is of runtimes, not of algorithms), and a range walker
 * that can be interrupted.
 */
#include "primes.h"
#include "cc.h"

#include <errno.h>

int cc_is_prime(int64_t n) {
    if (n <= 1) return 0;
    if (n <= 3) return 1;
    if (n % 2 == 0 || n % 3 == 0) return 0;
    for (int64_t i = 5; i * i <= n; i += 6)
        if (n % i == 0 || n % (i + 2) == 0) return 0;
    return 1;
}

int64_t cc_primes(int64_t from, int64_t to, int (*out)(int64_t p, void *ud), void *ud) {
    int64_t count = 0;
    for (int64_t n = from; n < to; n++) {
        if (((n - from) & 0xffff) == 0xffff && cc_interrupted()) return -EINTR;
        if (!cc_is_prime(n)) continue;
        count++;
        if (out) {
            int r = out(n, ud);
            if (r) return r;
        }
    }
    return count;
}
