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
