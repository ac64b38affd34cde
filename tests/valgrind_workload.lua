-- valgrind_workload.lua -- a short run of every primitive across threads and
-- processes, for `make valgrind` (scripts/valgrind.sh runs it under memcheck).
--
-- Why a workload and not the specs: busted under valgrind takes minutes, and
-- memcheck's verdict is about the C code, not about Lua results. So this does
-- each operation a few times (the paths, not the volume), including refused
-- and failing calls, because error paths are where memory goes astray. It
-- checks its own results with assert so a wrong answer is also a failure,
-- and prints "workload ok" at the end.
--
-- Timeouts are generous: memcheck runs code 20-50x slower and serialises
-- threads. A child's exit code is not checked: memcheck replaces it with
-- --error-exitcode when the child has a report (scripts/valgrind.sh reads
-- every process's log instead). Runs under build/concur, lua5.4 or luajit (require "concur").
local concur = require "concur"
local process, thread, shared = concur.process, concur.thread, concur.shared
local pipe, lock, queue, primes = concur.pipe, concur.lock, concur.queue, concur.primes

local T = 60 -- seconds: a bound, never a wait that hopes
local function refused(fn, ...) -- a call that must raise, not crash
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

local function step(name, fn)
  local t0 = concur.clock()
  fn()
  io.stderr:write(string.format("workload: %-10s %.2f s\n", name, concur.clock() - t0))
end

step("codec", function()
  local cyc = {1, 2.5, "three", math.maxinteger, math.mininteger, -0.0, 1 / 0, 0 / 0}
  cyc.self, cyc.shared, cyc.again = cyc, {x = "\0\255"}, nil
  cyc.again = cyc.shared
  local k = 7
  local f = function(x) return x + k end
  setmetatable(cyc, {__index = {meta = true}})
  local s = concur.encode(cyc, f, string.format, concur.primes, true, nil)
  local c2, f2, fmt = concur.decode(s, {trust = true})
  assert(c2.self == c2 and c2.again == c2.shared and c2.meta == true)
  assert(f2(1) == 8 and fmt == string.format)
  refused(concur.encode, coroutine.create(print))
  refused(concur.encode, {deep = {io.stdout}})
  refused(concur.decode, s:sub(1, #s - 3), {trust = true})
  refused(concur.decode, s)
  refused(concur.decode, "\1\2\3")
  refused(concur.encode, shared.list())
end)

step("shared", function()
  local l = shared.list({1, 2, 3})
  l:append({nested = "table"})
  l:extend({5, 6})
  l:insert(1, 0)
  assert(l:remove(1) == 0 and l:pop() == 6 and #l == 5)
  l[1] = "one"
  assert(l[1] == "one" and l[99] == nil)
  refused(l.append, l, nil)
  refused(l.extend, l, {1, coroutine.create(print)}) -- refused batch
  refused(l.insert, l, 99, 1)
  local n = 0
  for _, v in l:ipairs() do n = n + 1 end
  assert(n == 5 and #l:totable() == 5)
  assert(tostring(l):find("shared.list", 1, true))

  local d = shared.dict({a = 1})
  d.b, d[3], d[true] = "two", {three = 3}, l
  assert(d:get("zz", "dflt") == "dflt" and d:delete("a") == 1)
  assert(d[true] == l and #d:keys() == 3 and #d:items() == 3)
  refused(d.set, d, {}, 1)
  refused(d.set, d, 0 / 0, 1)
  d.b = nil
  assert(#d == 2)
  d:clear()
  l:clear()

  -- the same objects from threads and processes
  local ts = {}
  for i = 1, 2 do
    ts[i] = thread.new(function(ll, dd, i)
      for j = 1, 20 do ll:append(j) dd[i * 100 + j] = j end
      return #ll
    end, l, d, i)
  end
  for _, t in ipairs(ts) do assert(t:join(T)) end
  local p = process.spawn(function(ll, dd) ll:append("child") dd.child = true return #ll end, l, d)
  assert(p:join(T) == 41)
  assert(#l == 41 and d.child == true and #d == 41)
end)

step("queue", function()
  local q = queue(4)
  assert(q:put(1) and q:put({2}) and q:put("3"))
  assert(q:put_many({4}) == 1 and q:full())
  assert(select(2, q:put(5, 0.01)) == "timeout")
  assert(q:get() == 1 and q:get()[1] == 2)
  local got = q:get_many(10)
  assert(#got == 2)
  assert(select(2, q:get(0.01)) == "timeout")
  refused(q.put, q, coroutine.create(print))
  refused(q.put_many, q, {1, 2, coroutine.create(print)}) -- refused batch
  refused(q.put, q, 1, -1)

  local jobs, results = queue(), queue()
  local worker = thread.new(function(jobs, results)
    for v in jobs:iter() do results:put(v * 2) end
    return "done"
  end, jobs, results)
  local child = process.spawn(function(jobs, results)
    for v in jobs:iter() do results:put(v * 2) end
    return "done"
  end, jobs, results)
  for i = 1, 50 do jobs:put(i) end
  jobs:close()
  assert(worker:join(T) == "done" and child:join(T) == "done")
  local sum = 0
  for _ = 1, 50 do sum = sum + results:get(T) end
  assert(sum == 2550)
  refused(jobs.put, jobs, 1)
  assert(select(2, jobs:get(0.01)) == "closed")
  -- a queue left with items in it is freed with them
  local left = queue()
  left:put({"unread", shared.list({1})})
end)

step("pipe", function()
  local a, b = pipe()
  a:send({1, "two", {3}})
  assert(b:poll(T) and b:recv(T)[3][1] == 3)
  local r, w = pipe{duplex = false}
  refused(r.send, r, 1)
  local t = thread.new(function(w) for i = 1, 20 do w:send(i) end w:send(string.rep("x", 200000)) end, w)
  local p = process.spawn(function(w) for i = 1, 20 do w:send(-i) end end, w)
  local sum, big = 0, nil
  for _ = 1, 41 do
    local v = r:recv(T)
    if type(v) == "string" then big = v else sum = sum + v end
  end
  assert(sum == 0 and #big == 200000)
  t:join(T)
  p:join(T)
  local ready = concur.wait({r, a, b}, 0.01)
  assert(#ready == 0)
  b:send("x")
  ready = concur.wait({r, a}, T)
  assert(#ready == 1 and ready[1] == a and a:recv(T) == "x")
  w:close()
  assert(select(2, r:recv(T)) == "closed")
  refused(w.send, w, 1)
  -- a peer that dies mid-stream: the reader sees EOF, not a torn message
  local r2, w2 = pipe{duplex = false}
  local k = process.spawn(function(w) w:send("first") concur.sleep(60) end, w2)
  assert(r2:recv(T) == "first")
  k:kill(9)
  pcall(k.join, k, T)
  w2:close()
  assert(select(2, r2:recv(T)) == "closed")
end)

step("lock", function()
  local m, counter = lock(), shared.list({0})
  local ts = {}
  for i = 1, 2 do
    ts[i] = thread.new(function(m, c)
      for _ = 1, 50 do m:with(function() c[1] = c[1] + 1 end) end
    end, m, counter)
  end
  local p = process.spawn(function(m, c)
    for _ = 1, 50 do m:acquire() c[1] = c[1] + 1 m:release() end
  end, m, counter)
  for _, t in ipairs(ts) do t:join(T) end
  p:join(T)
  assert(counter[1] == 150)
  refused(m.release, m)

  -- a holder killed while holding: handed on
  local held = lock.event()
  local k = process.spawn(function() m:acquire() held:set() concur.sleep(60) end)
  assert(held:wait(T))
  k:kill(9)
  pcall(k.join, k, T)
  local ok, why = m:acquire(T)
  assert(ok and why == "owner died")
  m:release()

  local r = lock.rlock()
  r:acquire() r:acquire() r:release() r:release()
  local s = lock.semaphore(2)
  assert(s:acquire(T) and s:acquire(T) and not s:acquire(0.01))
  s:release(2)
  assert(s:value() == 2)
  local e = lock.event()
  local waiter = thread.new(function(e) return e:wait(60) end, e)
  e:set()
  assert(waiter:join(T) == true and e:is_set())
  e:clear()

  local c, box = lock.condition(), shared.list()
  local consumer = thread.new(function(c, box)
    return c:with(function() return c:wait_for(function() return #box > 0 end, 60) end)
  end, c, box)
  c:with(function() box:append(1) c:notify_all() end)
  assert(consumer:join(T))

  local bar = lock.barrier(3)
  local bt = thread.new(function(b) return b:wait(60) end, bar)
  local bp = process.spawn(function(b) return b:wait(60) end, bar)
  local mine = bar:wait(T)
  local idx = {[mine] = true, [bt:join(T)] = true, [bp:join(T)] = true}
  assert(idx[0] and idx[1] and idx[2])
  local broken = lock.barrier(2)
  assert(select(2, broken:wait(0.01)) == "timeout" and broken:broken())
  refused(lock.barrier, 0)
  refused(lock.semaphore, -1)
end)

step("process", function()
  local p = process.spawn{function(a, b) return a + b, {a, b} end, 2, 3, name = "adder"}
  local sum, t = p:join(T)
  assert(sum == 5 and t[2] == 3)
  local bad = process.spawn(function() error({code = 7}) end)
  local ok, err = pcall(bad.join, bad, T)
  assert(not ok and type(err) == "table" and err.code == 7)
  local sleeper = process.spawn(function() concur.sleep(60) end)
  assert(sleeper:alive())
  assert(sleeper:kill("KILL"))
  assert(not pcall(sleeper.join, sleeper, T))
  assert(sleeper.exitcode == -9)
  -- a forked child has its arguments already: a coroutine goes as it is
  assert(process.spawn(function(co) return type(co) end, coroutine.create(print)):join(T) == "thread")
  refused(process.spawn, 42)
  local out = process.run{"sh", "-c", "cat; echo err >&2", stdin = "in\n", timeout = T}
  assert(out.status == 0 and out.stdout == "in\n" and out.stderr == "err\n")
  local slow = process.run{"sleep", "30", timeout = 0.2}
  assert(slow.timeout == true)
  assert(process.cpu_count() >= 1 and process.pid() > 0)
  -- a child that forks its own thread and process
  local nest = process.spawn(function()
    local t = concur.thread.new(function() return 1 end)
    local c = concur.process.spawn(function() return 2 end)
    return t:join(60) + c:join(60)
  end)
  assert(nest:join(T) == 3)
end)

step("thread", function()
  local t = thread.new(function(...) return select("#", ...), ... end, 1, nil, "x")
  local n, a, b, c = t:join(T)
  assert(n == 3 and a == 1 and b == nil and c == "x")
  local bad = thread.new(function() error("boom") end)
  assert(not pcall(bad.join, bad, T))
  local q = queue()
  local blocked = thread.new(function(q) return q:get() end, q)
  blocked:cancel()
  local v, why = blocked:join(T)
  assert(v == nil and why == "cancelled")
  refused(thread.new, function() end, coroutine.create(print))
  -- a thread that is never joined is joined when the state closes
  thread.new(function() return primes.count(0, 1000) end)
  -- threads inside a forked child
  local p = process.spawn(function()
    local ts = {}
    for i = 1, 3 do ts[i] = concur.thread.new(function(i) return i * i end, i) end
    local s = 0
    for i = 1, 3 do s = s + ts[i]:join(60) end
    return s
  end)
  assert(p:join(T) == 14)
end)

step("primes", function()
  assert(primes.count(0, 10000) == 1229)
  assert(#primes.list(0, 100) == 25 and primes.is_prime(7919))
  refused(primes.count, "a", 1)
  local t = thread.new(function() return concur.primes.count(0, 5000) end)
  local p = process.spawn(function() return concur.primes.count(5000, 10000) end)
  assert(t:join(T) + p:join(T) == 1229)
end)

step("pool", function()
  local pool = concur.pool
  for _, kind in ipairs { "thread", "process" } do
    local p = pool.new { workers = 2, kind = kind }
    local function id(...) return ... end
    -- the packed paths (pool.c: submit, singles, take) once the function is
    -- registered, and the Lua ones: a table argument, an error, nil results
    local fs = {}
    for i = 1, 30 do fs[i] = p:submit(id, i, "s" .. i, i + 0.5) end
    fs[#fs + 1] = p:submit(id, { t = 1 })
    fs[#fs + 1] = p:submit(function() error("bad") end)
    fs[#fs + 1] = p:submit(id)
    for i = 1, 30 do
      local a, b, c = fs[i]:result(T)
      assert(a == i and b == "s" .. i and c == i + 0.5)
    end
    assert(fs[31]:result(T).t == 1)
    assert(fs[32]:error(T):match("bad"))
    assert(select("#", fs[33]:result(T)) == 0)
    local n = 0
    for _ in pool.as_completed(fs, T) do n = n + 1 end
    assert(n == #fs)
    local done = pool.wait(fs, { timeout = T })
    assert(#done == #fs)
    local slow = { p:submit(concur.sleep, 0.5), p:submit(concur.sleep, 0.5) }
    local queued = p:submit(id, 1)
    queued:cancel()
    fs[1].tag = "kept" -- a field of the user's own on a future
    assert(fs[1].tag == "kept")
    local r = p:map(function(x) return x * 2 end, { 1, 2, 3, 4, 5 }, { chunksize = 2 })
    assert(r[5] == 10)
    slow[1]:result(T)
    p:close()
    p:join()
    refused(p.submit, p, id, 1)
  end
end)

print("workload ok")
