-- concur.progress: a shared counter that workers step and that draws itself
-- on stderr (a line redrawn in place on a terminal, plain lines in a log).
-- What is drawn is checked in a fresh interpreter of the flavour under test,
-- through a pseudo-terminal (script(1)) or a pipe; counting across threads
-- and processes runs here, with no total, so this file's own stderr gets no
-- line until a summary.
local concur = require "concur"
local support = require "spec.support"
local process, thread, queue, pipe, shared = concur.process, concur.thread, concur.queue,
  concur.pipe, concur.shared

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Run code (concur is a local) with stderr on a pseudo-terminal COLUMNS
-- wide (script(1) gives it no size of its own, so COLUMNS is what counts).
-- Returns what the terminal received, and the exit status.
local function on_tty(code, columns, limit)
  local f = os.tmpname()
  local h = io.open(f, "w")
  h:write('local concur = require "concur" ', code)
  h:close()
  local cmd = "timeout -k 2 " .. (limit or 30) .. " script -qec " ..
    q("env COLUMNS=" .. (columns or 80) .. " " .. support.interp .. " " .. f) ..
    " /dev/null </dev/null 2>&1; echo \"<exit $?>\""
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  os.remove(f)
  local status = tonumber(out:match("<exit (%d+)>%s*$"))
  return (out:gsub("<exit %d+>%s*$", "")), status
end

-- The redraws: a "\r" that starts a line rather than ending one (the
-- terminal turns each "\n" into "\r\n").
local function redraws(out)
  local n = 0
  for _ in out:gmatch("\r[^\n]") do n = n + 1 end
  return n
end

-- Every piece of text between two carriage returns or newlines, with the
-- erase-to-end-of-line sequence taken out: what one draw put on a row.
local function rows(out)
  local t = {}
  for piece in (out:gsub("\27%[K", "")):gmatch("[^\r\n]+") do t[#t + 1] = piece end
  return t
end

local function has_script() return os.execute("command -v script >/dev/null 2>&1") end

describe("concur.progress on a terminal", function()
  if not has_script() then
    pending("script(1) is not installed (bsdutils)")
    return
  end

  it("redraws one line in place with label, counts, percent and bar, then the summary", function()
    local out, rc = on_tty([[
      local p = concur.progress(30, "fetching")
      for i = 1, 30 do p:step() concur.sleep(0.01) end
      p:done()
    ]])
    assert.equal(0, rc, out)
    assert.is_true(redraws(out) >= 2, out)
    assert.matches("\rfetching  %d+/30 +%d+%%  %[[#.]+%]  [%d.]+k?/s  ETA %d+:%d%d\27%[K", out)
    assert.matches("\rfetching: 30/30 done in [%d.]+s %([%d.]+k?/s%)\27%[K\r?\n", out)
    assert.is_nil(out:find("fetching: 30/30 done.*\rfetching  "), "nothing drawn after the summary")
  end)

  it("keeps every redrawn line within the terminal width, cutting the label first", function()
    local out, rc = on_tty([[
      local p = concur.progress(20, string.rep("long label ", 10))
      for i = 1, 20 do p:step() concur.sleep(0.01) end
      p:done()
    ]], 40)
    assert.equal(0, rc, out)
    local drawn = 0
    for _, row in ipairs(rows(out)) do
      if not row:find("done in") then
        drawn = drawn + 1
        assert.is_true(#row <= 39, ("%d columns: %q"):format(#row, row))
        assert.matches("%d+/20 +%d+%%", row)
      end
    end
    assert.is_true(drawn >= 1, out)
  end)

  it("cuts a UTF-8 label between characters and shows control characters as ?", function()
    local out, rc = on_tty([[
      local p = concur.progress(10, string.rep("\195\169", 40) .. "\n\r\27x")
      for i = 1, 10 do p:step() concur.sleep(0.02) end
      p:done()
    ]], 40)
    assert.equal(0, rc, out)
    local drawn = 0
    for _, row in ipairs(rows(out)) do
      if row:find("%d+/10") and not row:find("done in") then
        drawn = drawn + 1
        local cols = select(2, row:gsub("[^\128-\191]", ""))
        assert.is_true(cols <= 39, ("%d columns: %q"):format(cols, row))
        assert.matches("^\195\169", row)
        assert.is_true(utf8 == nil or utf8.len(row) ~= nil, "cut inside a character: " .. row)
      end
    end
    assert.is_true(drawn >= 1, out)
    assert.matches("\195\169%?%?%?x: 10/10 done in", out)
  end)

  it("shows count, rate and elapsed time but no bar or ETA without a total", function()
    local out, rc = on_tty([[
      local p = concur.progress(nil, "scan")
      for i = 1, 20 do p:step(3) concur.sleep(0.01) end
      p:done()
    ]])
    assert.equal(0, rc, out)
    assert.matches("\rscan  %d+  [%d.]+k?/s  %d+:%d%d\27%[K", out)
    assert.matches("scan: 60 done in", out)
    assert.is_nil(out:find("%[[#.]"), out)
    assert.is_nil(out:find("ETA"), out)
    assert.is_nil(out:find("%%"), out)
  end)

  it("redraws a tight loop of 10^6 steps a handful of times, not once per step", function()
    local out, rc = on_tty([[
      local p = concur.progress(10^6, "tight")
      local t0 = concur.clock()
      for i = 1, 10^6 do p:step() end
      local secs = concur.clock() - t0
      p:done()
      print(("<secs %.3f>"):format(secs))
    ]], 80, 60)
    assert.equal(0, rc, out)
    local secs = tonumber(out:match("<secs ([%d.]+)>"))
    local n = redraws(out) - 1 -- the summary's own \r
    -- at most one per 100 ms slot, plus the first step's
    assert.is_true(n >= 1 and n <= secs * 10 + 2, ("%d redraws in %.3f s"):format(n, secs))
    assert.matches("tight: 1000000/1000000 done in", out)
  end)

  it("ends an open line with a newline when the script ends without done", function()
    local code = [[
      local p = concur.progress(10, "unfinished")
      p:step()
    ]]
    for _, ending in ipairs{"", "os.exit(0)", "p = nil collectgarbage() collectgarbage() io.stderr:write('after gc\\n')"} do
      local out, rc = on_tty(code .. ending)
      assert.equal(0, rc, out)
      assert.matches("\runfinished  1/10 +10%%[^\r\n]*\27%[K\r?\n" ..
        (ending:find("after gc") and "after gc\r?\n" or "") .. "$", out, ending)
      assert.is_nil(out:find("done in"), out)
    end
  end)

  it("puts an uncaught error's message on a line of its own, not after an open line", function()
    if not support.interp:find("concur") then return end -- the host reports it; stock Lua is Lua's
    local out, rc = on_tty([[
      local p = concur.progress(10, "failing")
      p:step()
      error("boom")
    ]])
    assert.equal(1, rc, out)
    -- the open line is ended before the message, and only once
    assert.matches("\rfailing  1/10 +10%%[^\r\n]*\27%[K\r?\n[^\r\n]*boom", out)
    assert.is_nil(out:find("boom.*\r?\n\r?\n%s*$"), out)
  end)

  it("ends a line a forked child left open when the child ends without done", function()
    local out, rc = on_tty([[
      local c = concur.process.spawn(function() local p = concur.progress(10, "child") p:step() return 1 end)
      c:join(20)
      io.stderr:write("after\n")
    ]])
    assert.equal(0, rc, out)
    assert.matches("\rchild  1/10 +10%%[^\r\n]*\27%[K\r?\nafter\r?\n$", out)
  end)

  it("draws steps taken by a forked child and a thread, and goes on after they end", function()
    local out, rc = on_tty([[
      local p = concur.progress(60, "kids")
      local function work() for i = 1, 20 do p:step() concur.sleep(0.01) end end
      local ws = {concur.process.spawn(work), concur.thread.new(work)}
      for _, w in ipairs(ws) do w:join(20) end
      collectgarbage() collectgarbage()
      work()
      p:done()
    ]])
    assert.equal(0, rc, out)
    local after = false -- a line drawn once the workers' copies were gone
    for _, row in ipairs(rows(out)) do
      local c = tonumber(row:match("^kids  (%d+)/60"))
      if c and c > 40 then after = true end
    end
    assert.is_true(after, out)
    assert.matches("kids: 60/60 done in", out)
  end)
end)

describe("concur.progress in a log", function()
  it("writes a plain line every tenth of the total, no \\r, and the summary", function()
    local out, rc = support.run([[
      local p = concur.progress(1000, "batch")
      for i = 1, 1000 do p:step() end
      p:done()
    ]])
    assert.equal(0, rc, out)
    assert.is_nil(out:find("\r"), out)
    assert.is_nil(out:find("\27"), out)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(11, #lines, out)
    for k = 1, 10 do
      assert.matches(("^batch: %d/1000 %%(%d%%%%%%) [%%d.]+[kMG]?/s ETA %%d+:%%d%%d$"):format(k * 100, k * 10), lines[k])
    end
    assert.matches("^batch: 1000/1000 done in [%d.]+s %([%d.]+[kMG]?/s%)$", lines[11])
  end)

  it("survives stderr being a pipe nobody reads (no SIGPIPE), and keeps counting", function()
    if not os.execute("command -v perl >/dev/null 2>&1") then return pending("no perl") end
    local f = os.tmpname()
    local h = io.open(f, "w")
    h:write([[
      local concur = require "concur"
      local p = concur.progress(10, "nobody reads")
      for i = 1, 10 do p:step() end
      p:done()
      print("survived", p:count())
    ]])
    h:close()
    -- stderr: the write end of a pipe whose read end is already closed
    local broken = [[perl -e 'pipe(R, W) or die; close R; open(STDERR, ">&", \*W) or die; ]] ..
      [[$SIG{PIPE} = "DEFAULT"; exec @ARGV' ]]
    local p = io.popen("timeout -s KILL 20 " .. broken .. support.interp .. " " .. f ..
      "; echo \"<exit $?>\"")
    local out = p:read("*a")
    p:close()
    os.remove(f)
    assert.matches("survived\t10\n<exit 0>", out)
  end)

  it("drops lines rather than block a stepper when stderr is a full pipe", function()
    if not os.execute("command -v perl >/dev/null 2>&1") then return pending("no perl") end
    local f = os.tmpname()
    local h = io.open(f, "w")
    h:write([[
      local concur = require "concur"
      local p = concur.progress(10, "stalled")
      for i = 1, 10 do p:step() end
      print("stepped", p:count())
    ]])
    h:close()
    -- stderr: a pipe filled to the brim whose reader (the child itself) never reads
    local full = [[perl -e '$^F = 100; use Fcntl; pipe(R, W) or die; ]] ..
      [[my $fl = fcntl(W, F_GETFL, 0); fcntl(W, F_SETFL, $fl | O_NONBLOCK); ]] ..
      [[while (syswrite(W, "x" x 4096)) {} fcntl(W, F_SETFL, $fl); ]] ..
      [[open(STDERR, ">&", \*W) or die; exec @ARGV' ]]
    -- exec'd straight from perl, so the timeout's SIGKILL reaches the interpreter
    local p = io.popen("timeout -s KILL 10 " .. full .. support.interp .. " " .. f ..
      "; echo \"<exit $?>\"")
    local out = p:read("*a")
    p:close()
    os.remove(f)
    assert.matches("stepped\t10\n<exit 0>", out)
  end)

  it("writes one line per tenth when steps jump across several at once", function()
    local out, rc = support.run([[
      local p = concur.progress(100, "jumps")
      p:step(35) p:step(1) p:step(64) p:step(50)
      p:done()
    ]])
    assert.equal(0, rc, out)
    local n = 0
    for _ in out:gmatch("jumps: %d+/100 %(") do n = n + 1 end
    assert.equal(2, n, out) -- at 35 (3 tenths) and at 100
    assert.matches("jumps: 35/100 %(35%%%)", out)
    assert.matches("jumps: 100/100 done in", out)
  end)

  it("writes only the summary for an unknown total done within 10 s", function()
    local out, rc = support.run([[
      local p = concur.progress()
      for i = 1, 1000 do p:step() end
      p:done()
    ]])
    assert.equal(0, rc, out)
    assert.matches("^1000 done in [%d.]+s %([%d.]+[kMG]?/s%)\n$", out)
  end)

  it("clamps steps past the total in what it shows, and counts them", function()
    local out, rc = support.run([[
      local p = concur.progress(100, "over")
      p:step(150)
      print(p:count(), tostring(p))
      p:done()
    ]])
    assert.equal(0, rc, out)
    assert.matches("150\tconcur.progress%(over: 100/100 %(100%%%)", out)
    assert.matches("over: 100/100 done in", out)
    assert.is_nil(out:find("150/100"), out)
  end)

  it("writes the summary once when done is called twice, and nothing after", function()
    local out, rc = support.run([[
      local p = concur.progress(10, "twice")
      p:step(10)
      p:done() p:done()
      p:step() p:step(5)
      print(p:count(), p:finished())
    ]])
    assert.equal(0, rc, out)
    local n = 0
    for _ in out:gmatch("done in") do n = n + 1 end
    assert.equal(1, n, out)
    assert.matches("16\ttrue", out)
  end)
end)

describe("concur.progress drawn by several workers", function()
  it("writes whole lines, one per tenth and in order, when 2 threads and 2 processes step", function()
    local out, rc = support.run([[
      local p = concur.progress(4000, "mixed")
      local ws = {}
      for k = 1, 2 do
        ws[#ws + 1] = concur.thread.new(function() for i = 1, 1000 do p:step() end end)
        ws[#ws + 1] = concur.process.spawn(function() for i = 1, 1000 do p:step() end end)
      end
      for _, w in ipairs(ws) do w:join(30) end
      p:done()
    ]])
    assert.equal(0, rc, out)
    local tenths, n, last = {}, 0, -1
    for l in out:gmatch("[^\n]+") do
      n = n + 1
      local c, pct = l:match("^mixed: (%d+)/4000 %((%d+)%%%) [%d.]+[kMG]?/s ETA %d+:%d%d$")
      if c then
        assert.is_true(tonumber(c) >= tonumber(pct) * 40, l)
        assert.is_true(tonumber(c) > last, "a line went back: " .. l)
        last = tonumber(c)
        assert.is_nil(tenths[pct], "tenth drawn twice: " .. l)
        tenths[pct] = true
      else
        assert.matches("^mixed: 4000/4000 done in [%d.]+s %([%d.]+[kMG]?/s%)$", l)
      end
    end
    assert.equal(11, n, out)
  end)

  it("redraws whole lines on a terminal when 2 threads step", function()
    if not has_script() then return pending("script(1) is not installed") end
    local out, rc = on_tty([[
      local p = concur.progress(400, "threads")
      local ws = {}
      for k = 1, 2 do
        ws[k] = concur.thread.new(function()
          for i = 1, 200 do p:step() concur.sleep(0.001) end
        end)
      end
      for _, w in ipairs(ws) do w:join(30) end
      p:done()
    ]])
    assert.equal(0, rc, out)
    for _, row in ipairs(rows(out)) do
      if not row:find("done in") then
        assert.matches("^threads  %d+/400 +%d+%%  %[[#.]+%]  [%d.]+k?/s  ETA [%d:?]+$", row)
      end
    end
    assert.matches("threads: 400/400 done in", out)
  end)
end)

describe("concur.progress values", function()
  it("reads back count, total, label and tostring", function()
    local p = concur.progress(nil, "values")
    assert.equal(0, p:count())
    assert.is_nil(p:total())
    assert.equal("values", p:label())
    p:step() p:step(4)
    assert.equal(5, p:count())
    assert.matches("^concur.progress%(values: 5 ", tostring(p))
    local t = concur.progress(0)
    assert.is_nil(t:total())
    assert.equal("", t:label())
    p:done()
    local e = p:elapsed()
    assert.is_true(p:finished())
    concur.sleep(0.02)
    assert.equal(e, p:elapsed()) -- frozen at done
    local u = concur.progress(2^53, "big")
    assert.equal(2^53, u:total())
    assert.is_false(u:finished())
  end)

  it("refuses bad totals and labels with errors that name the argument", function()
    for _, bad in ipairs{-1, 0.5, 0/0, math.huge, -math.huge, 2^63, 2^53 + 2, "10", {}, true} do
      local ok, err = pcall(concur.progress, bad)
      assert.is_false(ok, tostring(bad))
      assert.matches("^concur.progress: bad argument #1 %(total", err)
    end
    local ok, err = pcall(concur.progress, 10, 42)
    assert.is_false(ok)
    assert.matches("concur.progress: bad argument #2 %(label: string expected, got number%)", err)
    ok, err = pcall(concur.progress, 10, string.rep("x", 201))
    assert.is_false(ok)
    assert.matches("label too long", err)
  end)

  it("refuses bad steps, leaving the count unchanged", function()
    local p = concur.progress(nil, "bad steps")
    p:step(3)
    for _, bad in ipairs{-1, 0.5, 0/0, math.huge, 2^63, -2^63, "1", {}} do
      local ok, err = pcall(p.step, p, bad)
      assert.is_false(ok, tostring(bad))
      assert.matches("^progress:step: bad argument #1 %(n", err)
    end
    p:step(2^53 - 3)
    local ok, err = pcall(p.step, p, 1)
    assert.is_false(ok)
    assert.matches("progress:step: the count 9007199254740992 %+ 1 would pass 2%^53", err)
    assert.equal(2^53, p:count())
    ok, err = pcall(p.step, {}, 1)
    assert.is_false(ok)
    assert.matches("progress:step: bad self %(progress expected, got table%)", err)
  end)
end)

describe("concur.progress across workers", function()
  local N = 20000

  it("adds steps from 2 threads exactly (as argument and as upvalue)", function()
    local p = concur.progress()
    local a = thread.new(function(pp, n) for i = 1, n do pp:step() end end, p, N)
    local b = thread.new(function() for i = 1, N do p:step(2) end end)
    a:join(30)
    b:join(30)
    assert.equal(3 * N, p:count())
  end)

  it("adds steps from 2 processes exactly (as argument and as upvalue)", function()
    local p = concur.progress()
    local a = process.spawn(function(pp, n) for i = 1, n do pp:step() end return true end, p, N)
    local b = process.spawn(function() for i = 1, N do p:step(2) end return true end)
    assert.is_true(a:join(30))
    assert.is_true(b:join(30))
    assert.equal(3 * N, p:count())
  end)

  it("travels in queue and pipe messages and in list and dict items, to threads and processes", function()
    local p = concur.progress()
    local function carriers()
      local qu, l, d = queue(), shared.list(), shared.dict()
      local w, r = pipe()
      qu:put({prog = p})
      w:send(p)
      l:append(p)
      d.prog = p
      return qu, r, l, d
    end
    local function work(qq, rr, ll, dd)
      qq:get(5).prog:step(1)
      rr:recv(5):step(10)
      ll[1]:step(100)
      dd.prog:step(1000)
      return true
    end
    local t = thread.new(work, carriers())
    local c = process.spawn(work, carriers())
    assert.is_true(t:join(30))
    assert.is_true(c:join(30))
    assert.equal(2222, p:count())
  end)

  it("keeps the count of steps taken before a worker was SIGKILLed", function()
    local p = concur.progress()
    local ready = concur.lock.event()
    local c = process.spawn(function()
      p:step(7)
      ready:set()
      while true do p:step() end
    end)
    assert.is_true(ready:wait(10))
    c:kill("SIGKILL")
    assert.is_false((pcall(c.join, c, 10)))
    local n = p:count()
    assert.is_true(n >= 7)
    p:step()
    assert.equal(n + 1, p:count())
  end)
end)
