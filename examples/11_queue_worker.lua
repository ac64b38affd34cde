-- Lesson 11: a queue feeds a worker thread with lines read from stdin until
-- "stop" (or the end of input).
-- usage: printf 'a\nb\nstop\n' | concur examples/11_queue_worker.lua
local concur = require "concur"
local thread, queue = concur.thread, concur.queue

local q = queue()
local worker = thread.new(function(jobs)
  local n = 0
  for line in jobs:iter() do -- until the queue is closed and drained
    n = n + 1
    print("worker got: " .. line)
  end
  return n
end, q)

for line in io.lines() do
  if line == "stop" then break end
  q:put(line)
end
q:close()
print(string.format("main: stopped; the worker handled %d lines", worker:join()))
