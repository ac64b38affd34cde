-- Lesson 8: primes in three threads vs one. In Python the GIL makes threads
-- useless for CPU work; here each thread runs its own Lua state on its own
-- core, with no global lock, so threads speed CPU work up like processes do.
-- usage: concur examples/08_primes_threads.lua [N=3000000]
local concur = require "concur"
local thread, primes = concur.thread, concur.primes
local N = tonumber(arg[1] or os.getenv("N")) or 3000000

local function run(workers)
  local t0 = concur.clock()
  local ts = {}
  for i = 0, workers - 1 do
    ts[#ts + 1] = thread.new(primes.count, i * N // workers, (i + 1) * N // workers)
  end
  local total = 0
  for _, t in ipairs(ts) do total = total + t:join() end
  return total, concur.clock() - t0
end

local c1, t1 = run(1)
local c3, t3 = run(3)
print(string.format("1 thread:  %d primes in %.3fs", c1, t1))
print(string.format("3 threads: %d primes in %.3fs (speed-up %.2fx on %d cores)", c3, t3, t1 / t3,
  concur.process.cpu_count()))
print("threads DO speed up CPU work here: every concur thread has its own Lua state,")
print("so there is no global interpreter lock; they run truly in parallel.")
