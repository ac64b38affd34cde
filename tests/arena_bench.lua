-- arena_bench.lua -- the allocator's hot paths as scripts see them: list
-- items that are not inline (100-byte strings), queue chunks (small tables)
-- and dict entries. Prints one line of CPU seconds per case.
--   build/concur tests/arena_bench.lua [scale]
local concur = require "concur"
local shared, queue = concur.shared, concur.queue
local scale = tonumber(arg and arg[1]) or 1

local function time(f)
  collectgarbage()
  local t = os.clock() -- CPU time: steadier than wall time on a shared machine
  f()
  return os.clock() - t
end

local N = math.floor(1000000 * scale)
local s = string.rep("x", 100)
local l = shared.list()
local bulk = time(function()
  for _ = 1, N do l:append(s) end
  for _ = 1, N do l:pop() end
end)
local pairs_ = time(function()
  for _ = 1, N do l:append(s); l:pop() end
end)
local M = math.floor(100000 * scale)
local q = queue()
local qbulk = time(function()
  for i = 1, M do q:put({i, "a", x = 1}) end
  for _ = 1, M do q:get() end
end)
local d = shared.dict()
local dict = time(function()
  for i = 1, M do d["k" .. i] = s end
  for i = 1, M do d["k" .. i] = nil end
end)
print(string.format("list append+pop %.3f  list pairs %.3f  queue put+get %.3f  dict set+del %.3f",
                    bulk, pairs_, qbulk, dict))
