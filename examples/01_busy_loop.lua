-- Lesson 1: a busy loop keeps one core busy; one per core keeps them all busy.
-- usage: concur examples/01_busy_loop.lua [seconds=3]
local concur = require "concur"
local process = concur.process
local seconds = tonumber(arg[1] or os.getenv("SECONDS_BUSY")) or 3

local function busy(s) -- spin for s seconds of wall time; return our own CPU seconds
  local t0, x = concur.clock(), 0
  while concur.clock() - t0 < s do x = x + 1 end
  return os.clock()
end

local function run(workers)
  local t0 = concur.clock()
  local ps = {}
  for i = 1, workers do ps[i] = process.spawn(busy, seconds) end
  local cpu = 0
  for _, p in ipairs(ps) do cpu = cpu + p:join() end
  local wall = concur.clock() - t0
  print(string.format("%d busy process(es): wall %.2fs, CPU %.2fs, cores used %.2f",
    workers, wall, cpu, cpu / wall))
  return cpu / wall
end

print(string.format("machine: %d cores", process.cpu_count()))
run(1)
run(process.cpu_count())
