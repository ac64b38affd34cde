#!/usr/bin/env python3
"""Python side of make bench: `python3 python_ref.py WORKLOAD SIZE` prints one
number, in the same unit as concur_bench.lua. Standard library only; the
multiprocessing start method is fork, like concur's processes."""
import multiprocessing as mp
import os
import queue
import sys
import threading
import time

CHUNK = 10000


def is_prime(n):
    if n <= 1:
        return False
    if n <= 3:
        return True
    if n % 2 == 0 or n % 3 == 0:
        return False
    i = 5
    while i * i <= n:
        if n % i == 0 or n % (i + 2) == 0:
            return False
        i += 6
    return True


def count(lo, hi):
    return sum(1 for n in range(lo, hi) if is_prime(n))


def worker_count(args):
    first, step, limit = args
    return sum(count(lo, min(lo + CHUNK, limit)) for lo in range(first, limit, step))


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def primes_procs(w, n):
    def run():
        with mp.Pool(w) as pool:
            sum(pool.map(worker_count, [(k * CHUNK, w * CHUNK, n) for k in range(w)]))
    return timed(run)


def primes_threads(w, n):
    def run():
        ts = [threading.Thread(target=worker_count, args=((k * CHUNK, w * CHUNK, n),)) for k in range(w)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return timed(run)


def _append(lst, n):
    for i in range(n):
        lst.append(i)


def _extend(lst, n):
    batch = []
    for i in range(n):
        batch.append(i)
        if len(batch) == 1000:
            lst.extend(batch)
            batch = []
    if batch:
        lst.extend(batch)


def list_3p(n, fn):
    with mp.Manager() as m:
        lst = m.list()
        ps = [mp.Process(target=fn, args=(lst, n)) for _ in range(3)]
        t0 = time.perf_counter()
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        return 3 * n / (time.perf_counter() - t0)


def _put(q, n):
    for i in range(n):
        q.put(i)


def queue_rate(kind, producers, n):
    q = queue.Queue(100000) if kind == "thread" else mp.Queue(100000)
    make = threading.Thread if kind == "thread" else mp.Process
    per = n // producers
    hs = [make(target=_put, args=(q, per)) for _ in range(producers)]
    t0 = time.perf_counter()
    for h in hs:
        h.start()
    for _ in range(per * producers):
        q.get()
    for h in hs:
        h.join()
    return per * producers / (time.perf_counter() - t0)


def _send(conn, n):
    for i in range(n):
        conn.send(i)


def _echo(conn):
    while True:
        v = conn.recv()
        if v is None:  # the child also holds the parent's end: no EOF, a sentinel
            return
        conn.send(v)


def pipe_oneway(n):
    r, w = mp.Pipe(duplex=False)
    p = mp.Process(target=_send, args=(w, n))
    t0 = time.perf_counter()
    p.start()
    for _ in range(n):
        r.recv()
    p.join()
    return n / (time.perf_counter() - t0)


def pipe_rtt(n):
    a, b = mp.Pipe()
    p = mp.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    a.send(0)
    a.recv()
    t0 = time.perf_counter()
    for i in range(n):
        a.send(i)
        a.recv()
    t = time.perf_counter() - t0
    a.send(None)
    p.join()
    return t / n * 1e6


def lock_uncontended(n):
    m = threading.Lock()
    t0 = time.perf_counter()
    for _ in range(n):
        m.acquire()
        m.release()
    return n / (time.perf_counter() - t0)


def _spin(m, n):
    for _ in range(n):
        m.acquire()
        m.release()


def lock_contended2(n):
    m = threading.Lock()
    ts = [threading.Thread(target=_spin, args=(m, n)) for _ in range(2)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return 2 * n / (time.perf_counter() - t0)


def _noop():
    return 1


def spawn_latency(make, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        h = make(target=_noop)
        h.start()
        h.join()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[(n - 1) // 2] * 1e6


_DATA = None


def _len_data():
    return len(_DATA)


def spawn_upv(make_data, n):
    # the list is a global, as a fork-start child sees it
    global _DATA
    _DATA = make_data()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        h = mp.Process(target=_len_data)
        h.start()
        h.join()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[(n - 1) // 2] * 1e6


def rss_kib(pid="self"):
    for name in ("smaps_rollup", "status"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    if line.startswith("Pss:") or line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
    return 0


def _park(q):
    q.get()


def rss_thread(n):
    q = queue.Queue()
    before = rss_kib()
    ts = [threading.Thread(target=_park, args=(q,)) for _ in range(n)]
    for t in ts:
        t.start()
    time.sleep(0.2)
    after = rss_kib()
    for _ in range(n):
        q.put(0)
    for t in ts:
        t.join()
    return (after - before) / n


def rss_process(n):
    q = mp.Queue()
    ps = [mp.Process(target=_park, args=(q,)) for _ in range(n)]
    for p in ps:
        p.start()
    time.sleep(0.3)
    total = sum(rss_kib(p.pid) for p in ps)
    for _ in range(n):
        q.put(0)
    for p in ps:
        p.join()
    return total / n


def array_add(n):
    """uncontended add with the lock Python needs for it (Array.get_lock())"""
    a = mp.Array("q", 100)
    t0 = time.perf_counter()
    for _ in range(n):
        with a.get_lock():
            a[6] += 1
    return n / (time.perf_counter() - t0)


def _hist(h, seed, per):
    x = seed
    for _ in range(per):
        x = (x * 1103515245 + 12345) % 2147483648
        with h.get_lock():
            h[x % 100] += 1


def array_hist4p(n):
    """10^6 samples into 100 bins from 4 processes: Array('d', 100), get_lock() per add"""
    h = mp.Array("d", 100)
    per = n // 4
    ps = [mp.Process(target=_hist, args=(h, k, per)) for k in range(1, 5)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t0
    assert sum(h[:]) == per * 4
    return per * 4 / dt


def array_ptr(n):
    """element writes into a shared Array (no lock), one worker"""
    size = 1000000
    a = mp.Array("d", size, lock=False)
    reps = max(1, n // size)
    t0 = time.perf_counter()
    for r in range(reps):
        for i in range(size):
            a[i] = i + r
    return reps * size / (time.perf_counter() - t0)


# ---- pool (issue 12): multiprocessing.Pool and concurrent.futures, the pool
# started and warmed before the clock starts, as in concur_bench.lua
def _sq(x):
    return x * x


def _ident(x):
    return x


def _sleep5(x):
    time.sleep(0.005)
    return x


def _count_chunk(args):
    lo, n = args
    return count(lo, min(lo + CHUNK, n))


def pool_map(n):
    with mp.Pool(2) as p:
        p.map(_sq, range(4))
        return n / timed(lambda: p.map(_sq, range(n)))


def pool_imapu(n):
    with mp.Pool(2) as p:
        p.map(_sq, range(4))
        return n / timed(lambda: sum(1 for _ in p.imap_unordered(_sq, range(n), chunksize=1)))


def pool_submit(executor, n):
    from concurrent import futures
    with getattr(futures, executor)(2) as ex:
        ex.submit(_ident, 1).result()

        def run():
            fs = [ex.submit(_ident, i) for i in range(n)]
            for f in fs:
                f.result()
        return n / timed(run)


def pool_primes(w, n):
    with mp.Pool(w) as p:
        p.map(_sq, range(4))
        return timed(lambda: sum(p.map(_count_chunk, [(lo, n) for lo in range(0, n, CHUNK)], chunksize=1)))


def pool_sweep(n):
    with mp.Pool(2) as p:
        p.map(_sq, range(4))
        return timed(lambda: p.map(_sleep5, range(n))) / (n * 0.005 / 2)


WORKLOADS = {
    "pool_map": pool_map,
    "pool_imapu": pool_imapu,
    "pool_submit_t": lambda n: pool_submit("ThreadPoolExecutor", n),
    "pool_submit_p": lambda n: pool_submit("ProcessPoolExecutor", n),
    "pool_primes_1": lambda n: pool_primes(1, n),
    "pool_primes_2": lambda n: pool_primes(2, n),
    "pool_sweep": pool_sweep,
    "primes_py_p1": lambda n: primes_procs(1, n),
    "primes_py_p2": lambda n: primes_procs(2, n),
    "primes_py_p3": lambda n: primes_procs(3, n),
    "primes_py_t1": lambda n: primes_threads(1, n),
    "primes_py_t3": lambda n: primes_threads(3, n),
    "list_append_3p": lambda n: list_3p(n, _append),
    "list_extend_3p": lambda n: list_3p(n, _extend),
    "queue_tt": lambda n: queue_rate("thread", 1, n),
    "queue_pp": lambda n: queue_rate("process", 1, n),
    "queue_pp4": lambda n: queue_rate("process", 4, n),
    "pipe_oneway": pipe_oneway,
    "pipe_rtt": pipe_rtt,
    "lock_uncontended": lock_uncontended,
    "lock_contended2": lock_contended2,
    "spawn_process": lambda n: spawn_latency(mp.Process, n),
    "spawn_thread": lambda n: spawn_latency(threading.Thread, n),
    "spawn_upv_ints": lambda n: spawn_upv(lambda: list(range(1, 1000001)), n),
    "spawn_upv_rows": lambda n: spawn_upv(lambda: [[i, -i] for i in range(1, 1000001)], n),
    "rss_thread": rss_thread,
    "rss_process": rss_process,
    "array_add": array_add,
    "array_hist4p": array_hist4p,
    "array_ptr": array_ptr,
}

if __name__ == "__main__":
    mp.set_start_method("fork")
    name, size = sys.argv[1], int(float(sys.argv[2]))
    if name not in WORKLOADS:
        sys.exit(f"unknown workload {name}")
    print("%.6g" % WORKLOADS[name](size))
