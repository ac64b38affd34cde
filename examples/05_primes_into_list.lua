-- Lesson 5: primes into a shared.list from three processes: one append per
-- prime, then a local batch and one extend per process. Fewer crossings win.
-- usage: concur examples/05_primes_into_list.lua [N=3000000]
local concur = require "concur"
local process, shared, primes = concur.process, concur.shared, concur.primes
local N = tonumber(arg[1] or os.getenv("N")) or 3000000

local function run(batched)
  local out = shared.list()
  local t0 = concur.clock()
  local ps = {}
  for i = 0, 2 do
    ps[#ps + 1] = process.spawn(function(lo, hi)
      if batched then
        out:extend(primes.list(lo, hi)) -- one crossing per process
      else
        for n = lo, hi - 1 do
          if primes.is_prime(n) then out:append(n) end -- one crossing per prime
        end
      end
    end, i * N // 3, (i + 1) * N // 3)
  end
  for _, p in ipairs(ps) do p:join() end
  return #out, concur.clock() - t0
end

local n1, t1 = run(false)
local n2, t2 = run(true)
print(string.format("one append per prime:   %d primes in %.3fs", n1, t1))
print(string.format("local batch + extend:   %d primes in %.3fs (%.1fx faster)", n2, t2, t1 / t2))
