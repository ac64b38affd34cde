-- spec/cluster_spec.lua's failure probes, on 3 ranks. arg: kill | error | ok
local concur = require "concur"
local cluster = require "concur.cluster"
local mode = os.getenv("CLUSTER_PROBE") or "ok"
local rank = cluster.rank()
io.write(("up %d\n"):format(rank)); io.flush()
cluster.barrier()
if rank == 1 then
  if mode == "kill" then
    concur.process.run{"kill", "-KILL", tostring(concur.process.pid())}
  elseif mode == "error" then
    error("boom on rank 1")
  elseif mode == "exit" then
    os.exit(3)
  end
end
if mode ~= "ok" and rank ~= 1 then
  cluster.recv(1, 77) -- forever: only the end of the job can stop this
end
cluster.barrier()
io.write(("done %d\n"):format(rank))
