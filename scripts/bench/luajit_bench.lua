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

local f = W[workload]
if not f then
  io.stderr:write("unknown workload ", tostring(workload), "\n")
  os.exit(2)
end
print(string.format("%.6g", f(size)))
