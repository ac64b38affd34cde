-- Lesson 7: threads appending to one shared list.
-- usage: concur examples/07_threads_list.lua [items_per_thread=1000]
local concur = require "concur"
local thread, shared = concur.thread, concur.shared
local n = tonumber(arg[1]) or 1000

local data = shared.list()
local ts = {}
for w = 1, 4 do
  ts[w] = thread.new(function()
    for i = 1, n do data:append(w * 1000000 + i) end
    return thread.id()
  end)
end
for w, t in ipairs(ts) do print(string.format("thread %d (tid %d) done", w, t:join())) end
print(string.format("the list has %d items (4 threads x %d)", #data, n))
