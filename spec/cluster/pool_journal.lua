-- spec/cluster_pool_spec.lua: a map with a journal; on the first run the
-- rank computing item 30 SIGKILLs itself (the job ends), the rerun finishes
-- only what is left. Each computed item appends a line to $RAN.
local concur = require "concur"
local pool = require "concur.pool"
local p = pool.new{kind = "mpi"}
local items = {}
for i = 1, 40 do items[i] = i end
local ran, marker = os.getenv("RAN"), os.getenv("MARKER")
local r = p:map(function(x)
  local f = io.open(ran, "a"); f:write(x, "\n"); f:close()
  if x == 30 and not io.open(marker) then
    io.open(marker, "w"):close()
    concur.process.run{"kill", "-KILL", tostring(concur.process.pid())}
  end
  return x * 3
end, items, {chunksize = 1, journal = os.getenv("JOURNAL")})
local sum = 0
for i = 1, 40 do sum = sum + r[i] end
print("sum " .. sum)
