-- Lesson 9: five one-second sleeps, one after another, then in five threads.
-- usage: concur examples/09_sleep_threads.lua [seconds=1]
local concur = require "concur"
local thread = concur.thread
local s = tonumber(arg[1]) or 1

local t0 = concur.clock()
for _ = 1, 5 do concur.sleep(s) end
local seq = concur.clock() - t0

t0 = concur.clock()
local ts = {}
for i = 1, 5 do ts[i] = thread.new(function(d) concur.sleep(d) end, s) end
for _, t in ipairs(ts) do t:join() end
local par = concur.clock() - t0
print(string.format("sequential: 5 sleeps of %gs took %.2fs", s, seq))
print(string.format("5 threads:  5 sleeps of %gs took %.2fs", s, par))
