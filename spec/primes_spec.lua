-- primes and the concur utilities
local concur = require "concur"
local primes = concur.primes

describe("primes", function()
  it("tests primality by trial division", function()
    assert.is_false(primes.is_prime(0))
    assert.is_false(primes.is_prime(1))
    assert.is_true(primes.is_prime(2))
    assert.is_true(primes.is_prime(3))
    assert.is_false(primes.is_prime(25))
    assert.is_true(primes.is_prime(7919))
    assert.is_false(primes.is_prime(-7))
  end)

  it("counts primes over [from, to)", function()
    assert.equal(4, primes.count(0, 10))
    assert.equal(5, primes.count(0, 12))
    assert.equal(0, primes.count(10, 10))
    assert.equal(0, primes.count(10, 5))
    assert.equal(216816, primes.count(0, 3000000))
  end)

  it("lists primes over [from, to)", function()
    assert.same({2, 3, 5, 7}, primes.list(0, 10))
    assert.same({11, 13}, primes.list(10, 17))
  end)

  it("rejects non-integers", function()
    assert.has_error(function() primes.count("a", 10) end)
    assert.has_error(function() primes.count(0, 1.5) end)
    assert.has_error(function() primes.is_prime() end)
  end)

  it("splits the count across processes", function()
    local n, parts = 300000, 3
    local ps = {}
    for i = 0, parts - 1 do
      ps[#ps + 1] = concur.process.spawn(primes.count, math.floor(i * n / parts), math.floor((i + 1) * n / parts))
    end
    local total = 0
    for _, p in ipairs(ps) do total = total + p:join(30) end
    assert.equal(primes.count(0, n), total)
  end)
end)

describe("concur utilities", function()
  it("has a version, a monotonic clock and sleep", function()
    assert.equal("string", type(concur.version))
    local t0 = concur.clock()
    concur.sleep(0.02)
    assert.is_true(concur.clock() - t0 >= 0.015)
    assert.has_error(function() concur.sleep("x") end)
  end)

  it("reports shared memory use", function()
    local used, size = concur.memory()
    assert.is_true(used >= 0)
    assert.is_true(size >= used)
  end)
end)

describe("primes over the whole integer range", function()
  local maxint = math.maxinteger -- nil under LuaJIT: one number type, 53-bit integers
  local function needs_int64()
    if not maxint then pending("LuaJIT numbers are doubles: no exact integers above 2^53") return true end
  end

  -- Run f in a child, so that a search that never ends fails the spec
  -- instead of hanging it.
  local function bounded(f, ...)
    local p = concur.process.spawn(f, ...)
    local r = table.pack(p:join(10))
    if r[1] == nil and r[2] == "timeout" then
      p:kill(9)
      pcall(p.join, p, 5)
      error("did not return within 10 s", 2)
    end
    return table.unpack(r, 1, r.n)
  end

  -- trial division in Lua, to check the C answers for mid-size numbers
  local function slow_is_prime(n)
    if n < 2 then return false end
    if n % 2 == 0 then return n == 2 end
    local i = 3
    while i * i <= n do
      if n % i == 0 then return false end
      i = i + 2
    end
    return true
  end

  it("knows the largest primes below 2^63 and 2^62, and 2^61 - 1", function()
    if needs_int64() then return end
    local r = bounded(function()
      return {
        primes.is_prime(9223372036854775783), -- 2^63 - 25
        primes.is_prime(4611686018427387847), -- 2^62 - 57
        primes.is_prime(2305843009213693951), -- 2^61 - 1, a Mersenne prime
        primes.is_prime(4294967311),          -- the first prime above 2^32
      }
    end)
    assert.same({true, true, true, true}, r)
  end)

  it("finds the large composites, strong pseudoprimes included", function()
    if needs_int64() then return end
    local r = bounded(function()
      return {
        primes.is_prime(math.maxinteger),          -- 7^2 * 73 * 127 * 337 * 92737 * 649657
        primes.is_prime(9223372036854775781),      -- even neighbours aside, the odd ones below 2^63 - 25 ...
        primes.is_prime(4611685975477714963),      -- (2^31 - 1) * 2147483629
        primes.is_prime(4611686014132420609),      -- (2^31 - 1)^2
        primes.is_prime(3215031751),               -- strong pseudoprime to bases 2, 3, 5, 7
        primes.is_prime(3825123056546413051),      -- strong pseudoprime to bases 2 .. 23
        primes.is_prime(341550071728321),          -- strong pseudoprime to bases 2 .. 17
        primes.is_prime(4611686018427387904),      -- 2^62
      }
    end)
    assert.same({false, false, false, false, false, false, false, false}, r)
  end)

  it("agrees with trial division around 2^32, where the method changes", function()
    local from, to = 2^32 - 300, 2^32 + 300
    local expect = 0
    for n = from, to - 1 do
      local slow = slow_is_prime(n)
      assert.equal(slow, primes.is_prime(n), "is_prime(" .. string.format("%.0f", n) .. ")")
      if slow then expect = expect + 1 end
    end
    assert.equal(expect, primes.count(from, to))
    assert.equal(92, primes.count(2^32 - 1000, 2^32 + 1000))
  end)

  it("counts and lists the primes just below 2^53 (every flavour)", function()
    local from, to = 2^53 - 1000, 2^53
    local got = bounded(function(a, b) return {primes.count(a, b), primes.list(a, b)} end, from, to)
    assert.equal(25, got[1])
    assert.equal(25, #got[2])
    assert.equal(9007199254740881, got[2][25])
  end)

  it("counts and lists [maxinteger - 100, maxinteger) like is_prime one by one", function()
    if needs_int64() then return end
    local from, to = maxint - 100, maxint
    local got = bounded(function(a, b)
      local each = {}
      for n = a, b - 1 do if primes.is_prime(n) then each[#each + 1] = n end end
      return {count = primes.count(a, b), list = primes.list(a, b), each = each,
              wide = primes.count(maxint - 1000, maxint), last = primes.count(maxint - 1, maxint)}
    end, from, to)
    assert.same(got.each, got.list)
    assert.equal(#got.each, got.count)
    assert.same({9223372036854775783}, got.list)
    assert.equal(23, got.wide)
    assert.equal(0, got.last)
  end)

  it("counts over ranges that span the whole integer line without overflow", function()
    if needs_int64() then return end
    local got = bounded(function()
      return {primes.count(math.mininteger, math.mininteger + 10), primes.count(-5, 3),
              primes.count(maxint, maxint), primes.count(maxint, math.mininteger)}
    end)
    assert.same({0, 1, 0, 0}, got)
  end)

  it("stops a count near 2^62 within about a second when its thread is cancelled", function()
    local from, to = 2^62, maxint or (2^62 + 2^60)
    local started = concur.lock.event()
    local t = concur.thread.new(function(ev, a, b)
      ev:set()
      return concur.primes.count(a, b)
    end, started, from, to)
    assert.is_true(started:wait(10))
    concur.sleep(0.1)
    local t0 = concur.clock()
    t:cancel()
    local v, why = t:join(10)
    local took = concur.clock() - t0
    assert.is_nil(v)
    assert.equal("cancelled", why)
    assert.is_true(took < 1.5, string.format("took %.2f s to stop", took))
  end)
end)
