-- Lesson 3: a plain table is not shared. Each child appends to its own copy;
-- the parent's table stays empty.
-- usage: concur examples/03_plain_table.lua [items=3]
local concur = require "concur"
local process = concur.process
local n = tonumber(arg[1]) or 3

local data = {}
local ps = {}
for w = 1, 3 do
  ps[w] = process.spawn(function()
    for i = 1, n do data[#data + 1] = process.pid() * 100 + i end
    return process.pid(), data
  end)
end
for _, p in ipairs(ps) do
  local pid, copy = p:join()
  print(string.format("child %d: its own table has %d items: %s", pid, #copy, table.concat(copy, ", ")))
end
print(string.format("parent %d: its table has %d items", process.pid(), #data))
