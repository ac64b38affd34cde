/* primes.h -- the tutorial's CPU-bound kernel: trial division by 6k +- 1
 * below 2^32, deterministic Miller-Rabin above (exact over all of int64). */
#ifndef CC_PRIMES_H
#define CC_PRIMES_H
#include <stdint.h>
int cc_is_prime(int64_t n);
/* Primes in [from, to): their count, or -EINTR if cc_interrupted() fired
 * (checked every 1024 numbers). With out non-NULL, also each prime is
 * passed to out(prime, ud); a non-zero return stops with that value. */
int64_t cc_primes(int64_t from, int64_t to, int (*out)(int64_t p, void *ud), void *ud);
#endif
