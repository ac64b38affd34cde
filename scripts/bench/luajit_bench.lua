-- LuaJIT side of make bench (concur_bench.lua uses 5.4 syntax):
-- `luajit luajit_bench.lua WORKLOAD SIZE` with build/luajit/concur.so on
-- package.cpath; prints one number.
local concur = require "concur"
local workload, size = arg[1], tonumber(arg[2])

local W = {}

-- element writes/s through a:ptr() (FFI double *), one worker
W.array_ptr = function(n)
  local len = 1000000
  local a = concur.shared.array(len, "f64")
  local p = a:ptr()
  local reps = math.max(1, math.floor(n / len))
  local t0 = concur.clock()
  for r = 1, reps do
    for i = 0, len - 1 do p[i] = i + r end
  end
  local dt = concur.clock() - t0
  assert(a[len] == len - 1 + reps)
  return reps * len / dt
end

-- msgs/s through a queue in batches of 1000: put_many / get_many, thread -> thread
W.queue_batch_tt = function(n)
  local q = concur.queue(100000)
  local B = 1000
  local batches = math.floor(n / B)
  local t0 = concur.clock()
  local t = concur.thread.new(function(qq, nb, b)
    local batch = {}
    for i = 1, b do batch[i] = i end
    for _ = 1, nb do qq:put_many(batch) end
  end, q, batches, B)
  local got = 0
  while got < batches * B do got = got + #q:get_many(B) end
  t:join()
  return batches * B / (concur.clock() - t0)
end

local f = W[workload]
if not f then
  io.stderr:write("unknown workload ", tostring(workload), "\n")
  os.exit(2)
end
print(string.format("%.6g", f(size)))
