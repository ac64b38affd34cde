-- Lifecycle: how scripts, threads and processes end (issue 9). Each case
-- runs a script in a fresh interpreter of the flavour under test, bounds it
-- in time, and checks with /proc that no process it started outlives it.
local concur = require "concur"
local process, thread = concur.process, concur.thread
local support = require "spec.support"

-- the scripts run under support.interp: the concur host, or a stock
-- interpreter with the module (flavours it does not know run the host)
local module_flavour = support.module
local seq = 0

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("*a") -- nil when the process went away meanwhile
  f:close()
  return s or ""
end

-- Pids whose command line contains mark (the script and everything it forked).
local function with_mark(mark)
  local found = {}
  local ls = io.popen("ls /proc")
  for name in ls:lines() do
    if name:match("^%d+$") then
      local cmd = slurp("/proc/" .. name .. "/cmdline")
      if cmd:find(mark, 1, true) then found[#found + 1] = tonumber(name) end
    end
  end
  ls:close()
  return found
end

-- Wait up to 3 s for every process carrying mark to be gone; returns the
-- ones left (killed afterwards so a failure does not leave them behind).
local function survivors(mark)
  local deadline = concur.clock() + 3
  local left = with_mark(mark)
  while #left > 0 and concur.clock() < deadline do
    concur.sleep(0.05)
    left = with_mark(mark)
  end
  for _, pid in ipairs(left) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
  return left
end

-- Run code as a script (concur, process, thread, queue and MARK, READY in
-- scope). opts.signal: once the script wrote its pid to READY (call
-- ready()), send that signal. Returns output (stdout+stderr), exit status,
-- seconds taken, and the pids left running afterwards.
local function launch(code, opts)
  opts = opts or {}
  seq = seq + 1
  local mark = ("LIFEMARK%d_%d_%d"):format(process.pid(), seq, math.random(1e9))
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local file, ready, out = dir .. "/s.lua", dir .. "/ready", dir .. "/out"
  local f = io.open(file, "w")
  f:write([[
local concur = require "concur"
local process, thread, queue = concur.process, concur.thread, concur.queue
local MARK, READY = arg[1], arg[2]
local function ready()
  local f = io.open(READY .. ".tmp", "w") f:write(process.pid()) f:close()
  os.rename(READY .. ".tmp", READY)
end
]] .. code)
  f:close()
  local sh = "exec 2>/dev/null\ntimeout -k 2 " .. (opts.limit or 20) .. " " .. support.interp .. " " .. q(file) ..
    " " .. mark .. " " .. q(ready) .. " >" .. q(out) .. " 2>&1 &\n"
  if opts.signal then
    sh = sh .. "i=0; while [ ! -s " .. q(ready) .. " ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done\n" ..
      "sleep 0.2; kill -" .. opts.signal .. " $(cat " .. q(ready) .. ")\n"
  end
  sh = sh .. "wait $!; echo $?"
  local t0 = concur.clock()
  local p = io.popen(sh)
  local status = tonumber(p:read("*a"):match("(%d+)"))
  p:close()
  local took = concur.clock() - t0
  local output = slurp(out)
  local left = survivors(mark)
  os.execute("rm -rf " .. q(dir))
  return output, status, took, left
end

describe("lifecycle", function()
  it("stops workers and exits 143 on SIGTERM, leaving no process behind", function()
    local out, status, took, left = launch([[
      local q = queue()
      for i = 1, 3 do process.spawn(function() concur.sleep(60) end) end
      for i = 1, 2 do thread.new(function(q) return q:get() end, q) end
      ready()
      q:get()
    ]], {signal = "TERM"})
    assert.same({}, left)
    assert.equal(143, status, out)
    assert.is_true(took < 10, "took " .. took)
  end)

  it("stops workers and exits 130 on SIGINT, leaving no process behind", function()
    if module_flavour then
      pending("under a stock interpreter SIGINT is the interpreter's (docs/API.md)")
      return
    end
    local out, status, took, left = launch([[
      local q = queue()
      for i = 1, 3 do process.spawn(function() concur.sleep(60) end) end
      for i = 1, 2 do thread.new(function(q) return q:get() end, q) end
      ready()
      q:get()
    ]], {signal = "INT"})
    assert.same({}, left)
    assert.equal(130, status, out)
    assert.is_true(took < 10, "took " .. took)
  end)

  it("leaves no orphan when the script is killed with SIGKILL", function()
    local out, status, _, left = launch([[
      process.spawn(function()
        process.spawn(function() concur.sleep(60) end)
        concur.sleep(60)
      end)
      for i = 1, 2 do process.spawn(function() concur.sleep(60) end) end
      ready()
      concur.sleep(60)
    ]], {signal = "KILL"})
    assert.equal(137, status, out)
    assert.same({}, left)
  end)

  it("exits with the error status after an uncaught error while workers are blocked", function()
    if module_flavour then
      pending("under a stock interpreter an uncaught error still joins at close (docs/API.md)")
      return
    end
    local out, status, took, left = launch([[
      local q = queue()
      for i = 1, 2 do process.spawn{function() concur.sleep(60) end, name = "sleeper"} end
      for i = 1, 2 do thread.new(function(q) return q:get() end, q) end
      error("boom")
    ]])
    assert.same({}, left)
    assert.equal(1, status, out)
    assert.matches("boom", out)
    assert.matches("stopped", out)
    assert.matches("sleeper", out)
    assert.is_true(took < 10, "took " .. took)
  end)

  it("says what it waits for at close after an uncaught error (stock interpreter)", function()
    if not module_flavour then
      pending("the concur host stops the workers instead (the case above)")
      return
    end
    local out, status, took, left = launch([[
      thread.new(function() concur.sleep(2.5) end)
      error("boom")
    ]])
    assert.same({}, left)
    assert.equal(1, status, out)
    assert.matches("boom", out)
    assert.matches("waiting for thread%-%d+ to finish", out)
    assert.is_true(took < 10, "took " .. took)
  end)

  it("exits with os.exit(1, true) while threads are blocked", function()
    local out, status, took, left = launch([[
      local q = queue()
      process.spawn(function() concur.sleep(60) end)
      for i = 1, 2 do thread.new(function(q) return q:get() end, q) end
      os.exit(1, true)
    ]])
    assert.same({}, left)
    assert.equal(1, status, out)
    assert.is_true(took < 10, "took " .. took)
  end)

  it("refuses an os.exit code that is not an integer, before stopping anything", function()
    local out, status, took, left = launch([[
      local t = thread.new(function() concur.sleep(0.3) return "joined" end)
      for _, bad in ipairs{0/0, 2^63, 2.5, "x", {}} do
        local ok, err = pcall(os.exit, bad)
        print(ok, err)
      end
      print(t:join(5))
    ]])
    assert.same({}, left)
    assert.equal(0, status, out)
    local _, n = out:gsub("os.exit: bad argument #1", "")
    assert.equal(5, n, out)
    assert.matches("joined", out)
  end)

  it("reports a thread that failed and was never joined, once, with its traceback", function()
    local out, status, _, left = launch([[
      local t = thread.new(function() local function deep() error("lost failure") end deep() end)
      while t:alive() do concur.sleep(0.01) end
      collectgarbage() collectgarbage()
    ]])
    assert.same({}, left)
    assert.equal(0, status, out)
    local _, n = out:gsub("lost failure", "")
    assert.equal(1, n, out)
    assert.matches("traceback", out)
  end)

  it("reports a process that failed and was never joined", function()
    local out, status, _, left = launch([[
      process.spawn{function() error("child lost failure") end, name = "lostchild"}
    ]])
    assert.same({}, left)
    assert.equal(0, status, out)
    local _, n = out:gsub("child lost failure", "")
    assert.equal(1, n, out)
    assert.matches("lostchild", out)
  end)

  it("does not report a failure the script joined", function()
    local out, status = launch([[
      local t = thread.new(function() error("seen failure") end)
      local p = process.spawn(function() error("seen failure") end)
      assert(not pcall(t.join, t))
      assert(not pcall(p.join, p))
    ]])
    assert.equal(0, status, out)
    assert.is_nil(out:find("seen failure"), out)
  end)

  it("gives every forked child its own random stream", function()
    local ps, seen = {}, {}
    for i = 1, 3 do ps[i] = process.spawn(function() return math.random(1, 1000000) end) end
    for i = 1, 3 do seen[ps[i]:join(10)] = true end
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.equal(3, n)
  end)

  it("gives every thread its own random stream", function()
    local seen, n = {}, 0
    for i = 1, 20 do
      local v = thread.new(function() return math.random(1, 1000000000) end):join(10)
      if not seen[v] then n = n + 1 end
      seen[v] = true
    end
    assert.is_true(n >= 19, n .. " distinct of 20")
  end)

  it("joins a child's own children before the child ends", function()
    local out, status, _, left = launch([[
      local path = READY .. ".grandchild"
      local p = process.spawn(function()
        process.spawn(function()
          concur.sleep(0.5)
          local f = io.open(path, "w") f:write("done") f:close()
        end)
        return true
      end)
      assert(p:join(10))
      local t0 = concur.clock()
      while p:alive() and concur.clock() - t0 < 10 do concur.sleep(0.02) end
      local f = io.open(path)
      print("grandchild", f and f:read("*a") or "still running when its parent ended")
    ]])
    assert.same({}, left)
    assert.equal(0, status, out)
    assert.matches("grandchild%s+done", out)
  end)

  it("does not let concurrent spawns delay process.run or a join", function()
    local out, status, _, left = launch([[
      local t = thread.new(function()
        local ps = {}
        local stop = concur.clock() + 1.5
        while concur.clock() < stop do
          ps[#ps + 1] = process.spawn(function() concur.sleep(4) end)
          concur.sleep(0.005)
        end
        for _, p in ipairs(ps) do p:join(10) end
      end)
      local run, join = 0, 0
      local stop = concur.clock() + 1.5
      while concur.clock() < stop do
        local t0 = concur.clock()
        process.run{"true"}
        local t1 = concur.clock()
        process.spawn(function() return 1 end):join()
        run, join = math.max(run, t1 - t0), math.max(join, concur.clock() - t1)
      end
      t:join()
      print("run", run, "join", join)
    ]], {limit = 40})
    assert.same({}, left)
    assert.equal(0, status, out)
    local run, join = out:match("run%s+(%S+)%s+join%s+(%S+)")
    -- an inherited pipe end would hold them for the sleepers' 4 s
    assert.is_true(tonumber(run) < 3, out)
    assert.is_true(tonumber(join) < 3, out)
  end)

  it("reaps the child of a thread cancelled while it joins it", function()
    local out, status, _, left = launch([[
      local q = queue()
      local t = thread.new(function(q)
        local p = process.spawn(function() concur.sleep(60) end)
        q:put(p.pid)
        return p:join()
      end, q)
      local pid = q:get(10)
      t:cancel()
      t:join(10)
      local f = io.open("/proc/" .. pid .. "/stat")
      local st = f and f:read("*a") or ""
      if f then f:close() end
      print("child", st == "" and "gone" or st:match("%) (%a)"))
    ]])
    assert.same({}, left)
    assert.equal(0, status, out)
    assert.matches("child%s+gone", out)
  end)

  it("cancels what a cancelled thread started", function()
    local t = thread.new(function()
      local inner = concur.thread.new(function() concur.sleep(5) end)
      return inner:join()
    end)
    concur.sleep(0.2)
    local t0 = concur.clock()
    t:cancel()
    t:join(10)
    assert.is_true(concur.clock() - t0 < 3, "took " .. (concur.clock() - t0))
  end)

  it("leaves no orphan when a thread calls os.exit", function()
    local out, status, took, left = launch([[
      local t = thread.new(function()
        process.spawn(function() concur.sleep(60) end)
        os.exit(3)
      end)
      t:join()
      concur.sleep(30)
    ]])
    assert.same({}, left)
    assert.equal(3, status, out)
    assert.is_true(took < 10, "took " .. took)
  end)

  it("lets a cancelled thread see it with thread.cancelled()", function()
    local t = thread.new(function()
      local n = 0
      while not concur.thread.cancelled() do
        pcall(function() concur.sleep(0.01) end)
        n = n + 1
      end
      return "stopped", n
    end)
    assert.is_false(thread.cancelled())
    concur.sleep(0.1)
    t:cancel()
    local r = t:join(5)
    assert.is_true(r == "stopped" or r == nil)
    assert.is_false(t:alive())
  end)
end)
