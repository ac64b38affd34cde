-- make demo: the headline lesson at full size. Primes below N in 1 process,
-- 3 processes and 3 threads (the C kernel), then a pure-Lua is_prime for
-- contrast. Work is split in interleaved chunks so each worker gets a fair
-- share (larger numbers cost more to test).
-- usage: concur examples/demo.lua [N=3000000]
local concur = require "concur"
local process, thread, primes = concur.process, concur.thread, concur.primes
local N = tonumber(arg[1] or os.getenv("N")) or 3000000
local CHUNK = 10000

local function lua_count(lo, hi) -- the tutorial's is_prime, in Lua
  local c = 0
  for n = lo, hi - 1 do
    local p = n > 1
    if n > 3 then
      p = n % 2 ~= 0 and n % 3 ~= 0
      local i = 5
      while p and i * i <= n do
        if n % i == 0 or n % (i + 2) == 0 then p = false end
        i = i + 6
      end
    end
    if p then c = c + 1 end
  end
  return c
end

local function run(spawn, workers, n, count)
  local t0 = concur.clock()
  local hs = {}
  for k = 0, workers - 1 do
    hs[#hs + 1] = spawn(function(first)
      local total = 0
      for lo = first, n - 1, workers * CHUNK do total = total + count(lo, math.min(lo + CHUNK, n)) end
      return total
    end, k * CHUNK)
  end
  local total = 0
  for _, h in ipairs(hs) do total = total + h:join() end
  return total, concur.clock() - t0
end

print(string.format("primes below %d on %d cores (C kernel)", N, process.cpu_count()))
local c1, t1 = run(process.spawn, 1, N, primes.count)
print(string.format("  1 process    %8.3fs  %d primes", t1, c1))
local c2, t2 = run(process.spawn, 3, N, primes.count)
print(string.format("  3 processes  %8.3fs  %d primes  speed-up %.2fx", t2, c2, t1 / t2))
local c3, t3 = run(thread.new, 3, N, primes.count)
print(string.format("  3 threads    %8.3fs  %d primes  speed-up %.2fx", t3, c3, t1 / t3))
local M = N // 10
print(string.format("the same with a pure-Lua is_prime, below %d (a tenth, to keep it short)", M))
local l1, u1 = run(thread.new, 1, M, lua_count)
print(string.format("  1 thread     %8.3fs  %d primes", u1, l1))
local l3, u3 = run(thread.new, 3, M, lua_count)
print(string.format("  3 threads    %8.3fs  %d primes  speed-up %.2fx", u3, l3, u1 / u3))
local _, c1 = run(thread.new, 1, M, primes.count) -- the C kernel on the same range
print(string.format("the C kernel is %.1fx faster than pure Lua on the same range", u1 / c1))
