-- concur.cluster workloads for make bench, run on 2 ranks:
--   mpirun -n 2 build/concur scripts/bench/cluster_bench.lua pingpong N
--   mpirun -n 2 build/concur scripts/bench/cluster_bench.lua stream N
-- messages/s of a small value (an integer), beside scripts/bench/mpi_ref.c
-- doing the same in plain C. Rank 0 prints the rate.
local cluster = require "concur.cluster"
local workload, n = arg[1], math.tointeger(tonumber(arg[2]))
local rank = cluster.rank()
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
