-- queue: put/get/close/iter/batches, across threads and processes
local concur = require "concur"
local queue, process, thread = concur.queue, concur.process, concur.thread
local support = require "spec.support"

describe("queue", function()
  it("is first in, first out", function()
    local q = queue()
    for i = 1, 5 do assert.is_true(q:put(i)) end
    assert.equal(5, #q)
    for i = 1, 5 do assert.equal(i, q:get(1)) end
    assert.is_true(q:empty())
  end)

  it("is created by queue() and queue.new()", function()
    assert.equal(3, queue.new(3):maxsize())
    assert.is_nil(queue():maxsize())
    assert.has_error(function() queue(-1) end)
    assert.has_error(function() queue("big") end)
  end)

  it("carries any codec value, shared objects by reference", function()
    local q, inner = queue(), queue()
    q:put({a = {1, 2}, s = "x"})
    q:put(inner)
    q:put(false)
    assert.same({a = {1, 2}, s = "x"}, q:get(1))
    local got = q:get(1)
    assert.equal(inner, got)
    got:put("through")
    assert.equal("through", inner:get(1))
    assert.is_false(q:get(1))
  end)

  it("returns nil, 'timeout' when empty", function()
    local v, why = queue():get(0.01)
    assert.is_nil(v)
    assert.equal("timeout", why)
  end)

  it("blocks put on a full bounded queue until space or timeout", function()
    local q = queue(2)
    q:put(1)
    q:put(2)
    assert.is_true(q:full())
    local ok, why = q:put(3, 0.01)
    assert.is_nil(ok)
    assert.equal("timeout", why)
    local t = thread.new(function(qq) concur.sleep(0.05) return qq:get(5) end, q)
    assert.is_true(q:put(3, 5)) -- room made by the thread
    assert.equal(1, t:join(5))
    assert.equal(2, q:get(1))
    assert.equal(3, q:get(1))
  end)

  it("drains then reports closed; put on a closed queue is an error", function()
    local q = queue()
    q:put("last")
    q:close()
    assert.is_true(q:closed())
    assert.equal("last", q:get(1))
    local v, why = q:get(1)
    assert.is_nil(v)
    assert.equal("closed", why)
    local ok, err = pcall(q.put, q, 1)
    assert.is_false(ok)
    assert.matches("queue:put: the queue is closed", err)
  end)

  it("wakes blocked getters on close", function()
    local q = queue()
    local t = thread.new(function(qq) return qq:get(10) end, q)
    local p = process.spawn(function(qq) local v, why = qq:get(10) return why end, q)
    concur.sleep(0.05)
    q:close()
    assert.equal("closed", select(2, t:join(10)))
    assert.equal("closed", p:join(10))
  end)

  it("iterates until closed and drained", function()
    local q = queue()
    local p = process.spawn(function() for i = 1, 100 do q:put(i) end q:close() end)
    local sum, n = 0, 0
    for v in q:iter() do sum, n = sum + v, n + 1 end
    p:join(10)
    assert.equal(100, n)
    assert.equal(5050, sum)
  end)

  it("moves batches with put_many and get_many", function()
    local q = queue()
    local items = {}
    for i = 1, 1000 do items[i] = i end
    assert.equal(1000, q:put_many(items))
    local got = q:get_many(600, 1)
    assert.equal(600, #got)
    assert.equal(600, got[600])
    assert.equal(400, #q:get_many(1000, 1))
    assert.equal("timeout", select(2, q:get_many(10, 0.01)))
    q:close()
    assert.equal("closed", select(2, q:get_many(10, 1)))
  end)

  it("put_many into a bounded queue waits for room batch by batch", function()
    local q = queue(10)
    local p = process.spawn(function()
      local t = {}
      for i = 1, 100 do t[i] = i end
      return q:put_many(t, 10)
    end)
    local sum = 0
    for _ = 1, 100 do sum = sum + q:get(10) end
    assert.equal(100, p:join(10))
    assert.equal(5050, sum)
  end)

  it("moves 1,000,000 items from 4 producers to 3 consumers, none lost or duplicated", function()
    local q = queue(10000)
    local results = queue()
    local n, per = 1000000, 250000
    local producers, consumers = {}, {}
    for w = 0, 3 do
      local spawn = (w % 2 == 0) and process.spawn or thread.new
      producers[#producers + 1] = spawn(function(qq, base, count)
        local batch = {}
        for i = 1, count do
          batch[#batch + 1] = base + i
          if #batch == 500 then qq:put_many(batch) batch = {} end
        end
        if #batch > 0 then qq:put_many(batch) end
      end, q, w * per, per)
    end
    for c = 1, 3 do
      local spawn = (c == 2) and thread.new or process.spawn
      consumers[c] = spawn(function(qq, res)
        local count, sum = 0, 0
        while true do
          local got = qq:get_many(1000)
          if not got then break end
          for i = 1, #got do count, sum = count + 1, sum + got[i] end
        end
        res:put({count, sum})
      end, q, results)
    end
    for _, p in ipairs(producers) do p:join(120) end
    q:close()
    for _, c in ipairs(consumers) do c:join(120) end
    local count, sum = 0, 0
    for _ = 1, 3 do
      local r = results:get(10)
      count, sum = count + r[1], sum + r[2]
    end
    assert.equal(n, count)
    assert.equal(n * (n + 1) / 2, sum)
  end)

  it("stays consistent when a producer is killed in the middle of puts", function()
    local q = queue()
    local acked = queue()
    local p = process.spawn(function()
      local i = 0
      while true do
        i = i + 1
        q:put(i)
        acked:put(i)
      end
    end)
    concur.sleep(0.1)
    p:kill(9)
    pcall(p.join, p, 10)
    local last = 0
    while true do
      local v = acked:get(0)
      if not v then break end
      last = v
    end
    assert.is_true(last > 0)
    -- every acknowledged put is there, in order, and the queue still works
    for i = 1, last do assert.equal(i, q:get(1)) end
    q:put("after")
    local rest = {}
    while true do
      local v = q:get(0)
      if v == nil then break end
      rest[#rest + 1] = v
    end
    assert.equal("after", rest[#rest])
  end)

  it("stays consistent when a producer is killed in the middle of put_many", function()
    local q, acked = queue(), queue()
    local p = process.spawn(function()
      local b = 0
      while true do
        local batch = {}
        for i = 1, 1000 do batch[i] = b * 1000 + i end
        q:put_many(batch)
        b = b + 1
        acked:put(b)
      end
    end)
    assert.is_truthy(acked:get(10))
    concur.sleep(0.01)
    p:kill(9)
    pcall(p.join, p, 10)
    local last = 0
    while true do
      local v = acked:get(0)
      if not v then break end
      last = v
    end
    -- every acknowledged batch is there, whole and in order; after them at
    -- most a prefix of the batch it was putting; and the queue still works
    local n = 0
    while true do
      local got = q:get_many(10000, 0)
      if not got then break end
      for _, v in ipairs(got) do
        n = n + 1
        assert.equal(n, v)
      end
    end
    assert.is_true(n >= last * 1000)
    assert.is_true(n < (last + 2) * 1000)
    q:put("after")
    assert.equal("after", q:get(1))
  end)

  it("is usable after the thread that made it ended", function()
    local q = thread.new(function()
      local qq = require("concur").queue()
      qq:put("made in a thread")
      return qq
    end):join(10)
    assert.equal("made in a thread", q:get(1))
  end)

  it("carries edge scalars unchanged through put/get, put_many/get_many and iter", function()
    local big = string.rep("\0z", 40)
    local vals = {true, false, 0, -1, 1.5, -0.0, 1 / 0, -1 / 0, 2^53, 2^63, -2^63, 1e308, 5e-324,
                  "", "a\0b", string.rep("x", 51), string.rep("y", 52), big}
    if math.type then
      for _, v in ipairs{math.maxinteger, math.mininteger, math.tointeger(2^62), -math.tointeger(2^62), 127, 128, -64, -65} do
        vals[#vals + 1] = v
      end
    end
    local function same(a, b)
      assert.equal(type(a), type(b))
      if math.type then assert.equal(math.type(a), math.type(b)) end
      if a == 0 and b == 0 then assert.equal(1 / a, 1 / b) else assert.equal(a, b) end
    end
    local q = queue()
    for _, v in ipairs(vals) do q:put(v) end
    for _, v in ipairs(vals) do same(v, q:get(1)) end
    assert.equal(#vals, q:put_many(vals))
    local got = q:get_many(#vals, 1)
    for i, v in ipairs(vals) do same(v, got[i]) end
    q:put(0 / 0)
    local nan = q:get(1)
    assert.is_true(nan ~= nan)
    q:put(nil)
    assert.equal(1, select("#", q:get(1)))
    q:put_many{1, {2}, "three", q}
    got = q:get_many(4, 1)
    assert.equal(1, got[1])
    assert.same({2}, got[2])
    assert.equal("three", got[3])
    assert.equal(q, got[4])
    for _, v in ipairs(vals) do q:put(v) end
    q:close()
    local i = 0
    for v in q:iter() do i = i + 1 same(vals[i], v) end
    assert.equal(#vals, i)
  end)

  it("carries edge scalars to another process", function()
    local q, back = queue(), queue()
    local vals = {2^63, -0.0, "", "a\0b", 1 / 0, true, false, 12345678901}
    local p = process.spawn(function()
      for _ = 1, #vals do back:put(q:get(10)) end
    end)
    for _, v in ipairs(vals) do q:put(v) end
    for _, v in ipairs(vals) do
      local g = back:get(10)
      assert.equal(v, g)
      if math.type then assert.equal(math.type(v), math.type(g)) end
    end
    assert.equal(-math.huge, 1 / vals[2])
    p:join(10)
  end)

  it("wakes each of several sleeping getters as items arrive one at a time", function()
    local q, ready = queue(), queue()
    local ts = {}
    for k = 1, 3 do
      ts[k] = thread.new(function(qq, rr)
        rr:put(true)
        return qq:get(10)
      end, q, ready)
    end
    for _ = 1, 3 do ready:get(10) end
    concur.sleep(0.05) -- all three asleep in get
    local t0 = concur.clock()
    for i = 1, 3 do q:put(i) end
    local sum = 0
    for k = 1, 3 do sum = sum + ts[k]:join(10) end
    assert.equal(6, sum)
    assert.is_true(concur.clock() - t0 < 5) -- not one of them slept to its timeout
  end)

  it("wakes a sleeping getter when put_many runs out of shared memory part way", function()
    local out = support.run([[
      local q = concur.queue()
      local t = concur.thread.new(function(qq)
        local t0 = concur.clock()
        local v = qq:get(3)
        return v and #v or "nothing", concur.clock() - t0
      end, q)
      concur.sleep(0.2) -- the getter is asleep
      local s = string.rep("x", 100000)
      local batch = {}
      for i = 1, 100 do batch[i] = s end
      local put = q:put_many(batch)
      local n, waited = t:join(10)
      print(put > 0 and put < 100, n, waited < 2.5)
    ]], "CONCUR_SHM=2M", 30)
    assert.matches("true\t100000\ttrue", out)
  end)

  it("keeps every method on a queue in heavy use, acting on the queue it is given", function()
    -- after 64 calls a handle gets methods bound to it (bindings/queue.c)
    local q, r = queue(), queue()
    for i = 1, 200 do q:put(i); assert.equal(i, q:get()) end
    for i = 1, 200 do r:put(i); r:get() end
    assert.is_true(q:put("x"))
    assert.equal(1, #q)
    assert.equal(1, q:len())
    assert.is_false(q:empty())
    assert.matches("^queue: ", tostring(q))
    -- a bound method called with another queue acts on that one
    assert.is_true(q.put(r, "for r"))
    assert.equal("for r", r:get(1))
    assert.equal("x", q.get(q, 1))
    -- and refuses what is not a queue, as before
    assert.has_error(function() q.put({}, 1) end, "queue:put: bad self (queue expected, got table)")
    assert.has_error(function() q.get(concur.lock()) end, "queue:get: bad self (queue expected, got concur.lock)")
    -- the handle still travels by reference to threads and processes
    q:put(41)
    local t = thread.new(function(qq) qq:put(qq:get() + 1) end, q)
    t:join(10)
    local p = process.spawn(function(qq) qq:put(qq:get() + 1) end, q)
    p:join(10)
    assert.equal(43, q:get(1))
    q:close()
    assert.is_true(q:closed())
    local fresh = queue() -- the type's own methods are untouched
    assert.is_true(fresh:put(1))
    assert.equal(1, fresh:get(1))
  end)

  it("rejects bad input", function()
    local q = queue()
    assert.has_error(function() q.put(nil, 1) end)
    assert.has_error(function() q:put() end)
    assert.has_error(function() q:put(1, -1) end)
    assert.has_error(function() q:get("soon") end)
    assert.has_error(function() q:put(coroutine.create(print)) end)
    assert.has_error(function() q:put_many("x") end)
    assert.has_error(function() q:get_many(0) end)
    assert.has_error(function() queue.get({}, 1) end)
  end)

  it("does not grow shared memory over 10k create/drop cycles", function()
    local function cycle()
      for _ = 1, 10000 do
        local q = queue()
        q:put({1, 2, 3})
      end
      collectgarbage()
      collectgarbage()
    end
    cycle()
    local before = concur.memory()
    cycle()
    assert.is_true(concur.memory() - before < 64 * 1024)
  end)

  it("reports arena exhaustion clearly and stays usable", function()
    local f = io.popen("CONCUR_SHM=2M build/concur -e 'local q = queue() local s = string.rep(\"x\", 100000) local ok, err = pcall(function() for i = 1, 1000 do q:put(s) end end) print(err) print(q:get() == s)' 2>&1")
    if not io.open("build/concur") then pending("build/concur not built") return end
    local out = f:read("*a")
    f:close()
    assert.matches("queue:put: shared memory exhausted %([%d.]+ MiB in use of 2.0 MiB; set CONCUR_SHM%)", out)
    assert.matches("true", out)
  end)
end)

describe("queue task_done and join", function()
  it("join returns true at once when every item was marked done", function()
    local q = queue()
    assert.is_true(q:join(0))
    q:put(1)
    q:put_many({2, 3})
    q:get(1)
    q:task_done()
    q:get(1)
    q:get(1)
    q:task_done()
    local ok, why = q:join(0.02)
    assert.is_nil(ok)
    assert.equal("timeout", why)
    q:task_done()
    assert.is_true(q:join(0))
  end)

  it("refuses task_done more times than items were put", function()
    local q = queue()
    local ok, err = pcall(q.task_done, q)
    assert.is_false(ok)
    assert.matches("queue:task_done: called more times than items were put", err)
    q:put("x")
    q:get(1)
    q:task_done()
    assert.has_error(function() q:task_done() end)
    assert.is_true(q:join(0))
    assert.has_error(function() q:join(-1) end)
    assert.has_error(function() q:join("soon") end)
  end)

  it("joins across processes: three consumers mark 60 items done", function()
    local q, results = queue(), queue()
    local consumers = {}
    for k = 1, 3 do
      consumers[k] = process.spawn(function()
        for item in q:iter() do
          results:put(item * 2)
          q:task_done()
        end
        return k
      end)
    end
    for i = 1, 60 do q:put(i) end
    assert.is_true(q:join(20))
    assert.equal(60, #results)
    q:close()
    for k = 1, 3 do assert.equal(k, consumers[k]:join(20)) end
    local sum = 0
    for v in function() return results:get(0) end do sum = sum + v end
    assert.equal(3660, sum)
  end)

  it("wakes a joining thread when a process marks the last item done", function()
    local q = queue()
    q:put("job")
    local t = thread.new(function(qq) return qq:join(20) end, q)
    local p = process.spawn(function() q:get(5) concur.sleep(0.05) q:task_done() return true end)
    assert.is_true(t:join(20))
    assert.is_true(p:join(20))
  end)
end)
