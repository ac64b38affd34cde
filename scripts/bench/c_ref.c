/*
 * c_ref.c -- the C side of make bench: `c_ref WORKLOAD SIZE` prints one
 * number in the unit concur_bench.lua uses. Plain C written the obvious way
 * (pthreads, fork, a process-shared mutex and condition in shared memory, a
 * socketpair): the yardstick for "within a small factor of raw C".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 10000

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int is_prime(int64_t n) {
    if (n <= 1) return 0;
    if (n <= 3) return 1;
    if (n % 2 == 0 || n % 3 == 0) return 0;
    for (int64_t i = 5; i * i <= n; i += 6)
        if (n % i == 0 || n % (i + 2) == 0) return 0;
    return 1;
}

typedef struct { int64_t first, step, limit, result; } job;

static void *count_job(void *arg) {
    job *j = arg;
    int64_t c = 0;
    for (int64_t lo = j->first; lo < j->limit; lo += j->step) {
        int64_t hi = lo + CHUNK < j->limit ? lo + CHUNK : j->limit;
        for (int64_t n = lo; n < hi; n++) c += is_prime(n);
    }
    j->result = c;
    return NULL;
}

static double primes_threads(int w, int64_t n) {
    pthread_t t[8];
    job j[8];
    double t0 = now();
    for (int k = 0; k < w; k++) {
        j[k] = (job){k * CHUNK, w * CHUNK, n, 0};
        pthread_create(&t[k], NULL, count_job, &j[k]);
    }
    for (int k = 0; k < w; k++) pthread_join(t[k], NULL);
    return now() - t0;
}

static void *shm(size_t n) {
    return mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
}

static void pshared_mutex(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(m, &a);
}

static void pshared_cond(pthread_cond_t *c) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_cond_init(c, &a);
}

/* 3 processes append n ints each to one shared array under a shared mutex */
static double list_append_3p(int64_t n) {
    struct { pthread_mutex_t m; int64_t len; int64_t items[]; } *l = shm(64 + sizeof(int64_t) * 3 * n);
    pshared_mutex(&l->m);
    double t0 = now();
    for (int k = 0; k < 3; k++)
        if (fork() == 0) {
            for (int64_t i = 0; i < n; i++) {
                pthread_mutex_lock(&l->m);
                l->items[l->len++] = i;
                pthread_mutex_unlock(&l->m);
            }
            _exit(0);
        }
    for (int k = 0; k < 3; k++) wait(NULL);
    return 3 * n / (now() - t0);
}

/* a bounded ring of ints with a mutex and two conditions (shared if pshared) */
typedef struct {
    pthread_mutex_t m;
    pthread_cond_t not_empty, not_full;
    int64_t head, tail, cap;
    int64_t items[];
} ring;

static ring *ring_new(int64_t cap, int pshared) {
    ring *r = pshared ? shm(sizeof(ring) + sizeof(int64_t) * cap) : calloc(1, sizeof(ring) + sizeof(int64_t) * cap);
    if (pshared) {
        pshared_mutex(&r->m);
        pshared_cond(&r->not_empty);
        pshared_cond(&r->not_full);
    } else {
        pthread_mutex_init(&r->m, NULL);
        pthread_cond_init(&r->not_empty, NULL);
        pthread_cond_init(&r->not_full, NULL);
    }
    r->cap = cap;
    return r;
}

static void ring_put(ring *r, int64_t v) {
    pthread_mutex_lock(&r->m);
    while (r->tail - r->head == r->cap) pthread_cond_wait(&r->not_full, &r->m);
    r->items[r->tail++ % r->cap] = v;
    pthread_cond_signal(&r->not_empty);
    pthread_mutex_unlock(&r->m);
}

static int64_t ring_get(ring *r) {
    pthread_mutex_lock(&r->m);
    while (r->tail == r->head) pthread_cond_wait(&r->not_empty, &r->m);
    int64_t v = r->items[r->head++ % r->cap];
    pthread_cond_signal(&r->not_full);
    pthread_mutex_unlock(&r->m);
    return v;
}

typedef struct { ring *r; int64_t n; } prod;
static void *producer(void *arg) {
    prod *p = arg;
    for (int64_t i = 0; i < p->n; i++) ring_put(p->r, i);
    return NULL;
}

static double queue_rate(int procs, int producers, int64_t n) {
    ring *r = ring_new(100000, procs);
    int64_t per = n / producers;
    pthread_t t;
    prod p = {r, per};
    double t0 = now();
    for (int k = 0; k < producers; k++) {
        if (procs) {
            if (fork() == 0) {
                producer(&p);
                _exit(0);
            }
        } else {
            pthread_create(&t, NULL, producer, &p);
        }
    }
    for (int64_t i = 0; i < per * producers; i++) ring_get(r);
    if (procs)
        for (int k = 0; k < producers; k++) wait(NULL);
    else
        pthread_join(t, NULL);
    return per * producers / (now() - t0);
}

/* framed messages over a socketpair: u64 length + 8-byte payload */
static double pipe_oneway(int64_t n) {
    int fd[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, fd);
    double t0 = now();
    if (fork() == 0) {
        for (int64_t i = 0; i < n; i++) {
            int64_t frame[2] = {8, i};
            if (write(fd[1], frame, 16) != 16) _exit(1);
        }
        _exit(0);
    }
    static char buf[1 << 16];
    int64_t want = 16 * n, got = 0;
    while (got < want) {
        ssize_t r = read(fd[0], buf, sizeof buf);
        if (r <= 0) break;
        got += r;
    }
    wait(NULL);
    return n / (now() - t0);
}

static double pipe_rtt(int64_t n) {
    int fd[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, fd);
    if (fork() == 0) {
        char b[16];
        close(fd[0]); /* else our own copy keeps the parent's end open: no EOF */
        while (read(fd[1], b, 16) == 16)
            if (write(fd[1], b, 16) != 16) break;
        _exit(0);
    }
    char b[16] = {0};
    close(fd[1]);
    double t0 = now();
    for (int64_t i = 0; i < n; i++) {
        if (write(fd[0], b, 16) != 16 || read(fd[0], b, 16) != 16) break;
    }
    double t = now() - t0;
    close(fd[0]);
    wait(NULL);
    return t / n * 1e6;
}

static pthread_mutex_t lk = PTHREAD_MUTEX_INITIALIZER;
static void *spin(void *arg) {
    int64_t n = *(int64_t *)arg;
    for (int64_t i = 0; i < n; i++) {
        pthread_mutex_lock(&lk);
        pthread_mutex_unlock(&lk);
    }
    return NULL;
}

static double lock_rate(int threads, int64_t n) {
    pthread_t t[2];
    double t0 = now();
    if (threads == 1) spin(&n);
    else {
        for (int k = 0; k < threads; k++) pthread_create(&t[k], NULL, spin, &n);
        for (int k = 0; k < threads; k++) pthread_join(t[k], NULL);
    }
    return threads * n / (now() - t0);
}

static void *noop(void *arg) { return arg; }

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double spawn_latency(int procs, int64_t n) {
    double *ts = malloc(sizeof(double) * n);
    for (int64_t i = 0; i < n; i++) {
        double t0 = now();
        if (procs) {
            if (fork() == 0) _exit(0);
            wait(NULL);
        } else {
            pthread_t t;
            pthread_create(&t, NULL, noop, NULL);
            pthread_join(t, NULL);
        }
        ts[i] = now() - t0;
    }
    qsort(ts, n, sizeof *ts, cmp);
    return ts[(n - 1) / 2] * 1e6;
}

static long rss_kib(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(path, "r");
    long v = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Pss: %ld", &v) == 1) break;
    fclose(f);
    return v;
}

static int parked_fd[2];
static void *park(void *arg) {
    char c;
    if (read(parked_fd[0], &c, 1) < 0) return arg;
    return arg;
}

static double rss_per(int procs, int64_t n) {
    if (pipe(parked_fd)) return 0;
    pid_t *pids = malloc(sizeof(pid_t) * n);
    pthread_t *ts = malloc(sizeof(pthread_t) * n);
    long before = rss_kib(getpid());
    for (int64_t i = 0; i < n; i++) {
        if (procs) {
            if ((pids[i] = fork()) == 0) {
                close(parked_fd[1]); /* else our copy keeps the pipe open: no EOF */
                park(NULL);
                _exit(0);
            }
        } else {
            pthread_create(&ts[i], NULL, park, NULL);
        }
    }
    usleep(200000);
    double per = 0;
    if (procs) {
        long sum = 0;
        for (int64_t i = 0; i < n; i++) sum += rss_kib(pids[i]);
        per = (double)sum / n;
    } else {
        per = (double)(rss_kib(getpid()) - before) / n;
    }
    close(parked_fd[1]);
    for (int64_t i = 0; i < n; i++) {
        if (procs) waitpid(pids[i], NULL, 0);
        else pthread_join(ts[i], NULL);
    }
    return per;
}

/* uncontended atomic add on one int64 in shared memory: the floor under a:add */
static double array_add(int64_t n) {
    int64_t *a = shm(100 * sizeof *a);
    double t0 = now();
    for (int64_t i = 0; i < n; i++) __atomic_fetch_add(&a[6], 1, __ATOMIC_SEQ_CST);
    double dt = now() - t0;
    if (a[6] != n) abort();
    return n / dt;
}

static void dadd(double *p, double d) { /* a CAS loop on the bits, as concur's f64 add */
    uint64_t seen = __atomic_load_n((uint64_t *)p, __ATOMIC_RELAXED), want;
    do {
        double v;
        memcpy(&v, &seen, sizeof v);
        v += d;
        memcpy(&want, &v, sizeof want);
    } while (!__atomic_compare_exchange_n((uint64_t *)p, &seen, want, 0, __ATOMIC_SEQ_CST,
                                          __ATOMIC_RELAXED));
}

/* n samples into 100 double bins from 4 processes, atomic adds */
static double array_hist4p(int64_t n) {
    double *h = shm(100 * sizeof *h);
    int64_t per = n / 4;
    double t0 = now();
    for (int k = 1; k <= 4; k++)
        if (fork() == 0) {
            int64_t x = k;
            for (int64_t i = 0; i < per; i++) {
                x = (x * 1103515245 + 12345) % 2147483648;
                dadd(&h[x % 100], 1);
            }
            _exit(0);
        }
    for (int k = 0; k < 4; k++) wait(NULL);
    double dt = now() - t0, sum = 0;
    for (int i = 0; i < 100; i++) sum += h[i];
    if (sum != (double)(per * 4)) abort();
    return per * 4 / dt;
}

/* plain element writes into shared doubles, one worker */
static double array_ptr(int64_t n) {
    int64_t size = 1000000, reps = n / size > 0 ? n / size : 1;
    double *a = shm(size * sizeof *a);
    double t0 = now();
    for (int64_t r = 0; r < reps; r++)
        for (int64_t i = 0; i < size; i++) a[i] = (double)(i + r);
    double dt = now() - t0;
    if (a[size - 1] != (double)(size - 1 + reps - 1)) abort();
    return reps * size / dt;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: c_ref WORKLOAD SIZE\n");
        return 2;
    }
    const char *w = argv[1];
    int64_t n = (int64_t)atof(argv[2]);
    double v;
    if (!strcmp(w, "primes_t1")) v = primes_threads(1, n);
    else if (!strcmp(w, "primes_t2")) v = primes_threads(2, n);
    else if (!strcmp(w, "primes_t3")) v = primes_threads(3, n);
    else if (!strcmp(w, "list_append_3p")) v = list_append_3p(n);
    else if (!strcmp(w, "queue_tt")) v = queue_rate(0, 1, n);
    else if (!strcmp(w, "queue_pp")) v = queue_rate(1, 1, n);
    else if (!strcmp(w, "queue_pp4")) v = queue_rate(1, 4, n);
    else if (!strcmp(w, "pipe_oneway")) v = pipe_oneway(n);
    else if (!strcmp(w, "pipe_rtt")) v = pipe_rtt(n);
    else if (!strcmp(w, "lock_uncontended")) v = lock_rate(1, n);
    else if (!strcmp(w, "lock_contended2")) v = lock_rate(2, n);
    else if (!strcmp(w, "spawn_process")) v = spawn_latency(1, n);
    else if (!strcmp(w, "spawn_thread")) v = spawn_latency(0, n);
    else if (!strcmp(w, "rss_thread")) v = rss_per(0, n);
    else if (!strcmp(w, "rss_process")) v = rss_per(1, n);
    else if (!strcmp(w, "array_add")) v = array_add(n);
    else if (!strcmp(w, "array_hist4p")) v = array_hist4p(n);
    else if (!strcmp(w, "array_ptr")) v = array_ptr(n);
    else {
        fprintf(stderr, "unknown workload %s\n", w);
        return 2;
    }
    printf("%.6g\n", v);
    return 0;
}
