-- pool lifetimes and outputs seen from outside: progress on a terminal and
-- in a pipe, a journal resumed after the caller was SIGKILLed, Ctrl-C during
-- a map, <close>, and an iterator mapped without a table of its items.
-- Each probe runs in a fresh interpreter of the flavour under test.
local concur = require "concur"
local support = require "spec.support"
local pool, process = concur.pool, concur.process

local function tmp(code)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write('local concur = require "concur" local pool, process = concur.pool, concur.process\n', code)
  f:close()
  return name
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local f = io.popen(cmd .. " 2>&1")
  local out = f:read("*a")
  f:close()
  return out
end

local function gone(pids)
  for _ = 1, 100 do
    local alive = 0
    for _, pid in ipairs(pids) do
      if os.execute("kill -0 " .. pid .. " 2>/dev/null") == true or
        os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0 then alive = alive + 1 end
    end
    if alive == 0 then return true end
    concur.sleep(0.05)
  end
  return false
end

describe("pool progress", function()
  local code = [[
    local p = pool.new { workers = 2, kind = "thread" }
    local r = p:map(function(x) return x end, (function() local t = {} for i = 1, 100 do t[i] = i end return t end)(),
      { progress = PROGRESS, chunksize = 5 })
    p:terminate()
    print("sum", #r)
  ]]

  it("draws on the terminal through a pseudo-terminal when progress = true", function()
    local f = tmp(code:gsub("PROGRESS", "true"))
    local out = sh("timeout 30 script -qec " .. q(support.interp .. " " .. f) .. " /dev/null")
    os.remove(f)
    assert.matches("sum%s+100", out)
    assert.matches("pool%.map", out)
    assert.matches("100/100", out)
  end)

  it("writes plain lines when stderr is not a terminal, with the given label", function()
    local f = tmp(code:gsub("PROGRESS", '"sweep"'))
    local out = sh("timeout 30 " .. support.interp .. " " .. f .. " 2>&1 </dev/null | cat")
    os.remove(f)
    assert.matches("sweep", out)
    assert.matches("100/100", out)
    assert.is_nil(out:find("\r", 1, true))
  end)

  it("prints nothing when progress is off", function()
    local f = tmp(code:gsub("PROGRESS", "false"))
    local out = sh("timeout 30 script -qec " .. q(support.interp .. " " .. f) .. " /dev/null")
    os.remove(f)
    assert.matches("sum%s+100", out)
    assert.is_nil(out:find("pool.map", 1, true))
  end)
end)

describe("pool journal", function()
  it("resumes a map whose caller was SIGKILLed, running only the rest", function()
    local journal, log = os.tmpname(), os.tmpname()
    os.remove(journal)
    local f = tmp(([[
      local me, kill = process.pid(), ...
      local p = pool.new { workers = 2, kind = "process" }
      local items = {}
      for i = 1, 60 do items[i] = i end
      local r = p:map(function(x)
        local l = io.open(%q, "a") l:write(x, "\n") l:close()
        if kill == "kill" and x == 30 then
          concur.sleep(0.6)
          process.run { "kill", "-KILL", tostring(me) }
          concur.sleep(10)
        end
        return x * x
      end, items, { journal = %q, chunksize = 1 })
      local ok = 0
      for i = 1, 60 do if r[i] == i * i then ok = ok + 1 end end
      print("ok", ok)
    ]]):format(log, journal))
    local out1 = sh("timeout 30 " .. support.interp .. " " .. f .. " kill")
    assert.is_nil(out1:match("ok %d+"))
    local first = select(2, io.open(log):read("*a"):gsub("\n", ""))
    assert.is_true(first >= 30, "first run ran " .. first)
    local out2 = sh("timeout 30 " .. support.interp .. " " .. f .. " go")
    assert.matches("ok%s+60", out2)
    local total = select(2, io.open(log):read("*a"):gsub("\n", ""))
    assert.is_true(total - first < 60 - 20, ("second run ran %d items"):format(total - first))
    -- a third run finds everything done
    local out3 = sh("timeout 30 " .. support.interp .. " " .. f .. " go")
    assert.matches("ok%s+60", out3)
    assert.equal(total, select(2, io.open(log):read("*a"):gsub("\n", "")))
    os.remove(f)
    os.remove(journal)
    os.remove(log)
  end)

  it("refuses a journal written for other items", function()
    local journal = os.tmpname()
    os.remove(journal)
    local p = pool.new { workers = 1, kind = "thread" }
    assert.same({ 1, 2, n = 2 }, p:map(function(x) return x end, { 1, 2 }, { journal = journal }))
    local ok, err = pcall(p.map, p, function(x) return x end, { 1, 3 }, { journal = journal })
    assert.is_false(ok)
    assert.matches("pool.map: journal .* was written for a different item list", err)
    assert.same({ 1, 2, n = 2 }, p:map(function(x) return x end, { 1, 2 }, { journal = journal }))
    p:terminate()
    os.remove(journal)
  end)
end)

describe("pool lifetime", function()
  it("Ctrl-C during a map stops every worker and raises interrupted", function()
    local out_file = os.tmpname()
    local f = tmp([[
      local p = pool.new { workers = 2, kind = "process" }
      for _, pid in ipairs(p:worker_ids()) do io.write("PID ", pid, "\n") end
      io.write("READY\n") io.flush()
      local ok, err = pcall(p.map, p, function(x) concur.sleep(30) return x end, { 1, 2, 3, 4 })
      print("raised", concur.interrupted(err), err)
    ]])
    local cmd = ("%s %s > %s 2>&1 & pid=$!; for i in $(seq 100); do grep -q READY %s && break; sleep 0.05; done; " ..
      "sleep 0.3; kill -INT $pid; wait $pid; echo status $?"):format(support.interp, f, out_file, out_file)
    local status = sh("timeout 30 sh -c " .. q(cmd))
    local out = io.open(out_file):read("*a")
    os.remove(f)
    os.remove(out_file)
    local pids = {}
    for pid in out:gmatch("PID (%d+)") do pids[#pids + 1] = pid end
    assert.equal(2, #pids, out)
    assert.matches("raised%s+true", out, nil, status)
    assert.is_true(gone(pids), "workers left behind: " .. table.concat(pids, " "))
  end)

  if _VERSION == "Lua 5.4" and not support.luajit then
    it("closes at the end of a <close> scope", function()
      local chunk = load([[
        local pool = ...
        local pids
        do
          local p <close> = pool.new { workers = 2, kind = "process" }
          pids = p:worker_ids()
          assert(p:map(function(x) return x end, { 1 })[1] == 1)
        end
        return pids
      ]])
      local pids = chunk(pool)
      for i = 1, #pids do pids[i] = tostring(pids[i]) end
      assert.is_true(gone(pids))
    end)
  end

  it("terminate kills busy workers and fails their futures", function()
    local p = pool.new { workers = 2, kind = "process" }
    local pids = p:worker_ids()
    local f = p:submit(function() concur.sleep(30) end)
    concur.sleep(0.1)
    p:terminate()
    assert.is_not_nil(f:error(1))
    for i = 1, #pids do pids[i] = tostring(pids[i]) end
    assert.is_true(gone(pids))
  end)

  it("maps an iterator of 10^6 items lazily: memory stays flat", function()
    local p = pool.new { workers = 2, kind = "thread" }
    local i = 0
    local function gen() i = i + 1; if i <= 1000000 then return i end end
    collectgarbage()
    local base = collectgarbage("count")
    local peak, sum, n = 0, 0, 0
    for _, r in p:imap_unordered(function(x) return x % 7 end, gen, { chunksize = 4096 }) do
      sum = sum + r
      n = n + 1
      if n % 50000 == 0 then
        local c = collectgarbage("count") - base
        if c > peak then peak = c end
      end
    end
    p:terminate()
    assert.equal(1000000, n)
    assert.is_true(peak < 32 * 1024, ("peak %.0f KiB above the start"):format(peak))
  end)
end)
