-- Monte Carlo with numbers that cross without copying: four worker
-- processes estimate pi into a shared.value and fill a 100-bin histogram
-- in a shared.array with atomic adds (no lock, no lost increments), and the
-- parent collects the workers in the order they finish with concur.wait.
--
-- Then the same estimate through concur.pool with `seed`: batch i draws
-- from math.random seeded from (seed, i), whichever worker runs it, so the
-- result is the same with 1, 2 or 4 workers -- a reproducible parallel run.
--
--   concur examples/montecarlo.lua [samples]        (default 1000000)
--   lua5.4 / luajit examples/montecarlo.lua [samples]  with concur.so on LUA_CPATH
local concur = require "concur"
local shared, process = concur.shared, concur.process

local samples = tonumber(arg and arg[1]) or 1000000
local workers = 4
local per = math.floor(samples / workers)

local inside = shared.value("i64")      -- points inside the quarter circle
local hist = shared.array(100, "i64")   -- where x fell, in 100 bins

local running = {}
for w = 1, workers do
  running[w] = process.spawn(function()
    math.randomseed(w * 7919)
    local hits = 0
    for _ = 1, per do
      local x, y = math.random(), math.random()
      if x * x + y * y <= 1 then hits = hits + 1 end
      hist:add(math.floor(x * 100) + 1, 1)   -- atomic: safe from 4 processes at once
    end
    inside:add(hits)
    return w
  end)
end

-- whichever worker finishes first is joined first
while #running > 0 do
  local ready = concur.wait(running, 60)
  if #ready == 0 then error("workers did not finish in 60 s") end
  for _, p in ipairs(ready) do
    print(string.format("worker %d finished", p:join()))
    for i = #running, 1, -1 do if running[i] == p then table.remove(running, i) end end
  end
end

local total = per * workers
print(string.format("pi ~ %.4f from %d samples", 4 * inside:get() / total, total))
local lo, hi = math.huge, 0
for i = 1, #hist do
  lo, hi = math.min(lo, hist[i]), math.max(hi, hist[i])
end
print(string.format("histogram: %d samples in %d bins, %d..%d per bin", hist:sum(), #hist, lo, hi))

-- the pool version: 64 batches, seeded per batch, on 1, 2 and 4 workers
local pool = concur.pool
local batches = 64
local per_batch = math.max(1, math.floor(samples / batches))
local function batch()
  local hits = 0
  for _ = 1, per_batch do
    local x, y = math.random(), math.random()
    if x * x + y * y <= 1 then hits = hits + 1 end
  end
  return hits
end
local estimates = {}
for _, n in ipairs { 1, 2, 4 } do
  local p = pool.new { workers = n }
  local hits = p:map(batch, (function() local t = {} for i = 1, batches do t[i] = i end return t end)(), { seed = 42 })
  p:close()
  p:join()
  local sum = 0
  for i = 1, batches do sum = sum + hits[i] end
  estimates[n] = 4 * sum / (per_batch * batches)
  print(string.format("pool, %d worker(s), seed 42: pi ~ %.6f from %d samples", n, estimates[n], per_batch * batches))
end
print("reproducible across worker counts: " .. tostring(estimates[1] == estimates[2] and estimates[2] == estimates[4]))
