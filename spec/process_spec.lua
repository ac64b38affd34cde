-- process.spawn, join, alive, kill, exitcode, process.run, pid, cpu_count
local concur = require "concur"
local process = concur.process
local support = require "spec.support"

local function tmpname()
  local n = os.tmpname()
  os.remove(n)
  return n
end

describe("process.spawn", function()
  it("runs the function in another process and returns its results", function()
    local p = process.spawn(function(a, b) return a + b, process.pid() end, 20, 22)
    local sum, pid = p:join(10)
    assert.equal(42, sum)
    assert.equal(p.pid, pid)
    assert.are_not.equal(process.pid(), pid)
  end)

  it("returns every codec value from the child", function()
    local p = process.spawn(function()
      local t = {1, 2, x = {y = "z"}, [true] = false}
      t.self = t
      return nil, true, 3.5, "bytes\0here", t
    end)
    local a, b, c, d, t = p:join(10)
    assert.is_nil(a)
    assert.is_true(b)
    assert.equal(3.5, c)
    assert.equal("bytes\0here", d)
    assert.equal("z", t.x.y)
    assert.equal(t, t.self)
    assert.is_false(t[true])
  end)

  it("gives the same results when joined twice", function()
    local p = process.spawn(function() return {1, 2} end)
    assert.same({1, 2}, p:join(10))
    assert.same({1, 2}, p:join(10))
  end)

  it("re-raises the child's error with the child's traceback", function()
    local p = process.spawn(function() error("child broke") end)
    local ok, err = pcall(p.join, p, 10)
    assert.is_false(ok)
    assert.matches("process %d+ %(process%-%d+%) failed: .*child broke", err)
    assert.matches("stack traceback", err)
  end)

  it("re-raises a table error object as it was", function()
    local p = process.spawn(function() error({code = 7}) end)
    local ok, err = pcall(p.join, p, 10)
    assert.is_false(ok)
    assert.equal(7, err.code)
  end)

  it("reports a child killed by a signal", function()
    local p = process.spawn(function() concur.sleep(30) end)
    assert.is_true(p:alive())
    p:kill("SIGKILL")
    local ok, err = pcall(p.join, p, 10)
    assert.is_false(ok)
    assert.matches("process " .. p.pid .. " %(process%-%d+%) killed by SIGKILL", err)
    assert.equal(-9, p.exitcode)
    assert.is_false(p:alive())
  end)

  it("accepts the table form with name and daemon", function()
    local p = process.spawn{function(x) return x end, "hi", name = "worker"}
    assert.equal("worker", p.name)
    assert.is_false(p.daemon)
    assert.equal("hi", p:join(10))
    local ok, err = pcall(process.spawn{function() error("named") end, name = "w2"}.join, nil)
    assert.is_false(ok)
  end)

  it("reports a child killed while sending its results as killed", function()
    if not concur.queue then pending("queue not built") return end
    local q = concur.queue()
    local p = process.spawn(function()
      local s = string.rep("x", 4 * 1024 * 1024)
      q:put("sending")
      return s -- more than a pipe holds, and nobody reads it yet: the write blocks
    end)
    assert.equal("sending", q:get(10))
    local deadline = concur.clock() + 10
    repeat -- until it sleeps in that write
      local f = io.open("/proc/" .. p.pid .. "/stat")
      local state = f and f:read("a"):match("^%d+ %b() (%a)")
      if f then f:close() end
      if state == "S" then break end
      concur.sleep(0.01)
    until concur.clock() > deadline
    p:kill("KILL")
    local ok, err = pcall(p.join, p, 10)
    assert.is_false(ok)
    assert.matches("process %d+ %(process%-%d+%) killed by SIGKILL", err) -- was "corrupt message (truncated)"
    assert.equal(-9, p.exitcode)
  end)

  it("sets exitcode to 0 on success and 1 on error", function()
    local p = process.spawn(function() end)
    p:join(10)
    assert.equal(0, p.exitcode)
    local q = process.spawn(function() error("x") end)
    pcall(q.join, q, 10)
    assert.equal(1, q.exitcode)
  end)

  it("returns nil, 'timeout' when join times out", function()
    local p = process.spawn(function() concur.sleep(30) end)
    local v, why = p:join(0.01)
    assert.is_nil(v)
    assert.equal("timeout", why)
    p:kill(9)
    pcall(p.join, p, 10)
  end)

  -- the child is a copy of the caller: what it is given is not encoded, so
  -- values a thread could not take are fine here (issue 10)
  it("passes a coroutine argument to the child as it is", function()
    local co = coroutine.create(function(x) coroutine.yield(x + 1) return "done" end)
    local p = process.spawn(function(c)
      local _, a = coroutine.resume(c, 41)
      local _, b = coroutine.resume(c)
      return a, b, coroutine.status(c)
    end, co)
    local a, b, status = p:join(10)
    assert.equal(42, a)
    assert.equal("done", b)
    assert.equal("dead", status)
    assert.equal("suspended", coroutine.status(co)) -- the parent's is untouched
  end)

  it("lets the child use a file handle captured in an upvalue", function()
    local cfg = {conn = {sock = io.stdout}}
    local p = process.spawn(function() return io.type(cfg.conn.sock), cfg.conn.sock == io.stdout end)
    local kind, same = p:join(10)
    assert.equal("file", kind)
    assert.is_true(same)
  end)

  it("passes a table nested deeper than a message may be", function()
    local deep = {}
    local t = deep
    for _ = 1, 300 do t.next = {} t = t.next end
    local p = process.spawn(function(d)
      local n = 0
      while d.next do d, n = d.next, n + 1 end
      return n
    end, deep)
    assert.equal(300, p:join(10))
  end)

  it("keeps identity between the function's upvalues and its arguments", function()
    local shared_t = {}
    local p = process.spawn(function(x) return x == shared_t end, shared_t)
    assert.is_true(p:join(10))
  end)

  it("passes another process's handle to the child, which cannot join it", function()
    local sib = process.spawn(function() concur.sleep(0.2) return 1 end)
    local p = process.spawn(function(s)
      local ok, err = pcall(s.join, s, 1)
      return s.pid, ok, err
    end, sib)
    local pid, ok, err = p:join(10)
    assert.equal(sib.pid, pid)
    assert.is_false(ok)
    assert.matches("is not a child of this process", err)
    assert.equal(1, sib:join(10))
  end)

  it("reports a result that cannot cross back as the child's error", function()
    local p = process.spawn(function() return coroutine.create(print) end)
    local ok, err = pcall(p.join, p, 10)
    assert.is_false(ok)
    assert.matches("cannot send a coroutine", err)
    assert.equal(1, p.exitcode)
  end)

  it("names the field of a result that cannot cross back, message intact", function()
    -- the encoder's function name was left unanchored on the child's stack
    -- and collected mid-encode: "Drocess result: ..." (a small fresh state
    -- collects soon enough to show it)
    local out = support.run([[
      local p = concur.process.spawn(function() return {co = coroutine.create(print)} end)
      print(select(2, pcall(p.join, p, 10)))
    ]])
    assert.matches('failed: process result: cannot send a coroutine %(argument 1, field "co"%)', out)
  end)

  it("spawns from inside a coroutine", function()
    local co = coroutine.wrap(function(x)
      local p = process.spawn(function(y) return y * 2, coroutine.isyieldable() end, x)
      coroutine.yield(p:join(10))
    end)
    assert.equal(42, co(21))
  end)

  it("spawns from inside a thread with a value a thread could not be sent", function()
    local t = concur.thread.new(function()
      local process = require("concur").process
      local co = coroutine.create(function() return "from the thread's coroutine" end)
      local p = process.spawn(function(c) return select(2, coroutine.resume(c)) end, co)
      return p:join(10)
    end)
    assert.equal("from the thread's coroutine", t:join(20))
  end)

  it("rejects a non-function first argument", function()
    assert.has_error(function() process.spawn(42) end)
    assert.has_error(function() process.spawn{} end)
  end)

  it("rejects bad arguments to join and kill", function()
    local p = process.spawn(function() end)
    assert.has_error(function() p:join(-1) end)
    assert.has_error(function() p:join("soon") end)
    assert.has_error(function() p:kill("SIGNOPE") end)
    p:join(10)
    assert.is_false(p:kill(9)) -- already gone
  end)

  it("says bad self when a process method gets something else as self", function()
    local p = process.spawn(function() end)
    local FILE = (getmetatable(io.stdout).__name or "userdata"):gsub("%*", "%%*")
    for _, m in ipairs{"join", "alive", "kill"} do
      local ok, err = pcall(p[m], io.stdout)
      assert.is_false(ok)
      assert.matches("process:" .. m .. ": bad self %(process expected, got " .. FILE .. "%)", err)
    end
    local ok, err = pcall(p.join, concur.shared.list())
    assert.is_false(ok)
    assert.matches("process:join: bad self %(process expected, got concur.list%)", err)
    p:join(10)
  end)

  it("does not print a buffered line twice", function()
    local out = tmpname()
    local cmd = string.format(
      "%s -e 'io.write(\"before \") local p = concur.process.spawn(function() io.write(\"child \") end) p:join(10) print(\"after\")' > %s 2>&1",
      "build/concur", out)
    if not io.open("build/concur") then pending("build/concur not built") return end
    os.execute(cmd)
    local f = io.open(out)
    local s = f:read("*a")
    f:close()
    os.remove(out)
    assert.equal("before child after\n", s)
  end)

  it("runs no parent finalizer in the child", function()
    local out = tmpname()
    local p = process.spawn(function()
      -- a finalizer that would write if the child ran the parent's finalizers
      setmetatable({}, {__gc = function() io.open(out, "w"):close() end})
      return 1
    end)
    assert.equal(1, p:join(10))
    assert.is_nil(io.open(out))
  end)

  it("joins unjoined children when the script ends, leaving no zombie", function()
    if not io.open("build/concur") then pending("build/concur not built") return end
    local f = io.popen("build/concur -e 'P = concur.process.spawn(function() concur.sleep(0.2) print(\"child done\") end) print(P.pid)'")
    local s = f:read("*a")
    f:close()
    local pid = s:match("^(%d+)")
    assert.truthy(s:find("child done", 1, true))
    local ps = io.popen("ps -o stat= -p " .. pid .. " 2>/dev/null"):read("*a")
    assert.equal("", ps)
  end)

  it("kills daemon children when the script ends", function()
    if not io.open("build/concur") then pending("build/concur not built") return end
    local f = io.popen("build/concur -e 'P = concur.process.spawn{function() concur.sleep(30) end, daemon = true} print(P.pid)'")
    local t0 = concur.clock()
    local pid = f:read("*a"):match("(%d+)")
    f:close()
    assert.is_true(concur.clock() - t0 < 20)
    assert.equal("", io.popen("ps -o stat= -p " .. pid .. " 2>/dev/null"):read("*a"))
  end)

  it("never lets a child's garbage collector release the parent's objects", function()
    if not concur.queue then pending("queue not built") return end
    local keep = concur.queue()
    collectgarbage("stop")
    for _ = 1, 50 do concur.queue() end -- garbage the parent has not collected yet
    local p = process.spawn(function()
      collectgarbage()
      collectgarbage() -- finalizes the inherited garbage in the child
      return keep:put("from child")
    end)
    p:join(10)
    collectgarbage("restart")
    collectgarbage()
    collectgarbage()
    -- a double release frees one block twice and hands it out twice
    local a, b = concur.queue(), concur.queue()
    assert.are_not.equal(tostring(a), tostring(b))
    a:put(1)
    b:put(2)
    assert.equal(1, a:get(1))
    assert.equal(2, b:get(1))
    assert.equal("from child", keep:get(1))
  end)

  it("keeps objects passed to a child alive while it runs", function()
    if not concur.queue then pending("queue not built") return end
    local p = process.spawn(function(q)
      concur.sleep(0.2)
      q:put("still here")
      return q:get(1)
    end, concur.queue()) -- the parent keeps no handle
    collectgarbage()
    collectgarbage()
    for _ = 1, 100 do concur.queue():put("reuse the memory") end
    assert.equal("still here", p:join(10))
  end)

  it("spawns from inside a child", function()
    local p = process.spawn(function()
      local q = process.spawn(function() return process.pid() end)
      return q:join(10), process.pid()
    end)
    local grandchild, child = p:join(10)
    assert.are_not.equal(grandchild, child)
  end)

  it("refuses to join a process that is not its child", function()
    -- a process handle cannot be sent; a forked child still sees the
    -- parent's globals, so reach a sibling's handle through one
    SIBLING = process.spawn(function() concur.sleep(0.3) end)
    local p = process.spawn(function()
      local ok, err = pcall(SIBLING.join, SIBLING, 1)
      return ok, err
    end)
    local ok, err = p:join(10)
    assert.is_false(ok)
    assert.matches("is not a child of this process", err)
    SIBLING:join(10)
    SIBLING = nil
  end)

  it("starts children that can raise errors while a thread raises errors (LuaJIT's unwinder lock)", function()
    -- LuaJIT raises errors by unwinding, under a libgcc mutex once it has
    -- compiled code; a fork while a thread held it left it held in the child
    -- for ever (4 children in 200 hung). Under Lua 5.4 errors are longjmps.
    local stop = concur.shared.value("i64", 0)
    local t = concur.thread.new(function(flag)
      local n = 0
      while flag:get() == 0 do
        for _ = 1, 100 do pcall(error, "x") end
        n = n + 1
      end
      return n
    end, stop)
    local hung = 0
    for _ = 1, 300 do
      local p = process.spawn(function()
        for _ = 1, 10 do pcall(error, "y") end
        return true
      end)
      if not p:join(5) then
        hung = hung + 1
        p:kill("SIGKILL")
        pcall(p.join, p, 10)
      end
    end
    stop:set(1)
    assert.is_true(t:join(30) > 0)
    assert.equal(0, hung)
  end)

  it("reports cpu_count and pid", function()
    assert.is_true(process.cpu_count() >= 1)
    assert.equal("number", type(process.pid()))
  end)
end)

-- runtime/heap.c: every 8th fork from a heap of 8 MiB or more folds it onto
-- 2 MiB pages (MADV_COLLAPSE), and the host keeps blocks of 2 MiB or more
-- on huge pages, so a fork's page-table copy does not grow with what the
-- parent holds
describe("a spawn from a big heap", function()
  -- the brk heap's huge pages (KiB), for the scripts below
  local HEAP_HUGE = [[
    local function heap_huge()
      local f = io.open("/proc/self/smaps")
      local h = 0
      for body in f:read("*a"):gmatch("%[heap%]\n(.-)VmFlags") do
        h = h + tonumber(body:match("AnonHugePages:%s+(%d+)"))
      end
      f:close()
      return h
    end
  ]]
  -- 3*10^5 rows, about 36 MiB: each child and the parent sum them; the
  -- huge pages of the heap, its resident size, before and after
  local SCRIPT = HEAP_HUGE .. [[
    local process = concur.process
    local function rollup() -- the resident size, and the brk heap's huge pages (KiB)
      local f = io.open("/proc/self/smaps_rollup")
      local rss = tonumber(f:read("*a"):match("\nRss:%s+(%d+)"))
      f:close()
      return rss, heap_huge()
    end
    local rows = {}
    for i = 1, 300000 do rows[i] = {i, -2 * i} end
    local function sum() local s = 0 for i = 1, #rows do s = s + rows[i][1] + rows[i][2] end return s end
    local want = -(300000 * 300001 / 2)
    local rss0, huge0 = rollup()
    local huge7
    for k = 1, 10 do
      assert(process.spawn(sum):join(30) == want, "child " .. k)
      if k == 7 then huge7 = select(2, rollup()) end
    end
    assert(sum() == want, "parent")
    local rss1, huge1 = rollup()
    print(string.format("huge %d %d %d rss %d %d", huge0, huge7, huge1, rss0, rss1))
  ]]

  local function thp_mode()
    local f = io.open("/sys/kernel/mm/transparent_hugepage/enabled")
    if not f then return "none" end
    local s = f:read("*a")
    f:close()
    return s:match("%[(%w+)%]") or "none"
  end
  -- why folding cannot be seen here, or nil: LuaJIT's allocator maps its
  -- own memory (no heap to fold), ASan's and TSan's too
  local function heap_not_mallocs()
    if support.luajit or support.flavour ~= "concur" and support.flavour ~= "lua5.4" then
      return "the heap of " .. support.flavour .. " is not malloc's"
    end
  end
  local function kernel_has_collapse() -- MADV_COLLAPSE: Linux 6.1
    local f = io.popen("uname -r")
    local major, minor = f:read("*a"):match("^(%d+)%.(%d+)")
    f:close()
    major, minor = tonumber(major), tonumber(minor)
    return major and (major > 6 or (major == 6 and minor >= 1))
  end

  it("gives every child and the parent the same data, folded or not", function()
    local out, status = support.run(SCRIPT, "", 120)
    assert.equal(0, status, out)
    assert.truthy(out:match("huge %d+ %d+ %d+ rss %d+ %d+"), out)
  end)

  it("is folded onto huge pages by the 8th spawn, not before, without growing", function()
    local why = heap_not_mallocs()
    if why then return pending(why) end
    if thp_mode() == "never" or thp_mode() == "none" or not kernel_has_collapse() then
      return pending("no transparent huge pages or no MADV_COLLAPSE here")
    end
    local out, status = support.run(SCRIPT, "", 120)
    assert.equal(0, status, out)
    local huge0, huge7, huge1, rss0, rss1 = out:match("huge (%d+) (%d+) (%d+) rss (%d+) (%d+)")
    huge0, huge7, huge1, rss0, rss1 = tonumber(huge0), tonumber(huge7), tonumber(huge1), tonumber(rss0), tonumber(rss1)
    assert.is_true(huge1 >= 20 * 1024, out) -- most of the rows' 31 MiB (KiB here)
    if thp_mode() == "madvise" then -- "always" makes huge pages on its own
      assert.equal(0, huge0, out)
      assert.equal(0, huge7, out) -- a fork or seven do not pay for a fold
    end
    assert.is_true(rss1 <= rss0 + 8 * 1024, out) -- no untouched memory made resident
  end)

  it("is not folded while a child shares it, and is at the first spawn after", function()
    local why = heap_not_mallocs()
    if why then return pending(why) end
    if thp_mode() ~= "madvise" or not kernel_has_collapse() then
      return pending("huge pages are not on advice only here, or no MADV_COLLAPSE")
    end
    -- a fold would copy the pages the sleeping child shares: twice the memory
    local out, status = support.run(HEAP_HUGE .. [[
      local process, queue = concur.process, concur.queue
      local rows = {}
      for i = 1, 300000 do rows[i] = {i, i} end
      local q = queue()
      local sleeper = process.spawn(function() return q:get() end)
      for _ = 1, 12 do assert(process.spawn(function() return #rows end):join(30) == 300000) end
      local shared = heap_huge()
      q:put("done")
      assert(sleeper:join(30) == "done")
      assert(process.spawn(function() return #rows end):join(30) == 300000)
      print("huge " .. shared .. " " .. heap_huge())
    ]], "", 120)
    assert.equal(0, status, out)
    local shared, after = out:match("huge (%d+) (%d+)")
    assert.equal("0", shared, out)
    assert.is_true(tonumber(after) >= 20 * 1024, out)
  end)

  it("keeps big blocks whole through growth, shrinking, strings and a child's writes", function()
    -- build/concur's allocator (concur_alloc) maps blocks of 2 MiB or more
    -- on their own: every way a block crosses that size, with the values checked
    local out, status = support.run([[
      local process = concur.process
      local function huge()
        local f = io.open("/proc/self/smaps_rollup")
        local s = f:read("*a")
        f:close()
        return tonumber(s:match("AnonHugePages:%s+(%d+)"))
      end
      local t = {}
      for i = 1, 1048576 do t[i] = i end -- 16 MiB of array, grown by doubling
      local h = huge()
      local s = 0
      for i = 1, #t do s = s + t[i] end
      assert(s == 1048576 * 1048577 / 2, "sum")
      -- a child writes all over it (copy on write); the parent's is untouched
      local p = process.spawn(function() for i = 1, #t do t[i] = -i end return t[1048576] end)
      assert(p:join(30) == -1048576 and t[1048576] == 1048576, "child")
      -- the array shrinks back under 2 MiB at a rehash
      for i = 1001, #t do t[i] = nil end
      for k = 1, 64 do t["k" .. k] = k end
      collectgarbage()
      for i = 1, 1000 do assert(t[i] == i, "kept " .. i) end
      assert(t.k64 == 64)
      -- strings and buffers across 2 MiB
      local r = string.rep("ab", 3000000)
      assert(#r == 6000000 and r:sub(-3) == "bab" and r:sub(1, 3) == "aba", "rep")
      local parts = {}
      for i = 1, 300000 do parts[i] = string.format("%07d", i) end
      local c = table.concat(parts)
      assert(#c == 2100000 and c:sub(1, 7) == "0000001" and c:sub(-7) == "0300000", "concat")
      t, r, c, parts = nil, nil, nil, nil
      collectgarbage()
      print("huge " .. h)
    ]], "", 120)
    assert.equal(0, status, out)
    local h = tonumber(out:match("huge (%d+)"))
    assert.truthy(h, out)
    if support.flavour == "concur" and (thp_mode() == "madvise" or thp_mode() == "always") then
      assert.is_true(h >= 14 * 1024, out) -- the array on 2 MiB pages (KiB here)
    end
  end)

  it("is not folded with CONCUR_FOLD=0", function()
    local why = heap_not_mallocs()
    if why then return pending(why) end
    if thp_mode() ~= "madvise" then
      return pending("huge pages are not on advice only here")
    end
    local out, status = support.run(SCRIPT, "CONCUR_FOLD=0", 120)
    assert.equal(0, status, out)
    assert.truthy(out:match("huge 0 0 0 "), out)
  end)
end)

describe("process.run", function()
  it("runs a program and returns status, stdout and stderr", function()
    local r = process.run{"sh", "-c", "cat; echo oops >&2; exit 3", stdin = "hello"}
    assert.equal(3, r.status)
    assert.equal("hello", r.stdout)
    assert.equal("oops\n", r.stderr)
  end)

  it("feeds stdin even when the caller's own stdin is closed", function()
    if not io.open("build/concur") then pending("build/concur not built") return end
    local f = io.popen([[build/concur -e 'print(process.run{"cat", stdin = "fed"}.stdout)' <&-]])
    local out = f:read("*a")
    f:close()
    assert.equal("fed\n", out)
  end)

  it("kills a program that passes its timeout", function()
    local t0 = concur.clock()
    local r = process.run{"sleep", "30", timeout = 0.2}
    assert.is_true(r.timeout)
    assert.equal("SIGKILL", r.signal)
    assert.is_true(concur.clock() - t0 < 10)
  end)

  it("raises when the program cannot be started", function()
    assert.has_error(function() process.run{"/nonexistent/program"} end)
  end)

  it("passes large input and output through", function()
    local big = string.rep("0123456789", 100000)
    local r = process.run{"cat", stdin = big}
    assert.equal(#big, #r.stdout)
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() process.run("ls") end)
    assert.has_error(function() process.run{} end)
    assert.has_error(function() process.run{"ls", timeout = -1} end)
  end)
end)
