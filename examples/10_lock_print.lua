-- Lesson 10: a lock keeps printed lines whole. Each line is written in
-- pieces; without the lock, processes would interleave them.
-- usage: concur examples/10_lock_print.lua [lines_per_process=5] [--nolock]
local concur = require "concur"
local process, lock = concur.process, concur.lock
local n = tonumber(arg[1]) or 5
local use_lock = arg[2] ~= "--nolock"

io.stdout:setvbuf("no")
local m = lock()
local function say(w, i)
  io.write("process ", w, " ")
  io.write("says line ", i, " ")
  io.write("of ", n, "\n")
end
local ps = {}
for w = 1, 3 do
  ps[w] = process.spawn(function()
    for i = 1, n do
      if use_lock then m:with(say, w, i) else say(w, i) end
    end
  end)
end
for _, p in ipairs(ps) do p:join() end
