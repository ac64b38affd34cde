-- Lesson 2: count primes in one process, then split the range over three.
-- usage: concur examples/02_primes_processes.lua [N=3000000]
local concur = require "concur"
local process, primes = concur.process, concur.primes
local N = tonumber(arg[1] or os.getenv("N")) or 3000000

local t0 = concur.clock()
local one = primes.count(0, N)
local t1 = concur.clock() - t0
print(string.format("1 process:   %d primes below %d in %.3fs", one, N, t1))

t0 = concur.clock()
local ps = {}
for i = 0, 2 do
  ps[#ps + 1] = process.spawn(primes.count, i * N // 3, (i + 1) * N // 3)
end
local three = 0
for _, p in ipairs(ps) do three = three + p:join() end
local t3 = concur.clock() - t0
print(string.format("3 processes: %d primes below %d in %.3fs (speed-up %.2fx on %d cores)",
  three, N, t3, t1 / t3, process.cpu_count()))
print(one == three and "same count" or "COUNTS DIFFER")
