-- shared.array and shared.value: numbers in shared memory, atomic add and cas,
-- range checks, and arrays travelling by reference.
local concur = require "concur"
local shared, process, thread, queue, pipe = concur.shared, concur.process, concur.thread,
  concur.queue, concur.pipe
local support = require "spec.support"

local INT_TYPES = {"i8", "u8", "i16", "u16", "i32", "u32", "i64"}
local ALL_TYPES = {"i8", "u8", "i16", "u16", "i32", "u32", "i64", "f32", "f64"}

describe("shared.array", function()
  it("is zero-filled, 1-based, f64 by default, with a length and a type", function()
    local a = shared.array(10)
    assert.equal(10, #a)
    assert.equal("f64", a.type)
    for i = 1, 10 do assert.equal(0, a[i]) end
    a[1], a[10] = 1.5, -2.25
    assert.equal(1.5, a[1])
    assert.equal(-2.25, a[10])
    for _, t in ipairs(ALL_TYPES) do
      local b = shared.array(3, t)
      assert.equal(t, b.type)
      b[2] = 7
      assert.same({0, 7, 0}, b:totable())
    end
  end)

  it("raises on an index out of range, naming the index and the length", function()
    local a = shared.array(4, "i32")
    for _, i in ipairs({0, 5, -1, 1.5, 2^63}) do
      local ok, err = pcall(function() return a[i] end)
      assert.is_false(ok)
      assert.matches("index", err)
      assert.matches("4", err)
      ok, err = pcall(function() a[i] = 1 end)
      assert.is_false(ok)
      assert.matches("index", err)
    end
    assert.matches("index 5 out of range %(array has 4 items%)", select(2, pcall(function() return a[5] end)))
    assert.matches("bad index %(number expected, got boolean%)", select(2, pcall(function() return a[true] end)))
    assert.matches("bad index %(number expected, got string%)", select(2, pcall(function() a.x = 1 end)))
    assert.is_nil(a.nosuchmethod)
  end)

  it("refuses values that do not fit the type, naming the index and the value", function()
    local cases = {
      {"i32", 3.5}, {"u8", 300}, {"u8", -1}, {"i8", 128}, {"i8", -129}, {"i16", 32768},
      {"u16", 65536}, {"i32", 2^31}, {"u32", 2^32}, {"u32", -1}, {"i64", 2^63},
      {"i64", 0/0}, {"i32", 1/0}, {"i32", -1/0}, {"u8", 0/0}, {"f32", 1e39}, {"i32", "5"},
      {"f64", "1"}, {"f64", true}, {"i64", {}},
    }
    for _, c in ipairs(cases) do
      local a = shared.array(3, c[1])
      local ok, err = pcall(function() a[2] = c[2] end)
      assert.is_false(ok, c[1] .. " took " .. tostring(c[2]))
      assert.matches("index 2", err)
      assert.equal(0, a[2])
    end
    local ok, err = pcall(function() shared.array(3, "u8")[2] = 300 end)
    assert.matches("300", err)
    assert.matches("u8", err)
  end)

  it("accepts every type's limits exactly", function()
    local limits = {
      i8 = {-128, 127}, u8 = {0, 255}, i16 = {-32768, 32767}, u16 = {0, 65535},
      i32 = {-2^31, 2^31 - 1}, u32 = {0, 2^32 - 1}, i64 = {-2^53, 2^53},
    }
    for t, lim in pairs(limits) do
      local a = shared.array(2, t)
      a[1], a[2] = lim[1], lim[2]
      assert.equal(lim[1], a[1])
      assert.equal(lim[2], a[2])
    end
    local f = shared.array(3, "f64")
    f[1], f[2], f[3] = 1/0, -1/0, 0/0
    assert.equal(1/0, f[1])
    assert.equal(-1/0, f[2])
    assert.is_true(f[3] ~= f[3])
    local g = shared.array(1, "f32")
    g[1] = 0.5
    assert.equal(0.5, g[1])
  end)

  it("keeps the full i64 range under Lua 5.4 and refuses inexact reads under LuaJIT", function()
    local a = shared.array(2, "i64")
    if math.type then
      a[1] = math.maxinteger
      a[2] = math.mininteger
      assert.equal(math.maxinteger, a[1])
      assert.equal(math.mininteger, a[2])
      assert.has_error(function() a:add(1, 1) end)
      assert.has_error(function() a:add(2, -1) end)
      a[2] = math.mininteger + 1
      assert.equal(math.mininteger, a:add(2, -1))
    else
      a[1] = 2^53
      assert.equal(2^53, a[1])
      local ok, err = pcall(function() a:add(1, 1) end)
      assert.is_false(ok)
      assert.matches("exact", err)
      assert.equal(2^53, a[1])
      a[2] = 2^60 -- past 2^53 but a double holds it exactly
      assert.equal(2^60 + 1024, a:add(2, 1024))
      assert.has_error(function() a:add(2, 1) end)
    end
  end)

  it("refuses bad sizes and type names clearly", function()
    for _, n in ipairs({0, -1, 1.5, 0/0, 1/0, 2^63}) do
      local ok, err = pcall(shared.array, n)
      assert.is_false(ok)
      assert.matches("shared.array", err)
    end
    assert.matches("unknown type 'u64'", select(2, pcall(shared.array, 3, "u64")))
    assert.matches("string expected", select(2, pcall(shared.array, 3, 5)))
    assert.matches("too large", select(2, pcall(shared.array, 2^50)))
    assert.matches("integer expected", select(2, pcall(shared.array, "x")))
  end)

  it("reports arena exhaustion and leaves nothing half-made", function()
    local out = support.run([[
      print(select(2, pcall(concur.shared.array, 600000, "f64")))
      local keep, err = {}
      for i = 1, 10 do
        local before = concur.memory()
        local ok, a = pcall(concur.shared.array, 131072, "f64")
        if not ok then err = a print(concur.memory() - before == 0) break end
        keep[i] = a
      end
      print(err)
      print(#keep, #concur.shared.array(1000))
    ]], "CONCUR_SHM=4M")
    assert.matches("600000 elements of f64 is too large %(the arena is 4 MiB", out)
    assert.matches("\ntrue\n", out)
    assert.matches("shared.array: shared memory exhausted", out)
    assert.matches("3\t1000", out)
  end)

  it("adds atomically and returns the new value, also for floats", function()
    local a = shared.array(2, "i32")
    assert.equal(5, a:add(1, 5))
    assert.equal(2, a:add(1, -3))
    local f = shared.array(1)
    assert.equal(0.5, f:add(1, 0.5))
    assert.equal(0.75, f:add(1, 0.25))
    local u = shared.array(1, "u8")
    u[1] = 250
    local ok, err = pcall(u.add, u, 1, 10)
    assert.is_false(ok)
    assert.matches("260", err)
    assert.equal(250, u[1])
    assert.has_error(function() a:add(1, 0.5) end)
    assert.has_error(function() a:add(3, 1) end)
  end)

  it("compares and swaps", function()
    local a = shared.array(1, "i64")
    local ok, old = a:cas(1, 0, 10)
    assert.is_true(ok)
    assert.equal(0, old)
    ok, old = a:cas(1, 0, 20)
    assert.is_false(ok)
    assert.equal(10, old)
    assert.equal(10, a[1])
    local f = shared.array(1, "f64")
    assert.is_true((f:cas(1, 0, 1.5)))
    assert.equal(1.5, f[1])
    assert.has_error(function() a:cas(1, 10, 0.5) end)
  end)

  it("fills, converts to a table, bulk-sets and sums over ranges", function()
    local a = shared.array(6, "i16")
    a:fill(2)
    assert.same({2, 2, 2, 2, 2, 2}, a:totable())
    a:fill(7, 2, 3)
    assert.same({2, 7, 7, 2, 2, 2}, a:totable())
    a:fill(1, 5)
    assert.same({2, 7, 7, 2, 1, 1}, a:totable())
    assert.same({7, 7}, a:totable(2, 3))
    assert.equal(20, a:sum())
    assert.equal(14, a:sum(2, 3))
    a:set({10, 20, 30})
    assert.same({10, 20, 30, 2, 1, 1}, a:totable())
    a:set({5, 6}, 4)
    assert.same({10, 20, 30, 5, 6, 1}, a:totable())
    assert.has_error(function() a:set({1, 2, 3}, 5) end)
    -- a bad value anywhere leaves the array as it was
    assert.has_error(function() a:set({1, 2, 0.5}) end)
    assert.same({10, 20, 30, 5, 6, 1}, a:totable())
    assert.has_error(function() a:fill(1e9) end)
    assert.has_error(function() a:totable(0) end)
    assert.has_error(function() a:sum(1, 7) end)
    assert.same({}, a:totable(4, 3))
    assert.has_error(function() a:fill("x", 4, 3) end)
    assert.equal(0, a:sum(4, 3))
    local f = shared.array(4)
    f:fill(0.25)
    assert.equal(1, f:sum())
  end)

  it("prints its type, length and first items", function()
    local a = shared.array(3, "u8")
    a[2] = 9
    assert.matches("^shared.array%(u8, 3%): {0, 9, 0}$", tostring(a))
    assert.matches("%.%.%.", tostring(shared.array(100)))
  end)

  it("checks its receiver", function()
    local a = shared.array(2)
    assert.has_error(function() a.add({}, 1, 1) end)
    assert.has_error(function() a.add(queue(), 1, 1) end)
    assert.has_error(function() a:add("x", 1) end)
    assert.has_error(function() a:add(1, "x") end)
  end)

  it("gives exactly 4 x 250,000 from four processes adding to one element", function()
    for _, t in ipairs({"i32", "u32", "i64", "f64"}) do
      local a = shared.array(4, t)
      local ps = {}
      for k = 1, 4 do
        ps[k] = process.spawn(function()
          for _ = 1, 250000 do a:add(2, 1) end
          return true
        end)
      end
      for k = 1, 4 do assert.is_true((ps[k]:join(60))) end
      assert.equal(1000000, a[2], t)
      assert.equal(0, a[1] + a[3] + a[4])
    end
  end)

  it("builds a histogram of 10^6 samples from 2 threads and 2 processes", function()
    local h = shared.array(100, "i64")
    local function work(hist, seed)
      local x = seed
      for _ = 1, 250000 do
        x = (x * 1103515245 + 12345) % 2147483648
        hist:add(x % 100 + 1, 1)
      end
      return true
    end
    local ws = {
      thread.new(work, h, 1), thread.new(work, h, 2),
      process.spawn(work, h, 3), process.spawn(work, h, 4),
    }
    for _, w in ipairs(ws) do assert.is_true((w:join(60))) end
    assert.equal(1000000, h:sum())
  end)

  it("counts with a cas loop from threads and processes", function()
    local a = shared.array(1, "i64")
    local function work(arr)
      for _ = 1, 20000 do
        repeat
          local v = arr[1]
        until arr:cas(1, v, v + 1)
      end
      return true
    end
    local ws = {thread.new(work, a), process.spawn(work, a), process.spawn(work, a)}
    for _, w in ipairs(ws) do assert.is_true((w:join(60))) end
    assert.equal(60000, a[1])
  end)

  it("travels by reference: arguments, upvalues, queue and pipe messages, list items", function()
    local a = shared.array(5, "i32")
    local q, l = queue(), shared.list()
    local r, w = pipe()
    q:put({arr = a})
    l:append(a)
    w:send(a)
    local t = thread.new(function(x) x[1] = 1 return true end, a)
    assert.is_true((t:join(10)))
    local p = process.spawn(function() a[2] = 2 return true end)
    assert.is_true((p:join(10)))
    p = process.spawn(function(qq) qq:get(5).arr[3] = 3 return true end, q)
    assert.is_true((p:join(10)))
    p = process.spawn(function(ll) ll[1][4] = 4 return true end, l)
    assert.is_true((p:join(10)))
    p = process.spawn(function() r:recv(5)[5] = 5 return true end)
    assert.is_true((p:join(10)))
    assert.same({1, 2, 3, 4, 5}, a:totable())
    assert.equal(a, l[1])
    -- a thread's upvalue and a dict value
    local d = shared.dict()
    d.arr = a
    t = thread.new(function(dd) dd.arr[1] = 10 a[2] = 20 return true end, d)
    assert.is_true((t:join(10)))
    p = process.spawn(function() d.arr[3] = 30 return true end)
    assert.is_true((p:join(10)))
    assert.same({10, 20, 30, 4, 5}, a:totable())
  end)

  it("has ptr() exactly when the FFI exists, typed as the elements", function()
    local ok, ffi = pcall(require, "ffi")
    local a = shared.array(4, "i32")
    if not ok then
      assert.is_nil(a.ptr)
      return
    end
    local p = a:ptr()
    p[0], p[3] = 7, -9
    assert.equal(7, a[1])
    assert.equal(-9, a[4])
    assert.is_true(ffi.istype("int32_t *", p))
    local f = shared.array(2, "f64"):ptr()
    assert.is_true(ffi.istype("double *", f))
    assert.matches("array:ptr: bad self %(array expected, got concur.queue%)",
      select(2, pcall(a.ptr, queue())))
  end)

  it("acts on the array a method is called with, not the one it was found on", function()
    local a, b = shared.array(3, "i64"), shared.array(5, "i64")
    local add, cas, sum = a.add, a.cas, a.sum
    assert.equal(4, add(b, 5, 4))
    assert.same({true, 4}, {cas(b, 5, 4, 6)})
    assert.equal(6, sum(b))
    assert.equal(0, a:sum())
    assert.equal(6, b[5])
  end)

  it("takes a store first, before any read, on a fresh handle", function()
    local a = shared.array(2, "i32")
    a[2] = 9
    assert.equal(9, a[2])
    assert.equal(9, a:add(2, 0))
    local ok, err = pcall(function() a[3] = 1 end)
    assert.is_false(ok)
    assert.matches("array:__newindex: index 3 out of range", err)
  end)

  it("refuses wrong receivers to its methods and metamethods with a clear error", function()
    local a = shared.array(2, "i64")
    local _ = a[1] -- the handle's own metatable is in place
    local others = {{}, 42, "s", true, print, io.stdout, concur.lock(), shared.value(), shared.list()}
    local fs = {}
    for k, f in pairs(getmetatable(a).__index) do if type(f) == "function" then fs[k] = f end end
    for _, k in ipairs{"__newindex", "__len", "__tostring"} do fs[k] = getmetatable(a)[k] end
    for name, f in pairs(fs) do
      if name ~= "ptr" then
        for _, r in ipairs(others) do
          local ok, err = pcall(f, r, 1, 1)
          assert.is_false(ok, name)
          assert.matches("array[:.][_%a]+: bad self %(array expected, got ", tostring(err))
        end
      end
    end
    assert.same({0, 0}, a:totable())
  end)

  it("answers nil for an unknown name and refuses a key that is neither name nor number", function()
    local a = shared.array(2)
    assert.is_nil(a.nosuch)
    assert.is_nil(a.nosuch) -- and again, through the handle's own table
    local ok, err = pcall(function() return a[true] end)
    assert.is_false(ok)
    assert.matches("array:__index: bad index %(number expected, got boolean%)", err)
    ok, err = pcall(function() return shared.array(1)[{}] end)
    assert.is_false(ok)
    assert.matches("bad index %(number expected, got table%)", err)
  end)

  it("keeps methods, elements, length and type on handles in other threads and processes", function()
    local a = shared.array(4, "i64")
    local _ = a[1]
    local t = thread.new(function(x) x:add(1, 1) x[2] = 5 return #x, x.type, x[2] end, a)
    assert.same({4, "i64", 5}, {t:join(10)})
    local p = process.spawn(function() a:add(1, 1) a[3] = 7 return #a, a.type, a:sum() end)
    assert.same({4, "i64", 14}, {p:join(10)})
    assert.same({2, 5, 7, 0}, a:totable())
    local q = queue()
    q:put(a)
    assert.is_true(rawequal(a, q:get()))
  end)

  it("compares equal to itself, prints, and reports its length after its first index", function()
    local a = shared.array(3, "u8")
    local b = a
    assert.equal(0, a[1])
    assert.is_true(a == b)
    assert.is_false(a == shared.array(3, "u8"))
    assert.equal(3, #a)
    assert.matches("^shared.array%(u8, 3%)", tostring(a))
    assert.equal("concur.array", getmetatable(a).__name)
  end)
end)

describe("shared.value", function()
  it("holds one number with get, set, add and cas", function()
    local v = shared.value()
    assert.equal("f64", v.type)
    assert.equal(0, v:get())
    v:set(2.5)
    assert.equal(3.5, v:add(1))
    local c = shared.value("i64", 10)
    assert.equal(10, c:get())
    assert.is_true((c:cas(10, 11)))
    local ok, old = c:cas(10, 12)
    assert.is_false(ok)
    assert.equal(11, old)
    assert.matches("^shared.value%(i64%): 11$", tostring(c))
    local b = shared.value("u8", 255)
    assert.has_error(function() b:add(1) end)
    local before = concur.memory()
    assert.has_error(function() shared.value("u8", 256) end)
    assert.has_error(function() shared.value("i32", 0.5) end)
    assert.is_true(concur.memory() <= before)
    assert.has_error(function() shared.value("x") end)
  end)

  it("counts to 10^6 from four processes", function()
    local v = shared.value("i64")
    local ps = {}
    for k = 1, 4 do
      ps[k] = process.spawn(function() for _ = 1, 250000 do v:add(1) end return true end)
    end
    for k = 1, 4 do assert.is_true((ps[k]:join(60))) end
    assert.equal(1000000, v:get())
  end)

  it("acts on the value a method is called with and refuses wrong receivers", function()
    local v, w = shared.value("i32", 1), shared.value("i32", 10)
    local add, get = v.add, v.get
    assert.equal(12, add(w, 2))
    assert.equal(12, get(w))
    assert.equal(1, v:get())
    assert.equal("i32", v.type)
    assert.is_nil(v.nosuch)
    for _, r in ipairs{{}, 1, shared.array(1), concur.lock()} do
      local ok, err = pcall(add, r, 1)
      assert.is_false(ok)
      assert.matches("value:add: bad self %(value expected, got ", tostring(err))
    end
  end)
end)

describe("examples/montecarlo.lua", function()
  it("estimates pi and fills a histogram that sums to the samples, joining every worker", function()
    local f = io.popen("timeout 60 " .. support.interp .. " examples/montecarlo.lua 40000 2>&1")
    local out = f:read("*a")
    f:close()
    local pi = tonumber(out:match("pi ~ ([%d.]+) from 40000 samples"))
    assert.is_truthy(pi, out)
    assert.is_true(pi > 3.0 and pi < 3.3, out)
    assert.matches("histogram: 40000 samples in 100 bins", out)
    for w = 1, 4 do assert.matches("worker " .. w .. " finished", out) end
  end)
end)
