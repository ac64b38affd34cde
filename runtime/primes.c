/*
 * primes.c -- the tutorial's CPU-bound work, in C: is_prime by trial
 * division over 6k +- 1 (the same algorithm the Python tutorial uses, so
 * the comparison is of runtimes, not of algorithms), and a range walker
 * that can be interrupted.
 *
 * Trial division is kept below 2^32, where i*i cannot overflow and the
 * benchmark's ranges live. Above it, trial division would take minutes per
 * prime (and i*i overflows near 2^63), so there we use Miller-Rabin with
 * the first twelve primes as bases, which is deterministic for every n
 * below 3.3e24, so for all of int64; products are taken in 128 bits.
 */
#include "primes.h"
#include "cc.h"

#include <errno.h>

#define TRIAL_MAX ((int64_t)1 << 32)

static const uint64_t bases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};

static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m) {
    return (uint64_t)((unsigned __int128)a * b % m);
}

static uint64_t powmod(uint64_t a, uint64_t e, uint64_t m) {
    uint64_t r = 1;
    a %= m;
    for (; e; e >>= 1) {
        if (e & 1) r = mulmod(r, a, m);
        a = mulmod(a, a, m);
    }
    return r;
}

/* Is a a witness that the odd n = d * 2^s + 1 is composite? */
static int witness(uint64_t a, uint64_t d, int s, uint64_t n) {
    uint64_t x = powmod(a, d, n);
    if (x == 1 || x == n - 1) return 0;
    for (int i = 1; i < s; i++) {
        x = mulmod(x, x, n);
        if (x == n - 1) return 0;
    }
    return 1;
}

/* n > 37 */
static int miller_rabin(uint64_t n) {
    for (size_t i = 0; i < sizeof bases / sizeof *bases; i++)
        if (n % bases[i] == 0) return 0;
    uint64_t d = n - 1;
    int s = __builtin_ctzll(d);
    d >>= s;
    for (size_t i = 0; i < sizeof bases / sizeof *bases; i++)
        if (witness(bases[i], d, s, n)) return 0;
    return 1;
}

int cc_is_prime(int64_t n) {
    if (n <= 1) return 0;
    if (n <= 3) return 1;
    if (n % 2 == 0 || n % 3 == 0) return 0;
    if (n >= TRIAL_MAX) return miller_rabin((uint64_t)n);
    for (int64_t i = 5; i * i <= n; i += 6)
        if (n % i == 0 || n % (i + 2) == 0) return 0;
    return 1;
}

int64_t cc_primes(int64_t from, int64_t to, int (*out)(int64_t p, void *ud), void *ud) {
    int64_t count = 0;
    /* n < to <= INT64_MAX, so n++ cannot overflow; k counts in unsigned
     * arithmetic, as a range can be wider than INT64_MAX */
    uint64_t k = 0;
    for (int64_t n = from; n < to; n++, k++) {
        if ((k & 1023) == 1023 && cc_interrupted()) return -EINTR;
        if (!cc_is_prime(n)) continue;
        count++;
        if (out) {
            int r = out(n, ud);
            if (r) return r;
        }
    }
    return count;
}
