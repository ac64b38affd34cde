-- Lesson 4: the same appends into a shared.list: the parent sees them all.
-- usage: concur examples/04_shared_list.lua [items=3]
local concur = require "concur"
local process, shared = concur.process, concur.shared
local n = tonumber(arg[1]) or 3

local data = shared.list()
local ps = {}
for w = 1, 3 do
  ps[w] = process.spawn(function()
    for i = 1, n do data:append(process.pid() * 100 + i) end
    return process.pid()
  end)
end
for _, p in ipairs(ps) do print("child " .. p:join() .. " appended " .. n .. " items") end
print(string.format("parent %d: the shared list has %d items: %s", process.pid(), #data,
  table.concat(data:totable(), ", ")))
