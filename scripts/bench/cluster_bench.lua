-- concur.cluster workloads for make bench. SPMD, on 2 ranks:
--   mpirun -n 2 build/concur scripts/bench/cluster_bench.lua pingpong N
--   mpirun -n 2 build/concur scripts/bench/cluster_bench.lua stream N
-- messages/s of a small value (an integer), beside scripts/bench/mpi_ref.c
-- doing the same in plain C. The MPI pool (rank 0 runs it, the others work):
--   mpirun -n 3 build/concur -l concur.serve scripts/bench/cluster_bench.lua pool_map N
--       items/s of p:map over N small items
--   mpirun -n K build/concur -l concur.serve scripts/bench/cluster_bench.lua pool_primes N
--       seconds to count the primes below N over chunks of 10^4 (C kernel)
-- Rank 0 prints the figure.
local cluster = require "concur.cluster"
local workload, n = arg[1], math.floor(tonumber(arg[2]))
local rank = cluster.rank()
local concur = require "concur"
if workload == "pool_map" or workload == "pool_primes" then
  local pool = require "concur.pool"
  local p = pool.new{kind = "mpi"}
  local clock = concur.clock
  local t0 = clock()
  if workload == "pool_map" then
    local items = {}
    for i = 1, n do items[i] = i end
    local r = p:map(function(x) return x + 1 end, items)
    assert(r[n] == n + 1)
    print(string.format("%.6g", n / (clock() - t0)))
  else
    local lows = {}
    for lo = 0, n - 1, 10000 do lows[#lows + 1] = lo end
    local count = concur.primes.count
    local r = p:map(function(lo) return count(lo, math.min(lo + 10000, n)) end, lows, {chunksize = 4})
    local total = 0
    for _, c in ipairs(r) do total = total + c end
    local dt = clock() - t0
    assert(n ~= 3000000 or total == 216816, total)
    print(string.format("%.6g", dt))
  end
  p:close(); p:join()
  return
end
assert(cluster.size() == 2, "cluster_bench: run on 2 ranks")
local send, recv = cluster.send, cluster.recv
local clock = require "concur".clock -- monotonic seconds
cluster.barrier()
local start = clock()
if workload == "pingpong" then
  if rank == 0 then
    for i = 1, n do send(i, 1); recv(1) end
  else
    for _ = 1, n do send((recv(0)), 0) end
  end
elseif workload == "stream" then
  if rank == 1 then
    for i = 1, n do send(i, 0) end
  else
    for _ = 1, n do recv(1) end
  end
else
  error("cluster_bench: unknown workload " .. tostring(workload))
end
cluster.barrier()
local dt = clock() - start
if rank == 0 then print(string.format("%.6g", (workload == "pingpong" and 2 or 1) * n / dt)) end
