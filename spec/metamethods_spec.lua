-- Every method and metamethod of every concur type, called with a wrong
-- receiver or after its finalizer ran, raises a clear error (never a crash);
-- process and thread errors name the function, never '?'.
local concur = require "concur"
local process, thread = concur.process, concur.thread

-- The probes run in a child interpreter (the one running this spec), so a
-- crash is a failed expectation with the last call printed, not a dead run.
local interpreter = arg and arg[-1]

-- what an error says io.stdout is: its __name (FILE*), or userdata on LuaJIT
local FILE = (getmetatable(io.stdout).__name or "userdata"):gsub("%*", "%%*")

-- Checks that could crash on a regression run in a forked child: a crash
-- there fails this test ("killed by SIGSEGV") instead of ending the run.
local function in_child(f)
  local p = process.spawn(function() f() return "ok" end)
  assert.equal("ok", p:join(30))
end

local function run_probe(source)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(source)
  f:close()
  local flavour = os.getenv("CONCUR_TEST_FLAVOUR") or ""
  local r
  if flavour:match("^asan%-") then -- the ASan runtime must be preloaded into the stock interpreter
    r = process.run{"env", "LD_PRELOAD=" .. os.getenv("PWD") .. "/build/asan/libasan-fork.so", interpreter, name,
                    timeout = 60}
  else
    r = process.run{interpreter, name, timeout = 60}
  end
  os.remove(name)
  return r, r.stdout .. r.stderr
end

local SWEEP = [==[
local concur = require "concur"
local process, thread, shared, queue, pipe, lock = concur.process, concur.thread, concur.shared,
  concur.queue, concur.pipe, concur.lock
io.stdout:setvbuf("line")

local function make()
  local a = pipe()
  return {
    list = shared.list(), dict = shared.dict(), queue = queue(), lock = lock(),
    rlock = lock.rlock(), semaphore = lock.semaphore(1), event = lock.event(),
    condition = lock.condition(), barrier = lock.barrier(2), pipe = a,
    process = process.spawn(function() end), thread = thread.new(function() end),
  }
end
local live, dead = make(), make()
local types = {}
for k in pairs(live) do types[#types + 1] = k end
table.sort(types)

-- every function a handle of this metatable exposes: metamethods and methods
local function functions(mt)
  local fs = {}
  for k, v in pairs(mt) do
    if type(v) == "function" then fs[#fs + 1] = {k, v} end
  end
  local methods = mt.__index
  if type(methods) == "function" then methods = select(2, debug.getupvalue(methods, 1)) end
  if type(mt.methods) == "table" then methods = mt.methods end
  if type(methods) == "table" then
    for k, v in pairs(methods) do
      if type(v) == "function" then fs[#fs + 1] = {k, v} end
    end
  end
  table.sort(fs, function(a, b) return a[1] < b[1] end)
  return fs
end

local calls, bad = 0, 0
local function expect_error(label, ok, err, may_return)
  calls = calls + 1
  if ok then
    if not may_return then
      bad = bad + 1
      print("BAD " .. label .. ": returned instead of raising")
    end
    return
  end
  err = tostring(err)
  local clear = err:match("expected, got") or err:match("released") or err:match("finalized")
  if not clear or err:match("'%?'") then
    bad = bad + 1
    print("BAD " .. label .. ": " .. err)
  end
end

for _, name in ipairs(types) do
  print("CALL " .. name .. ".__gc by hand, twice")
  local h = dead[name]
  getmetatable(h).__gc(h)
  getmetatable(h).__gc(h)
end

local others = {
  {"a table", {}}, {"io.stdout", io.stdout}, {"nil", nil}, {"a number", 42}, {"a string", "s"},
  {"a function", print}, {"a coroutine", coroutine.create(print)}, {"true", true},
}
if newproxy then -- LuaJIT: a userdata given a copy of every field of a handle's metatable
  local forged = newproxy(true)
  for k, v in pairs(getmetatable(live.lock)) do getmetatable(forged)[k] = v end
  others[#others + 1] = {"a forged proxy", forged}
end
for _, name in ipairs(types) do
  local mt = getmetatable(live[name])
  local receivers = {}
  for _, r in ipairs(others) do receivers[#receivers + 1] = r end
  for _, other in ipairs(types) do
    if other ~= name then
      receivers[#receivers + 1] = {"a " .. other, live[other]}
      receivers[#receivers + 1] = {"a finalized " .. other, dead[other]}
    end
  end
  for _, f in ipairs(functions(mt)) do
    local fname, fn = f[1], f[2]
    for _, r in ipairs(receivers) do
      local label = name .. "." .. fname .. " with " .. r[1]
      print("CALL " .. label)
      local ok, err = pcall(fn, r[2], 1, 1)
      -- __eq and __index may answer (false; a method found by name), and
      -- the default __gc/__tostring of shared objects serve every concur type
      local rname = type(r[2]) == "userdata" and getmetatable(r[2]).__name
      local shared_object = rname and rname:match("^concur%.") and rname ~= "concur.process" and
        rname ~= "concur.thread"
      local handle_default = (fname == "__gc" or fname == "__tostring") and
        name ~= "process" and name ~= "thread" and shared_object
      expect_error(label, ok, err, fname == "__eq" or fname == "__index" or handle_default)
    end
  end
end

-- a finalized handle of the right type: every method raises
for _, name in ipairs(types) do
  local h = dead[name]
  for _, f in ipairs(functions(getmetatable(h))) do
    if f[1] ~= "__gc" then
      local label = name .. "." .. f[1] .. " on a finalized handle"
      print("CALL " .. label)
      local ok, err = pcall(f[2], h, 1, 1)
      expect_error(label, ok, err, f[1] == "__eq" or f[1] == "__index" or f[1] == "__tostring")
    end
  end
end
print("SWEEP DONE", calls, bad)
]==]

local FINALIZED = [==[
local concur = require "concur"
local thread, process = concur.thread, concur.process
io.stdout:setvbuf("no")
local function on_close(f)
  if newproxy then -- LuaJIT runs __gc on userdata only
    local u = newproxy(true)
    getmetatable(u).__gc = f
    return u
  end
  return setmetatable({}, {__gc = f})
end
-- made before T and P, so finalized after them when the state closes
KEEP = on_close(function()
  for _, m in ipairs{"alive", "join", "cancel"} do print("thread:" .. m, pcall(T[m], T)) end
  print("tostring(T)", pcall(tostring, T))
  for _, m in ipairs{"alive", "join", "kill"} do print("process:" .. m, pcall(P[m], P)) end
  print("P.pid", pcall(function() return P.pid end))
  print("tostring(P)", pcall(tostring, P))
  print("finalizer done")
end)
T = thread.new(function() return 1 end)
P = process.spawn(function() return 1 end)
]==]

describe("wrong receivers", function()
  it("every method and metamethod of every concur type raises a clear error, never crashes", function()
    if not interpreter then return pending("no interpreter in arg[-1]") end
    local r, out = run_probe(SWEEP)
    local last = out:match("CALL ([^\n]*)\n[^\n]*$") or out:sub(-400)
    assert.equal(0, r.status, "the sweep died (status " .. r.status .. ") at: " .. last)
    local calls, bad = out:match("SWEEP DONE%s+(%d+)%s+(%d+)")
    assert.is_not_nil(calls, out:sub(-600))
    local bads = {}
    for line in out:gmatch("BAD [^\n]*") do bads[#bads + 1] = line end
    assert.equal(0, tonumber(bad), table.concat(bads, "\n"))
    assert.is_true(tonumber(calls) > 1000)
  end)

  it("names the expected type and what it got, as stock Lua does", function() in_child(function()
    local l = concur.shared.list()
    local t = thread.new(function() return true end)
    local p = process.spawn(function() end)
    local cases = {
      {getmetatable(concur.lock()).__tostring, {}, "lock:__tostring: bad self %(lock expected, got table%)"},
      {getmetatable(l).__gc, io.stdout, "list:__gc: bad self %(list expected, got " .. FILE .. "%)"},
      {getmetatable(concur.queue()).__eq, 5, "queue:__eq: bad self %(queue expected, got number%)"},
      {getmetatable(t).__gc, {}, "thread:__gc: bad self %(thread expected, got table%)"},
      {getmetatable(t).__gc, io.stdout, "thread:__gc: bad self %(thread expected, got " .. FILE .. "%)"},
      {getmetatable(t).__tostring, 42, "thread:__tostring: bad self %(thread expected, got number%)"},
      {getmetatable(p).__gc, io.stdout, "process:__gc: bad self %(process expected, got " .. FILE .. "%)"},
      {getmetatable(p).__gc, l, "process:__gc: bad self %(process expected, got concur.list%)"},
      {getmetatable(p).__tostring, {}, "process:__tostring: bad self %(process expected, got table%)"},
      {t.join, {}, "thread:join: bad self %(thread expected, got table%)"},
      {p.join, t, "process:join: bad self %(process expected, got concur.thread%)"},
      {l.append, io.stdout, "list:append: bad self %(list expected, got " .. FILE .. "%)"},
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(c[1], c[2])
      assert.is_false(ok)
      assert.matches(c[3], err)
    end
    assert.is_true(t:join(10))
    p:join(10)
  end) end)

  it("keeps the process and thread handles usable after a wrong-typed __gc call", function() in_child(function()
    local t = thread.new(function() return "still here" end)
    local p = process.spawn(function() return "still here" end)
    pcall(getmetatable(t).__gc, io.stdout)
    pcall(getmetatable(p).__gc, io.stdout)
    pcall(getmetatable(p).__gc, t)
    assert.equal("still here", t:join(10))
    assert.equal("still here", p:join(10))
  end) end)
end)

describe("finalized handles", function()
  it("a thread or process handle used after its finalizer ran raises on every method", function() in_child(function()
    local t = thread.new(function() return 1 end)
    local p = process.spawn(function() return 1 end)
    getmetatable(t).__gc(t)
    getmetatable(p).__gc(p)
    for _, m in ipairs{"join", "alive", "cancel"} do
      local ok, err = pcall(t[m], t)
      assert.is_false(ok)
      assert.matches("thread:" .. m .. ": the thread handle was finalized", err)
    end
    for _, m in ipairs{"join", "alive", "kill"} do
      local ok, err = pcall(p[m], p)
      assert.is_false(ok)
      assert.matches("process:" .. m .. ": the process handle was finalized", err)
    end
    local ok, err = pcall(function() return p.pid end)
    assert.is_false(ok)
    assert.matches("process.pid: the process handle was finalized", err)
    assert.equal("thread (finalized)", tostring(t))
    assert.equal("process (finalized)", tostring(p))
  end) end)

  it("a finalizer at exit that uses handles finalized before it gets errors, not a crash", function()
    if not interpreter then return pending("no interpreter in arg[-1]") end
    local r, out = run_probe(FINALIZED)
    assert.equal(0, r.status, out)
    assert.matches("thread:alive\tfalse\t[^\n]*the thread handle was finalized", out)
    assert.matches("thread:join\tfalse\t[^\n]*the thread handle was finalized", out)
    assert.matches("process:alive\tfalse\t[^\n]*the process handle was finalized", out)
    assert.matches("process:kill\tfalse\t[^\n]*the process handle was finalized", out)
    assert.matches("P.pid\tfalse\t[^\n]*the process handle was finalized", out)
    assert.matches("finalizer done", out)
  end)
end)

describe("process and thread argument errors", function()
  local function raises(pattern, f, ...)
    local ok, err = pcall(f, ...)
    assert.is_false(ok, "expected an error matching " .. pattern)
    assert.matches(pattern, err)
    assert.is_nil(err:find("'?'", 1, true), err)
  end

  it("process.run refuses an argument with a NUL byte, naming its index", function()
    raises("process.run: bad argument #1 %(field %[1%] contains a NUL byte%)", process.run,
      {"echo\0evil"})
    raises("process.run: bad argument #1 %(field %[3%] contains a NUL byte%)", process.run,
      {"echo", "fine", "cut\0here"})
    assert.equal("a b\n", process.run{"echo", "a", "b"}.stdout)
  end)

  it("process.run names a bad stdin or timeout field", function()
    raises("process.run: bad field 'stdin' %(string expected, got table%)", process.run,
      {"cat", stdin = {}})
    raises("process.run: bad field 'timeout' %(number expected, got table%)", process.run,
      {"cat", timeout = {}})
    raises("process.run: bad field 'timeout' %(must be >= 0%)", process.run,
      {"cat", timeout = 0 / 0})
    raises("process.run: bad field 'timeout' %(must be >= 0%)", process.run,
      {"cat", timeout = -1})
    raises("process.run: bad argument #1 %(table expected, got string%)", process.run, "ls")
    raises("process.run: bad argument #1 %(field %[2%] is table, not a string%)", process.run,
      {"echo", {}})
  end)

  it("process:kill names itself and its argument and checks the signal range", function()
    local go = concur.queue()
    local p = process.spawn(function() go:get(30) end)
    raises("process:kill: bad argument #1 %(signal name or number expected, got table%)", p.kill,
      p, {})
    raises("process:kill: bad argument #1 %(signal name or number expected, got boolean%)",
      p.kill, p, true)
    for _, sig in ipairs{0, -1, 65, 1000, 2 ^ 31, 2 ^ 63, -2 ^ 63, 0 / 0, math.huge, 1.5} do
      raises("process:kill: bad argument #1 %(signal number out of range 1%.%.%d+%)", p.kill, p,
        sig)
    end
    raises("process:kill: bad argument #1 %(unknown signal 'BOGUS'%)", p.kill, p, "BOGUS")
    assert.is_true(p:alive())
    go:put(true)
    p:join(10)
  end)

  it("process.spawn and thread.new name themselves on a bad argument", function()
    raises("process.spawn: bad argument #1 %(function expected, got number%)", process.spawn, 1)
    raises("process.spawn: bad argument #1 %(function expected, got " .. FILE .. "%)", process.spawn,
      io.stdout)
    raises("process.spawn: bad field 'name' %(string expected, got table%)", process.spawn,
      {function() end, name = {}})
    raises("thread.new: bad argument #1 %(function expected, got nil%)", thread.new, nil)
    raises("thread.new: bad argument #1 %(function expected, got table%)", thread.new, {})
  end)
end)
