-- Integrity under re-entry, untrusted input, infinite timeouts, refused
-- batches and arena pressure (issue 8: items 5, 7, 9, 10, 11, 16).
local concur = require "concur"
local S = dofile("spec/support.lua")
local queue, thread, process, shared, lock, pipe = concur.queue, concur.thread, concur.process,
  concur.shared, concur.lock, concur.pipe

local function garbage_with(n, fn)
  for _ = 1, n do S.finalizer(fn) end
end

describe("re-entrant use of concur from finalizers and require", function()
  it("does not lose a message being decoded when a finalizer uses a queue", function()
    local q, side = queue(), queue()
    local big = {}
    for i = 1, 100000 do big[i] = "item" .. i end
    for round = 1, 3 do
      q:put(big)
      garbage_with(50, function() side:put(string.rep("x", 3 * 1048576)); side:get() end)
      local ok, got = pcall(q.get, q)
      assert.is_true(ok, got)
      assert.equal(100000, #got)
      assert.equal("item77777", got[77777])
    end
  end)

  it("does not corrupt a message being encoded when a finalizer encodes", function()
    -- in a fresh interpreter: a small heap collects often, so finalizers
    -- run in the middle of the encoder's allocations
    local out, status = S.run([[
      local S = dofile("spec/support.lua")
      local q, side = concur.queue(), concur.queue()
      local inner = concur.shared.list()
      local bad = 0
      for round = 1, 20 do
        local big = {}
        for i = 1, 20000 do big[i] = {i, tostring(i)} end
        big.list = concur.shared.list()
        for _ = 1, 2000 do
          S.finalizer(function() side:put({inner, {inner}, string.rep("y", 100)}); side:get() end)
        end
        assert(q:put(big))
        local ok, got = pcall(q.get, q)
        if not ok or #got ~= 20000 or got.list ~= big.list or got[12345][2] ~= "12345" then
          bad = bad + 1
          print(ok, got)
        end
      end
      print("bad", bad)
    ]], "", 60)
    assert.equal(0, status, out)
    assert.matches("bad%s+0", out)
  end)

  it("survives the same under the generational collector (Lua 5.4)", function()
    if S.luajit then pending("LuaJIT has one collector") return end
    local out, status = S.run([[
      collectgarbage("generational")
      local S = dofile("spec/support.lua")
      local q, side = concur.queue(), concur.queue()
      local big = {}
      for i = 1, 100000 do big[i] = "item" .. i end
      for round = 1, 3 do
        q:put(big)
        for _ = 1, 100 do S.finalizer(function() side:put(string.rep("x", 1 << 20)); side:get() end) end
        local got = q:get()
        assert(#got == 100000 and got[77777] == "item77777")
      end
      print("ok")
    ]], "", 60)
    assert.equal(0, status, out)
    assert.matches("ok", out)
  end)

  it("decodes a message whose module's top level uses a queue", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/ccreentry.lua", "w"))
    f:write([[
      local concur = require "concur"
      local q = concur.queue()
      q:put(string.rep("m", 200000)); q:get()
      return {answer = 42}
    ]])
    f:close()
    local old = package.path
    package.path = dir .. "/?.lua;" .. package.path
    local M = require "ccreentry"
    local q = queue()
    q:put({M, string.rep("z", 100000), 7})
    local t = thread.new(function(qq)
      local v = qq:get(5)
      return v[1].answer, #v[2], v[3]
    end, q)
    local a, b, c = t:join(10)
    package.path = old
    package.loaded.ccreentry = nil
    os.execute("rm -rf " .. dir)
    assert.equal(42, a)
    assert.equal(100000, b)
    assert.equal(7, c)
  end)
end)

describe("scratch buffers after an error", function()
  it("keep a key and its value apart in a deeper frame", function()
    local d = shared.dict()
    for _ = 1, 3 do
      assert.is_false(pcall(d.get, d, {})) -- raises holding both buffers
      pcall(function() pcall(function() pcall(function() d[5] = 7 end) end) end)
      assert.equal(7, d[5])
      assert.equal(1, #d)
      assert.is_false(pcall(d.set, d, {}, 1))
      local p = process.spawn(function(dd) for i = 1, 100 do dd[1000 + i] = i end return true end, d)
      assert.is_true(p:join(10))
      assert.equal(100, d[1100])
      assert.equal(101, #d)
      d:clear()
    end
  end)
end)

describe("concur.decode on untrusted bytes", function()
  it("refuses functions, C functions and module names unless trusted", function()
    local s = concur.encode(function() return 1 end)
    local ok, err = pcall(concur.decode, s)
    assert.is_false(ok)
    assert.matches("concur.decode: .*function", err)
    local fn = concur.decode(s, {trust = true})
    assert.equal(1, fn())
    assert.has_error(function() concur.decode(concur.encode(string.format)) end)
    assert.has_error(function() concur.decode(concur.encode(string)) end)
    assert.equal(string.format, concur.decode(concur.encode(string.format), {trust = true}))
    -- plain data still decodes
    local t = concur.decode(concur.encode({1, "a", {b = true}}))
    assert.equal("a", t[2])
    assert.is_true(t[3].b)
  end)

  it("refuses a metatable __gc planted in the bytes", function()
    local s = concur.encode(setmetatable({}, {__gc = function() end}))
    assert.has_error(function() concur.decode(s) end)
  end)
end)

describe("infinite timeouts", function()
  local function cpu(fn)
    local c0, w0 = os.clock(), concur.clock()
    fn()
    return os.clock() - c0, concur.clock() - w0
  end

  for _, inf in ipairs{math.huge, 1e300} do
    it("wait forever at no CPU with a timeout of " .. tostring(inf), function()
      local l, held = lock(), lock.event()
      local t = thread.new(function(ll, h) ll:acquire() h:set() concur.sleep(0.3) ll:release() end, l, held)
      assert.is_true(held:wait(5))
      local used, took = cpu(function() assert.is_true(l:acquire(inf)) end)
      t:join()
      assert.is_true(took >= 0.2)
      assert.is_true(used < 0.15, "lock:acquire spun: " .. used .. " s of CPU")
      l:release()

      local q = queue()
      local p = thread.new(function(qq) concur.sleep(0.2) qq:put("late") end, q)
      used = cpu(function() assert.equal("late", q:get(inf)) end)
      assert.is_true(used < 0.15, "queue:get spun")
      q:put("again")
      assert.equal(q, concur.wait({q}, inf)[1])
      assert.equal("again", q:get(inf))
      p:join(inf)

      local e = lock.event()
      thread.new(function(ee) concur.sleep(0.2) ee:set() end, e):join(inf)
      assert.is_true(e:wait(inf))

      local s = lock.semaphore(0)
      local st = thread.new(function(ss) concur.sleep(0.1) ss:release() end, s)
      assert.is_true(s:acquire(inf))
      st:join(inf)

      local b = lock.barrier(2)
      local bt = thread.new(function(bb) concur.sleep(0.1) return bb:wait(inf) end, b)
      assert.is_number(b:wait(inf))
      assert.is_number(bt:join(inf))

      local c = lock.condition()
      local ct = thread.new(function(cc) concur.sleep(0.2) cc:acquire() cc:notify() cc:release() end, c)
      c:acquire()
      local woke
      used, took = cpu(function() woke = c:wait(inf) end)
      c:release()
      ct:join(inf)
      assert.is_true(woke, "condition:wait returned false at once")
      assert.is_true(took >= 0.1)

      local a, bb = pipe()
      thread.new(function(x) concur.sleep(0.1) x:send(5) end, a):join(inf)
      assert.equal(5, bb:recv(inf))
    end)

    it("sleeps forever with concur.sleep(" .. tostring(inf) .. ") in the main state", function()
      local src = inf == math.huge and "math.huge" or "1e300"
      local out, status, timedout = S.run("concur.sleep(" .. src .. ") print('returned')", "", 1)
      assert.is_true(timedout, "returned at once: " .. out)
    end)

    it("sleeps forever with concur.sleep(" .. tostring(inf) .. ") until cancelled", function()
      local t = thread.new(function(x) concur.sleep(x) return "woke" end, inf)
      concur.sleep(0.3)
      assert.is_true(t:alive())
      t:cancel()
      local v, why = t:join(5)
      assert.is_nil(v)
      assert.equal("cancelled", why)
    end)
  end

  it("refuses a NaN timeout", function()
    assert.has_error(function() queue():get(0 / 0) end)
    assert.has_error(function() concur.sleep(0 / 0) end)
  end)
end)

describe("refused batches", function()
  local function settle()
    collectgarbage()
    collectgarbage()
    return (concur.memory())
  end

  it("give back what they had encoded (put_many, extend, shared.list)", function()
    local q = queue()
    local base = settle()
    for _ = 1, 5 do
      local big = shared.list()
      big:extend({string.rep("a", 1048576), string.rep("b", 1048576), string.rep("c", 1048576)})
      assert.has_error(function() q:put_many({big, coroutine.create(print)}) end)
      local l = shared.list()
      assert.has_error(function() l:extend({big, big, coroutine.create(print)}) end)
      assert.has_error(function() shared.list({big, print == nil, coroutine.create(print)}) end)
      assert.equal(0, #l)
      assert.equal(0, #q)
    end
    local after = settle()
    assert.is_true(after - base < 64 * 1024, "held " .. (after - base) .. " bytes")
  end)

  it("get_many releases the items after one that cannot be decoded", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/ccgone.lua", "w"))
    f:write("return {}")
    f:close()
    local q = queue()
    local base = settle()
    -- a thread whose first encode sees the module loaded: it travels by name
    local p = thread.new(function(qq, d)
      package.path = d .. "/?.lua;" .. package.path
      local M = require "ccgone"
      local big = concur.shared.list({string.rep("x", 1048576), string.rep("y", 1048576)})
      qq:put_many({1, M, big, big, 5})
      return true
    end, q, dir)
    assert.is_true(p:join(10))
    os.execute("rm -rf " .. dir)
    assert.has_error(function() q:get_many(10) end)
    local after = settle()
    assert.is_true(after - base < 256 * 1024, "held " .. (after - base) .. " bytes")
  end)
end)

describe("arena pressure and the garbage collector", function()
  it("collects dropped pipes and queues before reporting exhaustion", function()
    local out, status = S.run([[
      for i = 1, 3000 do local a, b = concur.pipe() end
      for i = 1, 20000 do local q = concur.queue(); q:put(i) end
      print("done", concur.memory() < 32 * 1024 * 1024)
    ]], "CONCUR_SHM=32M", 60)
    assert.equal(0, status, out)
    assert.matches("done%s+true", out)
  end)

  it("reports exhaustion with honest figures", function()
    local out = S.run([[
      local q = concur.queue()
      local s = string.rep("x", 100000)
      local ok, err = pcall(function() for i = 1, 1000 do q:put(s) end end)
      print(err)
    ]], "CONCUR_SHM=2M")
    assert.matches("queue:put: shared memory exhausted %([%d.]+ MiB in use of 2.0 MiB; set CONCUR_SHM%)", out)
    assert.not_matches("concur: concur:", out)
  end)

  it("refuses a CONCUR_SHM it cannot read", function()
    for _, bad in ipairs{"5X", "12MB", "-1", "abc", "1e400", "0"} do
      local out, status = S.run("print(concur.memory())", "CONCUR_SHM=" .. bad)
      assert.is_true(status ~= 0, bad .. " was accepted: " .. out)
      assert.matches("CONCUR_SHM", out)
      assert.not_matches("concur: concur:", out)
    end
    local out, status = S.run("local used, size = concur.memory() print(size)", "CONCUR_SHM=3M")
    assert.equal(0, status, out)
    assert.matches("^3145728", out)
  end)
end)

describe("reference cycles between shared objects", function()
  it("are broken by clear(), which gives the memory back", function()
    collectgarbage()
    collectgarbage()
    local base = concur.memory()
    for _ = 1, 50 do
      local a, b = shared.list(), shared.list()
      a:append(b)
      b:append(a)
      a:append(string.rep("p", 100000))
      a:clear() -- documented way out: without it the pair outlives its handles
    end
    collectgarbage()
    collectgarbage()
    local after = concur.memory()
    assert.is_true(after - base < 64 * 1024, "held " .. (after - base) .. " bytes")
  end)
end)

describe("concur.interrupted", function()
  it("recognises the error a cancel raises, in a loop that catches errors", function()
    local q = queue()
    local t = thread.new(function(qq)
      local caught = 0
      while true do
        local ok, err = pcall(qq.get, qq) -- blocks until cancelled
        if not ok then
          if concur.interrupted(err) then return "stopped", caught, err end
          caught = caught + 1
        end
      end
    end, q)
    concur.sleep(0.2)
    t:cancel()
    local what, caught, err = t:join(5)
    assert.equal("stopped", what)
    assert.equal(0, caught)
    assert.matches("interrupted", err)
    assert.is_true(concur.interrupted("x.lua:3: thread cancelled"))
    assert.is_true(concur.interrupted("interrupted!\nstack traceback:\n..."))
    assert.is_false(concur.interrupted("queue:get: the queue is closed"))
    assert.is_false(concur.interrupted({}))
    assert.is_false(concur.interrupted(nil))
  end)
end)

describe("join of a handle held nowhere else", function()
  it("keeps the record alive while its results are decoded", function()
    if not S.luajit then collectgarbage("incremental", 10, 400) end -- collect often
    for _ = 1, 100 do
      local t = thread.new(function(n)
        local r = {}
        for j = 1, n do r[j] = {j, tostring(j)} end
        return r
      end, 50):join(10)
      assert.equal(50, #t)
      assert.equal("50", t[50][2])
    end
    for _ = 1, 20 do
      local r = process.spawn(function() local r = {} for j = 1, 50 do r[j] = {j} end return r end):join(10)
      assert.equal(50, r[50][1])
    end
    if not S.luajit then collectgarbage("incremental", 200, 100) end
  end)
end)

describe("locks dropped while held", function()
  it("are released before they are freed (no freed mutex left on a robust list)", function()
    collectgarbage()
    collectgarbage()
    local base = concur.memory()
    for _ = 1, 10 do -- TSan tracks at most 64 locks held at once
      local l, r = lock(), lock.rlock()
      l:acquire()
      r:acquire()
      r:acquire()
      local c = lock.condition()
      c:acquire()
    end
    collectgarbage()
    collectgarbage()
    assert.equal(base, (concur.memory()))
    local a = lock() -- the thread's robust list is still sound
    assert.is_true(a:acquire(1))
    a:release()
  end)
end)

describe("argument errors", function()
  it("queue.new refuses a table", function()
    assert.has_error(function() queue.new({}) end)
    assert.has_error(function() queue({}) end)
    assert.equal(3, queue.new(3):maxsize())
    assert.equal(3, queue(3):maxsize())
  end)

  it("name the function on both VMs", function()
    local cases = {
      {function() queue():put_many(5) end, "queue:put_many: bad argument #1 %(table expected, got number%)"},
      {function() shared.list():extend("x") end, "list:extend: bad argument #1 %(table expected, got string%)"},
      {function() shared.list(5) end, "shared.list: bad argument #1 %(table expected, got number%)"},
      {function() shared.dict(true) end, "shared.dict: bad argument #1 %(table expected, got boolean%)"},
      {function() concur.wait(1) end, "concur.wait: bad argument #1 %(table expected, got number%)"},
      {function() concur.decode({}) end, "concur.decode: bad argument #1 %(string expected, got table%)"},
      {function() concur.sleep("x") end, "concur.sleep: bad argument #1"},
      {function() lock.semaphore(1):release({}) end, "semaphore:release: bad argument #1 %(integer expected, got table%)"},
      {function() lock.semaphore("x") end, "lock.semaphore: bad argument #1 %(integer expected, got string%)"},
      {function() lock.barrier({}) end, "lock.barrier: bad argument #1 %(integer expected, got table%)"},
      {function() lock():with(5) end, "lock:with: bad argument #1 %(function expected, got number%)"},
      {function() concur.primes.count({}, 1) end, "primes.count: bad argument #1 %(integer expected, got table%)"},
      {function() concur.primes.is_prime(1.5) end, "primes.is_prime: bad argument #1 %(number has no integer representation%)"},
      {function() pipe.new(5) end, "pipe.new: bad argument #1"},
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(c[1])
      assert.is_false(ok)
      assert.matches(c[2], err)
      assert.not_matches("'%?'", err)
    end
  end)

  it("list:remove names a bad index", function()
    local l = shared.list({1, 2})
    local ok, err = pcall(l.remove, l, "x")
    assert.is_false(ok)
    assert.matches("list:remove: bad argument #1 %(integer expected, got string%)", err)
    ok, err = pcall(l.remove, l, 5)
    assert.matches("list:remove: index 5 out of range %(list has 2 items%)", err)
  end)
end)
