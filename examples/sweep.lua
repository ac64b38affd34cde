-- A parameter sweep to CSV with concur.pool: every (damping, drive) pair of
-- a grid runs a small simulation in a worker process, results come back in
-- order, a progress line shows how far it got, and a journal makes the run
-- resumable: kill it (Ctrl-C, SIGKILL, a power cut) and run it again, and it
-- computes only the points that were not finished.
--
--   concur examples/sweep.lua [out.csv] [points] [workers]    (default sweep.csv 400)
--   lua5.4 / luajit examples/sweep.lua ...                     with concur.so on LUA_CPATH
local concur = require "concur"
local pool = concur.pool

local out = arg and arg[1] or "sweep.csv"
local points = tonumber(arg and arg[2]) or 400
local workers = tonumber(arg and arg[3]) or nil

-- the grid: side x side points over damping 0.05..0.5 and drive 0.5..2.0
local side = math.ceil(math.sqrt(points))
local params = {}
for i = 0, points - 1 do
  local a, b = i % side, math.floor(i / side)
  params[#params + 1] = { damping = 0.05 + 0.45 * a / (side - 1), drive = 0.5 + 1.5 * b / (side - 1) }
end

-- a driven, damped oscillator; the amplitude it settles at, with a little noise
local function simulate(p)
  local x, v, dt, peak = 0, 0, 0.01, 0
  for step = 1, 20000 do
    local t = step * dt
    local a = -x - 2 * p.damping * v + math.cos(p.drive * t)
    v = v + a * dt
    x = x + v * dt
    if step > 15000 and math.abs(x) > peak then peak = math.abs(x) end
  end
  return peak * (1 + 0.01 * (math.random() - 0.5)) -- seeded per point: reproducible
end

local p = pool.new { workers = workers }
local results = p:map(simulate, params, { progress = "sweep", journal = out .. ".journal", seed = 2024 })
p:close()
p:join()

local f = assert(io.open(out, "w"))
f:write("damping,drive,amplitude\n")
local best, at = -1, nil
for i, q in ipairs(params) do
  f:write(string.format("%.4f,%.4f,%.6f\n", q.damping, q.drive, results[i]))
  if results[i] > best then best, at = results[i], q end
end
f:close()
os.remove(out .. ".journal") -- finished: the next run starts over
print(string.format("%d points written to %s; the largest amplitude %.3f at damping %.3f, drive %.3f",
  #params, out, best, at.damping, at.drive))
