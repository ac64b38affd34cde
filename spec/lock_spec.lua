-- lock, rlock, semaphore, event, condition, barrier: across threads and processes
local concur = require "concur"
local lock, process, thread, queue = concur.lock, concur.process, concur.thread, concur.queue

describe("lock", function()
  it("is created by lock() and lock.new()", function()
    assert.is_false(lock():locked())
    assert.is_false(lock.new():locked())
  end)

  it("acquires, reports locked, and times out when held", function()
    local m = lock()
    assert.is_true(m:acquire())
    assert.is_true(m:locked())
    assert.is_false(m:acquire(0.01))
    m:release()
    assert.is_false(m:locked())
  end)

  it("refuses a release by a thread that does not hold it", function()
    local m = lock()
    local ok, err = pcall(m.release, m)
    assert.is_false(ok)
    assert.matches("lock:release: lock not held by this thread", err)
    m:acquire()
    local t = thread.new(function(mm) return pcall(mm.release, mm) end, m)
    assert.is_false(t:join(10))
    m:release()
  end)

  it("runs a function holding it with with(), releasing on error too", function()
    local m = lock()
    assert.equal(42, m:with(function(a, b) return a * b end, 6, 7))
    assert.is_false(m:locked())
    local ok, err = pcall(m.with, m, function() error("inside") end)
    assert.is_false(ok)
    assert.matches("inside", err)
    assert.is_false(m:locked())
  end)

  it("excludes other processes and threads", function()
    local m = lock()
    local counter = queue()
    counter:put(0)
    local workers = {}
    for i = 1, 4 do
      local spawn = (i % 2 == 0) and thread.new or process.spawn
      workers[i] = spawn(function(mm, c)
        for _ = 1, 500 do
          mm:acquire()
          local v = c:get(1) -- read-modify-write that only the lock makes safe
          c:put(v + 1)
          mm:release()
        end
      end, m, counter)
    end
    for _, w in ipairs(workers) do w:join(60) end
    assert.equal(2000, counter:get(1))
  end)

  it("hands a lock whose holder process was killed to the next acquirer", function()
    local m = lock()
    local held = lock.event()
    local p = process.spawn(function() m:acquire() held:set() concur.sleep(30) end)
    assert.is_true(held:wait(10))
    p:kill(9)
    pcall(p.join, p, 10)
    local ok, why = m:acquire(5)
    assert.is_true(ok)
    assert.equal("owner died", why)
    m:release()
    assert.is_true(m:acquire(1)) -- and it is an ordinary lock again
    m:release()
  end)

  it("hands over a lock whose holder thread ended without releasing", function()
    local m = lock()
    thread.new(function(mm) mm:acquire() end, m):join(10)
    local ok, why = m:acquire(5)
    assert.is_true(ok)
    assert.equal("owner died", why)
    m:release()
  end)

  -- An OS thread runs one thread.new after another; one whose thread
  -- ended holding a lock must end too, or the next thread there would be
  -- taken for the holder (an rlock would just let it in)
  it("hands over an rlock or lock whose holder thread ended, to threads started after it too", function()
    for _, make in ipairs({ lock, lock.rlock }) do
      for _ = 1, 5 do
        local m = make()
        thread.new(function(mm) mm:acquire() mm:acquire(0) end, m):join(10)
        local results = {}
        for k = 1, 4 do
          results[k] = { thread.new(function(mm) return mm:acquire(5) end, m):join(10) }
          if results[k][1] then break end
        end
        local first = results[1]
        assert.is_true(first[1], "the next thread did not get it")
        assert.equal("owner died", first[2])
      end
    end
  end)

  it("keeps lines whole when processes print under it", function()
    local path = os.tmpname()
    local m = lock()
    local ps = {}
    for i = 1, 4 do
      ps[i] = process.spawn(function()
        local f = io.open(path, "a")
        f:setvbuf("no")
        for k = 1, 200 do
          m:with(function()
            -- three writes per line: without the lock, lines would interleave
            f:write("worker ", i)
            f:write(" line ", k)
            f:write(" end\n")
          end)
        end
        f:close()
      end)
    end
    for _, p in ipairs(ps) do p:join(60) end
    local n = 0
    for line in io.lines(path) do
      n = n + 1
      assert.truthy(line:match("^worker %d line %d+ end$"), line)
    end
    os.remove(path)
    assert.equal(800, n)
  end)

  it("releases at the end of a <close> scope (Lua 5.4)", function()
    if type(jit) == "table" or _VERSION ~= "Lua 5.4" then pending("needs Lua 5.4's <close>") return end
    local m = lock()
    local f = load([[local m = ...; do local held <close> = m; m:acquire() end; return m:locked()]])
    assert.is_false(f(m))
  end)

  it("rejects bad input", function()
    local m = lock()
    assert.has_error(function() m:acquire(-1) end)
    assert.has_error(function() m:acquire("x") end)
    assert.has_error(function() m.acquire(queue()) end)
    assert.has_error(function() m.acquire(nil) end)
    assert.has_error(function() m:with("not a function") end)
  end)

  it("wakes a waiter already asleep with \"owner died\" when the holder process is killed", function()
    local m = lock()
    local held = lock.event()
    local holder = process.spawn(function() m:acquire() held:set() concur.sleep(30) end)
    assert.is_true(held:wait(10))
    -- the killer waits until this process is asleep in acquire (the lock is
    -- held, so it is) and kills the holder; acquire's own timeout bounds it
    local pid = holder.pid
    local killer = process.spawn(function()
      concur.sleep(0.3)
      process.run{"kill", "-9", tostring(pid)}
    end)
    local t0 = concur.clock()
    local ok, why = m:acquire(10)
    assert.is_true(ok)
    assert.equal("owner died", why)
    assert.is_true(concur.clock() - t0 < 9)
    m:release()
    killer:join(10)
    pcall(holder.join, holder, 10)
  end)

  it("sees a dead holder at once with a zero timeout", function()
    local m = lock()
    local p = process.spawn(function() m:acquire() end)
    p:join(10)
    local ok, why = m:acquire(0)
    assert.is_true(ok)
    assert.equal("owner died", why)
    m:release()
  end)

  it("counts a killed holder that nobody has reaped yet as dead", function()
    local m = lock()
    local held = lock.event()
    local p = process.spawn(function() m:acquire() held:set() concur.sleep(30) end)
    assert.is_true(held:wait(10))
    p:kill(9)
    -- not joined: the holder is a zombie until p:join below
    local ok, why = m:acquire(5)
    assert.is_true(ok)
    assert.equal("owner died", why)
    m:release()
    pcall(p.join, p, 10)
  end)

  it("hands a lock over many times between processes, never to two holders at once", function()
    local m = lock()
    local inside = concur.shared.array(1, "i64")
    local bad = concur.shared.array(1, "i64")
    local ps = {}
    for k = 1, 3 do
      ps[k] = process.spawn(function()
        for _ = 1, 3000 do
          m:acquire()
          if inside:add(1, 1) ~= 1 then bad:add(1, 1) end
          inside:add(1, -1)
          m:release()
        end
      end)
    end
    for _, p in ipairs(ps) do p:join(60) end
    assert.equal(0, bad[1])
    assert.is_false(m:locked())
  end)

  it("acts on the lock a method is called with, also once its handle is hot", function()
    local a, b = lock(), lock.rlock()
    for _ = 1, 200 do a:acquire() a:release() end -- hot: its methods are bound to it
    local acquire, release, locked = a.acquire, a.release, a.locked
    assert.is_true(acquire(b))
    assert.is_true(locked(b))
    assert.is_false(locked(a))
    assert.is_false(a:locked())
    release(b)
    assert.is_false(b:locked())
    local c = lock.condition(a)
    assert.is_true(acquire(c))
    assert.is_true(a:locked())
    release(c)
    assert.is_false(a:locked())
  end)

  it("refuses wrong receivers to a hot lock's methods with a clear error", function()
    local a = lock()
    for _ = 1, 200 do a:acquire() a:release() end
    local others = {{}, 42, "s", true, print, io.stdout, concur.queue(), concur.shared.array(2)}
    for _, name in ipairs{"acquire", "release", "locked", "with"} do
      for _, r in ipairs(others) do
        local ok, err = pcall(a[name], r, function() end)
        assert.is_false(ok)
        assert.matches("lock:" .. name .. ": bad self %(lock expected, got ", tostring(err))
      end
    end
    assert.is_false(a:locked())
  end)

  it("says bad self, naming the lock type and what it got, for a wrong receiver", function()
    local a, q = lock(), concur.queue()
    for _, name in ipairs{"acquire", "release", "locked", "with"} do
      local ok, err = pcall(a[name], q, function() end)
      assert.is_false(ok)
      assert.matches("lock:" .. name .. ": bad self %(lock expected, got concur.queue%)", err)
    end
    local ok, err = pcall(lock.condition, lock.semaphore(1))
    assert.is_false(ok)
    assert.matches("lock.condition: bad argument #1 %(lock expected, got concur.semaphore%)", err)
  end)

  it("refuses, through the type's methods, a proxy given a copy of a bound lock's metatable", function()
    local a = lock()
    local methods = getmetatable(a).__index
    for _ = 1, 200 do a:acquire() a:release() end -- a is bound: a metatable of its own
    assert.is_true(methods.acquire(a)) -- the type's methods still take it
    methods.release(a)
    if not newproxy then return end -- LuaJIT only
    local px = newproxy(true)
    for k, v in pairs(getmetatable(a)) do -- but __gc: a finalizer would raise
      if k ~= "__gc" then getmetatable(px)[k] = v end
    end
    local ok, err = pcall(methods.acquire, px)
    assert.is_false(ok)
    assert.matches("lock:acquire: bad self %(", err)
    assert.is_false(a:locked())
  end)

  it("keeps tostring, ==, __close and the type name on a hot handle", function()
    local a = lock()
    for _ = 1, 200 do a:acquire() a:release() end
    assert.matches("^concur.lock: ", tostring(a))
    assert.is_true(a == a)
    assert.is_false(a == lock())
    assert.equal("concur.lock", getmetatable(a).__name)
    a:acquire()
    getmetatable(a).__close(a)
    assert.is_false(a:locked())
    local q = concur.queue()
    q:put(a)
    assert.is_true(rawequal(a, q:get()))
  end)
end)

describe("lock.rlock", function()
  it("is re-entrant for its holder and exclusive for others", function()
    local r = lock.rlock()
    assert.is_true(r:acquire())
    assert.is_true(r:acquire())
    r:release()
    assert.is_true(r:locked())
    local t = thread.new(function(rr) return rr:acquire(0.01) end, r)
    assert.is_false(t:join(10))
    r:release()
    assert.is_false(r:locked())
  end)
end)

describe("lock.semaphore", function()
  it("counts acquires and releases", function()
    local s = lock.semaphore(2)
    assert.is_true(s:acquire())
    assert.is_true(s:acquire())
    assert.is_false(s:acquire(0.01))
    s:release(2)
    assert.equal(2, s:value())
    assert.has_error(function() lock.semaphore(-1) end)
    assert.has_error(function() s:release(0) end)
  end)

  it("bounds concurrency across processes", function()
    local s = lock.semaphore(2)
    local inside, peak = queue(), queue()
    inside:put(0)
    peak:put(0)
    local ps = {}
    for i = 1, 5 do
      ps[i] = process.spawn(function()
        s:with(function()
          local n = inside:get(1) + 1
          inside:put(n)
          local pk = peak:get(1)
          peak:put(math.max(pk, n))
          concur.sleep(0.02)
          inside:put(inside:get(1) - 1)
        end)
      end)
    end
    for _, p in ipairs(ps) do p:join(30) end
    assert.is_true(peak:get(1) <= 2)
  end)
end)

describe("lock.event", function()
  it("wakes waiters in other processes when set", function()
    local e = lock.event()
    local ps = {}
    for i = 1, 3 do ps[i] = process.spawn(function() return e:wait(10) end) end
    assert.is_false(e:is_set())
    e:set()
    for _, p in ipairs(ps) do assert.is_true(p:join(10)) end
    assert.is_true(e:wait(0))
    e:clear()
    assert.is_false(e:wait(0.01))
  end)
end)

describe("lock.condition", function()
  it("waits for a predicate signalled from another process", function()
    local c = lock.condition()
    local box = queue()
    local p = process.spawn(function()
      c:acquire()
      local ok = c:wait_for(function() return #box > 0 end, 10)
      c:release()
      return ok
    end)
    concur.sleep(0.05)
    c:with(function() box:put(1) c:notify_all() end)
    assert.is_true(p:join(10))
  end)

  it("times out, and requires the lock for wait and notify", function()
    local c = lock.condition(lock())
    assert.has_error(function() c:wait(0.01) end)
    assert.has_error(function() c:notify() end)
    c:acquire()
    assert.is_false(c:wait(0.01))
    c:release()
    assert.has_error(function() lock.condition(queue()) end)
  end)
end)

describe("lock.barrier", function()
  it("releases all parties together with distinct indices", function()
    local b = lock.barrier(3)
    local ps = {process.spawn(function() return b:wait(10) end), thread.new(function(bb) return bb:wait(10) end, b)}
    local mine = b:wait(10)
    local seen = {[mine] = true}
    for _, p in ipairs(ps) do seen[p:join(10)] = true end
    assert.is_true(seen[0] and seen[1] and seen[2])
    assert.equal(3, b:parties())
  end)

  it("breaks on a timeout, and reset mends it", function()
    local b = lock.barrier(2)
    local v, why = b:wait(0.01)
    assert.is_nil(v)
    assert.equal("timeout", why)
    assert.is_true(b:broken())
    assert.equal("broken", select(2, b:wait(1)))
    b:reset()
    assert.is_false(b:broken())
    local p = process.spawn(function() return b:wait(10) end)
    assert.is_number(b:wait(10))
    assert.is_number(p:join(10))
  end)

  it("fails waiters when aborted", function()
    local b = lock.barrier(3)
    local p = process.spawn(function() return select(2, b:wait(10)) end)
    concur.sleep(0.05)
    b:abort()
    assert.equal("broken", p:join(10))
    assert.has_error(function() lock.barrier(0) end)
  end)
end)

describe("lock.condition notify(n)", function()
  -- Start 4 waiters (threads or processes). Each reports "ready" holding the
  -- lock, so once the caller holds the lock after 4 readies, all 4 are
  -- inside wait. A waiter reports {id, wait's result} when it wakes.
  local function waiters(spawn)
    local c, ready, woke = lock.condition(), queue(), queue()
    local ws = {}
    for i = 1, 4 do
      ws[i] = spawn(function(cc, rq, wq, id)
        cc:acquire()
        rq:put(id)
        local ok = cc:wait(30)
        wq:put({id, ok})
        cc:release()
        return ok
      end, c, ready, woke, i)
    end
    for _ = 1, 4 do assert.is_number(ready:get(10)) end
    return c, woke, ws
  end

  -- how many wake within a second, then that no more wake for a while
  local function woken(woke, n)
    for k = 1, n do
      local w = woke:get(1)
      assert.is_table(w, "waiter " .. k .. " of " .. n .. " did not wake within 1 s")
      assert.is_true(w[2])
    end
    assert.is_nil(woke:get(0.3), "more than " .. n .. " waiter(s) woke")
  end

  local function exact(spawn)
    local c, woke, ws = waiters(spawn)
    c:acquire() c:notify(1) c:release()
    woken(woke, 1)
    c:acquire() c:notify(0) c:release()
    woken(woke, 0)
    c:acquire() c:notify(2) c:release()
    woken(woke, 2)
    c:acquire() c:notify_all() c:release()
    woken(woke, 1)
    for _, w in ipairs(ws) do assert.is_true(w:join(10)) end
  end

  it("wakes exactly n of 4 waiting threads", function()
    exact(function(f, ...) return thread.new(f, ...) end)
  end)

  it("wakes exactly n of 4 waiting processes", function()
    exact(function(f, ...) return process.spawn(f, ...) end)
  end)

  it("wakes all current waiters with notify_all, and no later one", function()
    local c, woke, ws = waiters(function(f, ...) return process.spawn(f, ...) end)
    c:acquire()
    c:notify_all()
    c:release()
    woken(woke, 4)
    for _, w in ipairs(ws) do assert.is_true(w:join(10)) end
    c:acquire()
    assert.is_false(c:wait(0.05)) -- a notification is not kept for later waiters
    c:release()
  end)

  it("does not let a waiter that arrives after a notify take it", function()
    local c, woke, ws = waiters(function(f, ...) return thread.new(f, ...) end)
    c:acquire()
    c:notify(1)
    -- this thread now waits too, before the notified waiter could run: it
    -- arrived after the notify, so the notification is not for it
    assert.is_false(c:wait(0.05))
    c:release()
    woken(woke, 1)
    c:acquire()
    c:notify_all()
    c:release()
    woken(woke, 3)
    for _, w in ipairs(ws) do assert.is_true(w:join(10)) end
  end)

  it("still times out and is still interrupted while waiting", function()
    local c = lock.condition()
    c:acquire()
    local t0 = concur.clock()
    assert.is_false(c:wait(0.05))
    assert.is_true(concur.clock() - t0 >= 0.04)
    c:release()
    local started = lock.event()
    local t = thread.new(function(cc, ev)
      cc:acquire()
      ev:set()
      return cc:wait(30)
    end, c, started)
    assert.is_true(started:wait(10))
    c:acquire() -- the waiter is inside wait once the lock is free
    c:release()
    t:cancel()
    assert.equal("cancelled", select(2, t:join(5)))
  end)

  it("is not wedged by a waiter killed mid-wait", function()
    local c = lock.condition()
    local ready = queue()
    local dead = process.spawn(function()
      c:acquire()
      ready:put(1)
      c:wait(30)
    end)
    assert.equal(1, ready:get(10))
    c:acquire() -- the victim is inside wait
    c:release()
    dead:kill(9)
    pcall(dead.join, dead, 10)
    local alive = process.spawn(function()
      c:acquire()
      ready:put(2)
      local ok = c:wait(10)
      c:release()
      return ok
    end)
    assert.equal(2, ready:get(10))
    c:acquire()
    c:notify(1)
    c:release()
    assert.is_true(alive:join(10))
  end)

  it("refuses a bad n", function()
    local c = lock.condition()
    c:acquire()
    for _, n in ipairs({0 / 0, math.huge, -math.huge, 2^63, -1, 1.5, "x", {}}) do
      assert.has_error(function() c:notify(n) end, nil, tostring(n))
    end
    c:release()
  end)
end)

describe("lock counters at their limits", function()
  local big = math.maxinteger or 2^62 -- LuaJIT: the largest exact power of two we can pass

  it("refuses a semaphore release that would overflow, leaving the value unchanged", function()
    local s = lock.semaphore(0)
    s:release(big)
    assert.equal(big, s:value())
    local ok, err = pcall(s.release, s, big)
    assert.is_false(ok)
    assert.matches("semaphore:release: .*overflow", err)
    assert.equal(big, s:value())
    if math.maxinteger then
      ok, err = pcall(s.release, s, 1)
      assert.is_false(ok)
      assert.matches("semaphore:release: .*overflow", err)
      assert.equal(math.maxinteger, s:value())
      local t = lock.semaphore(math.maxinteger)
      assert.has_error(function() t:release() end)
      assert.equal(math.maxinteger, t:value())
    end
    assert.is_true(s:acquire(0))
    assert.equal(big - 1, s:value())
    s:release(1)
    assert.equal(big, s:value())
  end)

  it("refuses NaN, infinities, 2^63, negatives and fractions as counts", function()
    local s = lock.semaphore(1)
    for _, n in ipairs({0 / 0, math.huge, -math.huge, 2^63, -2^63 * 2, -1, 1.5}) do
      assert.has_error(function() lock.semaphore(n) end, nil, "semaphore(" .. tostring(n) .. ")")
      assert.has_error(function() s:release(n) end, nil, "release(" .. tostring(n) .. ")")
      assert.has_error(function() lock.barrier(n) end, nil, "barrier(" .. tostring(n) .. ")")
    end
    assert.has_error(function() s:release(0) end)
    assert.has_error(function() lock.barrier(0) end)
    assert.equal(1, s:value())
  end)

  it("accepts the largest barrier and semaphore", function()
    local b = lock.barrier(big)
    assert.equal(big, b:parties())
    local v, why = b:wait(0.01)
    assert.is_nil(v)
    assert.equal("timeout", why)
    assert.equal(big, lock.semaphore(big):value())
  end)
end)
