-- build/concur: lua5.4's flags and conventions, --help, and the REPL driven
-- through tmux. It shells out to build/concur, so it runs once (the concur flavour).
local flavour = os.getenv("CONCUR_TEST_FLAVOUR")
local BIN = "build/concur"

local function skip()
  if flavour and flavour ~= "concur" then pending("runs once, under the concur flavour") return true end
  if not io.open(BIN) then pending("build/concur not built") return true end
end

-- run a shell command; returns stdout+stderr and the exit status
local function sh(cmd)
  local f = io.popen("timeout 20 " .. cmd .. " 2>&1; echo \"<rc=$?>\"")
  local out = f:read("*a")
  f:close()
  local body, rc = out:match("^(.-)<rc=(%d+)>%s*$")
  return body, tonumber(rc)
end

describe("concur command line", function()
  it("prints Lua's version line with -v, as lua5.4 does, and concur's with --help", function()
    if skip() then return end
    local out, rc = sh(BIN .. " -v")
    assert.equal(0, rc)
    assert.matches("^Lua 5%.4[^\n]*\n$", out)
    assert.matches("^concur %d+%.%d+%.%d+", sh(BIN .. " --help"))
  end)

  it("runs -e chunks in order and passes script arguments in arg and ...", function()
    if skip() then return end
    local script = os.tmpname()
    local f = io.open(script, "w")
    f:write("print(arg[0] == ..., arg[1], arg[2], select('#', ...), arg[-1] ~= nil)")
    f:close()
    local out, rc = sh(BIN .. " -e 'X = 1' -e 'io.write(X + 1, \" \")' " .. script .. " a b")
    os.remove(script)
    assert.equal(0, rc)
    assert.matches("^2 false\ta\tb\t2\ttrue", out)
  end)

  it("loads a library with -l mod and -l g=mod", function()
    if skip() then return end
    assert.matches("table", sh(BIN .. " -l string -e 'print(type(string))'"))
    assert.matches("function", sh(BIN .. " -l s=string -e 'print(type(s.rep))'"))
  end)

  it("runs stdin with - and stops options at --", function()
    if skip() then return end
    assert.matches("from stdin", sh("echo 'print(\"from stdin\")' | " .. BIN .. " -"))
    local out = sh("echo 'print(...)' > /tmp/concur_dd.lua && " .. BIN .. " -- /tmp/concur_dd.lua -v")
    assert.matches("%-v", out)
    os.remove("/tmp/concur_dd.lua")
  end)

  it("runs stdin when it is not a terminal and there is no script", function()
    if skip() then return end
    assert.matches("piped", sh("echo 'print(\"piped\")' | " .. BIN))
  end)

  it("honours LUA_INIT and LUA_INIT_5_4, and -E ignores them", function()
    if skip() then return end
    assert.matches("init ran", sh("env LUA_INIT='print(\"init ran\")' " .. BIN .. " -e ''"))
    assert.matches("5.4 wins", sh("env LUA_INIT='print(1)' LUA_INIT_5_4='print(\"5.4 wins\")' " .. BIN .. " -e ''"))
    local out = sh("env LUA_INIT='print(\"init ran\")' " .. BIN .. " -E -e 'print(\"done\")'")
    assert.is_nil(out:find("init ran", 1, true))
    local f = io.open("/tmp/concur_init.lua", "w")
    f:write("print('from file')")
    f:close()
    assert.matches("from file", sh("env LUA_INIT=@/tmp/concur_init.lua " .. BIN .. " -e ''"))
    os.remove("/tmp/concur_init.lua")
  end)

  it("exits 1 with the message and a traceback on an error", function()
    if skip() then return end
    local out, rc = sh(BIN .. " -e 'local function f() error(\"boom\") end f()'")
    assert.equal(1, rc)
    assert.matches("^" .. BIN .. ": %(command line%):1: boom", out)
    assert.matches("stack traceback:", out)
    local _, rc2 = sh(BIN .. " /nonexistent/script.lua")
    assert.equal(1, rc2)
  end)

  it("passes os.exit codes through", function()
    if skip() then return end
    local _, rc = sh(BIN .. " -e 'os.exit(7)'")
    assert.equal(7, rc)
    local _, rc2 = sh(BIN .. " -e 'os.exit(false)'")
    assert.equal(1, rc2)
  end)

  it("rejects an unknown option with the usage", function()
    if skip() then return end
    local out, rc = sh(BIN .. " -Z")
    assert.equal(1, rc)
    assert.matches("unrecognized option '%-Z'", out)
    assert.matches("usage:", out)
    local out2, rc2 = sh(BIN .. " -e")
    assert.equal(1, rc2)
    assert.matches("'%-e' needs argument", out2)
  end)

  it("explains itself with --help", function()
    if skip() then return end
    local out, rc = sh(BIN .. " --help")
    assert.equal(0, rc)
    for _, word in ipairs{"process", "thread", "shared", "pipe", "lock", "queue", "CONCUR_SHM", "REPL", "LUA_INIT"} do
      assert.matches(word, out)
    end
  end)

  it("has the primitives as globals and as require 'concur'", function()
    if skip() then return end
    local out = sh(BIN .. " -e 'print(type(process.spawn), type(thread.new), type(shared.list), type(pipe), type(lock), type(queue), type(primes.count), require(\"concur\") == concur)'")
    assert.matches("function\tfunction\tfunction\ttable\ttable\ttable\tfunction\ttrue", out)
  end)

  it("runs busted specs through busted --lua", function()
    if skip() then return end
    local spec = "/tmp/concur_mini_spec.lua"
    local f = io.open(spec, "w")
    f:write("describe('x', function() it('runs under concur', function() assert.is_function(process.spawn) end) end)")
    f:close()
    local out = sh("busted --lua=" .. BIN .. " " .. spec)
    os.remove(spec)
    assert.matches("1 success", out)
  end)
end)

describe("concur REPL (through tmux)", function()
  local session, home

  local function has_tmux() return os.execute("command -v tmux >/dev/null 2>&1") end

  local function screen()
    local f = io.popen("tmux capture-pane -p -t " .. session)
    local s = f:read("*a")
    f:close()
    return s
  end

  -- wait until the screen matches pattern (bounded: 5 s)
  local function wait_for(pattern)
    for _ = 1, 100 do
      local s = screen()
      if s:find(pattern) then return s end
      os.execute("sleep 0.05")
    end
    return screen()
  end

  local function keys(...)
    for _, k in ipairs{...} do
      if k:match("^[A-Z]") or k:match("^C%-") then os.execute("tmux send-keys -t " .. session .. " " .. k)
      else os.execute("tmux send-keys -t " .. session .. " -l '" .. k:gsub("'", "'\\''") .. "'") end
    end
  end

  before_each(function()
    session = "concur_spec_" .. tostring(os.time()) .. tostring(math.random(1e6))
    home = os.tmpname()
    os.remove(home)
    os.execute("mkdir -p " .. home)
  end)

  after_each(function()
    os.execute("tmux kill-session -t " .. session .. " 2>/dev/null")
    os.execute("rm -rf " .. home)
  end)

  local function start()
    os.execute(string.format("tmux new-session -d -s %s -x 120 -y 40 'cd %s && HOME=%s %s'",
      session, os.getenv("PWD") or ".", home, BIN))
    return wait_for("> ")
  end

  it("prints expression values and tables readably", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    start()
    keys("1 + 2", "Enter")
    keys("{1, 2, x = {y = 'z'}}", "Enter")
    local s = wait_for('{1, 2, x = {y = "z"}}')
    assert.matches("\n3\n", s)
    assert.matches('{1, 2, x = {y = "z"}}', s, 1, true)
  end)

  it("continues multi-line input until the chunk is complete", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    start()
    keys("for i = 1, 2 do", "Enter", "print('line', i)", "Enter", "end", "Enter")
    local s = wait_for("line%s+2") -- the terminal shows the tab as spaces
    assert.matches(">> ", s)
    assert.matches("line%s+1", s)
  end)

  it("completes global fields with Tab", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    start()
    keys("process.sp", "Tab")
    local s = wait_for("process%.spawn")
    assert.matches("process%.spawn", s)
  end)

  it("interrupts running code and blocking waits with Ctrl-C", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    start()
    keys("while true do end", "Enter")
    os.execute("sleep 0.3")
    keys("C-c")
    wait_for("interrupted")
    keys("queue():get()", "Enter")
    os.execute("sleep 0.3")
    keys("C-c")
    os.execute("sleep 0.2")
    keys("print('still ' .. 'alive')", "Enter")
    local s = wait_for("still alive")
    assert.matches("still alive", s)
    local _, n = s:gsub("interrupted", "")
    assert.is_true(n >= 2)
  end)

  it("keeps history in ~/.concur_history with mode 0600", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    start()
    keys("x_marker = 41 + 1", "Enter")
    wait_for("> .-> ")
    keys("C-d")
    os.execute("sleep 0.3")
    local f = io.popen("stat -c %a " .. home .. "/.concur_history")
    local mode = f:read("*a")
    f:close()
    assert.equal("600", (mode:gsub("%s", "")))
    local hist = io.open(home .. "/.concur_history"):read("*a")
    assert.matches("x_marker = 41 %+ 1", hist)
  end)
end)

describe("concur REPL at exit (through tmux)", function()
  local session

  local function has_tmux() return os.execute("command -v tmux >/dev/null 2>&1") end

  local function screen()
    local f = io.popen("tmux capture-pane -p -t " .. session .. " 2>/dev/null")
    local s = f:read("*a")
    f:close()
    return s
  end

  local function alive() return os.execute("tmux has-session -t " .. session .. " 2>/dev/null") end

  -- wait (bounded: 5 s) until the screen matches pattern, or the session ended
  local function wait_for(pattern)
    for _ = 1, 100 do
      local s = screen()
      if s:find(pattern) or not alive() then return s end
      os.execute("sleep 0.05")
    end
    return screen()
  end

  after_each(function()
    if session then os.execute("tmux kill-session -t " .. session .. " 2>/dev/null") end
  end)

  it("says what it waits for at Ctrl-D and stops it at Ctrl-C", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    session = "concur_exit_" .. tostring(os.time()) .. tostring(math.random(1e6))
    local home = os.tmpname()
    os.remove(home)
    os.execute("mkdir -p " .. home)
    -- the shell ignores SIGINT (concur sets its own) and outlives concur to show its status
    os.execute(string.format("tmux new-session -d -s %s -x 120 -y 40 'trap \"\" INT; cd %s && HOME=%s %s; echo \"<exit $?>\"; sleep 5'",
      session, os.getenv("PWD") or ".", home, BIN))
    wait_for("\n>")
    os.execute("tmux send-keys -t " .. session .. " -l 't = thread.new(function() concur.sleep(30) end)'")
    os.execute("tmux send-keys -t " .. session .. " Enter")
    wait_for("end%)\n>") -- the next prompt (the pane drops its trailing space)
    os.execute("tmux send-keys -t " .. session .. " C-d")
    local s = wait_for("waiting for thread")
    assert.matches("waiting for thread%-%d+ to finish", s)
    os.execute("tmux send-keys -t " .. session .. " C-c")
    s = wait_for("<exit %d+>")
    os.execute("rm -rf " .. home)
    assert.matches("<exit 130>", s)
  end)

  it("stops what it waits for at a second Ctrl-D", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    session = "concur_exit_" .. tostring(os.time()) .. tostring(math.random(1e6))
    local home = os.tmpname()
    os.remove(home)
    os.execute("mkdir -p " .. home)
    -- the shell ignores SIGINT (concur sets its own) and outlives concur to show its status
    os.execute(string.format("tmux new-session -d -s %s -x 120 -y 40 'trap \"\" INT; cd %s && HOME=%s %s; echo \"<exit $?>\"; sleep 5'",
      session, os.getenv("PWD") or ".", home, BIN))
    wait_for("\n>")
    os.execute("tmux send-keys -t " .. session .. " -l 't = thread.new(function() concur.sleep(30) end)'")
    os.execute("tmux send-keys -t " .. session .. " Enter")
    wait_for("end%)\n>") -- the next prompt (the pane drops its trailing space)
    os.execute("tmux send-keys -t " .. session .. " C-d")
    local s = wait_for("waiting for thread")
    assert.matches("waiting for thread%-%d+ to finish", s)
    os.execute("tmux send-keys -t " .. session .. " C-d")
    s = wait_for("<exit %d+>")
    os.execute("rm -rf " .. home)
    assert.matches("<exit 0>", s)
  end)
end)

describe("concur REPL completion on concur objects (through tmux)", function()
  local session, home

  local function has_tmux() return os.execute("command -v tmux >/dev/null 2>&1") end

  local function screen()
    local f = io.popen("tmux capture-pane -p -t " .. session)
    local s = f:read("*a")
    f:close()
    return s
  end

  local function wait_for(pattern) -- bounded: 5 s
    for _ = 1, 100 do
      local s = screen()
      if s:find(pattern) then return s end
      os.execute("sleep 0.05")
    end
    return screen()
  end

  local function keys(...)
    for _, k in ipairs{...} do
      if k:match("^[A-Z]") or k:match("^C%-") then os.execute("tmux send-keys -t " .. session .. " " .. k)
      else os.execute("tmux send-keys -t " .. session .. " -l '" .. k:gsub("'", "'\\''") .. "'") end
    end
  end

  before_each(function()
    session = "concur_cspec_" .. tostring(os.time()) .. tostring(math.random(1e6))
    home = os.tmpname()
    os.remove(home)
    os.execute("mkdir -p " .. home)
  end)

  after_each(function()
    os.execute("tmux kill-session -t " .. session .. " 2>/dev/null")
    os.execute("rm -rf " .. home)
  end)

  -- start the REPL, run setup, then type each partial name and Tab, and
  -- check the line completes to the expected text (Ctrl-U clears it)
  local function completes(setup, cases)
    os.execute(string.format("tmux new-session -d -s %s -x 160 -y 40 'cd %s && HOME=%s %s'",
      session, os.getenv("PWD") or ".", home, BIN))
    wait_for("\n>") -- the prompt (capture-pane drops its trailing space)
    keys(setup, "Enter")
    wait_for("setup done")
    for _, c in ipairs(cases) do
      keys(c[1], "Tab")
      local want = "> " .. c[2]:gsub("%p", "%%%0") .. "%s*\n"
      local s = wait_for(want)
      assert.matches(want, s)
      keys("C-u")
    end
  end

  it("completes methods after : on shared lists and dicts", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    completes("l = shared.list(); d = shared.dict(); print('setup ' .. 'done')",
      {{"l:ap", "l:append"}, {"l:tot", "l:totable"}, {"d:ke", "d:keys"}, {"d:it", "d:items"}})
  end)

  it("completes methods after : and fields after . on process and thread handles", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    completes("p = process.spawn(function() end); t = thread.new(function() end); " ..
      "p:join(); t:join(); print('setup ' .. 'done')",
      {{"p:jo", "p:join"}, {"p.pi", "p.pid"}, {"p.exi", "p.exitcode"}, {"t:jo", "t:join"},
       {"t:can", "t:cancel"}})
  end)

  it("completes methods after : and . on queues, pipes and locks", function()
    if skip() then return end
    if not has_tmux() then pending("tmux not installed") return end
    completes("q = queue(); a, b = pipe(); k = lock(); print('setup ' .. 'done')",
      {{"q:pu", "q:put"}, {"q.ge", "q.get"}, {"a:se", "a:send"}, {"a.rea", "a.readable"},
       {"k:acq", "k:acquire"}})
  end)
end)

-- What Lua 5.4.4's own test of the stand-alone interpreter (testes/main.lua,
-- run by scripts/lua-testes.sh) checks and build/concur once got wrong; the
-- model for each is lua.c.
describe("concur behaves like lua.c where Lua's testes/main.lua looks", function()
  local function put(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
  end

  -- run a shell command; returns its stdout and stderr apart, and the status
  local function run(cmd)
    local err = os.tmpname()
    local f = io.popen("timeout 20 " .. cmd .. " 2> " .. err .. "; echo \"<rc=$?>\"")
    local out = f:read("*a")
    f:close()
    local ef = io.open(err)
    local errout = ef:read("*a")
    ef:close()
    os.remove(err)
    local body, rc = out:match("^(.-)<rc=(%d+)>%s*$")
    return body, errout, tonumber(rc)
  end

  it("prints REPL results through a replaced global print and reports an error calling it", function()
    if skip() then return end
    local _, err = run("sh -c 'echo 10 | " .. BIN .. " -e \"print=nil\" -i'")
    assert.matches("error calling 'print'", err)
    local out = run("sh -c 'echo 10, nil | " .. BIN .. " -e \"print=function(...) io.write(\\\"P:\\\", select(\\\"#\\\", ...), \\\"\\\\n\\\") end\" -i'")
    assert.matches("P:2\n", out)
  end)

  it("treats only a whole one-piece warning as a control message, as lua5.4 does", function()
    if skip() then return end
    local prog = os.tmpname()
    put(prog, [[
warn("@allow")
warn("@off", "XXX", "@off")
warn("@off")
warn("@on", "YYY", "@on")
warn("@off")
warn("@on")
warn("", "@on")
warn("@on")
warn("Z", "Z", "Z")
]])
    local _, err, rc = run(BIN .. " -W " .. prog)
    assert.equal(0, rc)
    assert.equal("Lua warning: @offXXX@off\nLua warning: @on\nLua warning: ZZZ\n", err)
    put(prog, "io.stderr:write(1); warn[[XXX]]")
    _, err = run(BIN .. " " .. prog)
    assert.equal("1", err)
    os.remove(prog)
  end)

  it("shows a _PROMPT that is not a string through its __tostring, once per line", function()
    if skip() then return end
    local prog = os.tmpname()
    put(prog, " --\na = 2\n")
    local out = run(BIN .. " -e \"local C = 0; _PROMPT = setmetatable({}, {__tostring = function() C = C + 1; return C end})\" -i < " .. prog)
    os.remove(prog)
    assert.is_truthy(out:find("1 --\n2a = 2\n3\n", 1, true), out)
  end)

  it("reports an error in _PROMPT's __tostring and goes on with the default prompt", function()
    if skip() then return end
    local out, err, rc = run("sh -c 'echo x = 1 | " .. BIN .. " -e \"_PROMPT = setmetatable({}, {__tostring = function() error(\\\"bad\\\") end})\" -i'")
    assert.equal(0, rc)
    assert.matches("error converting _PROMPT to a string %(.*bad%)", err)
    assert.matches("> x = 1\n", out)
  end)

  it("calls an error object's __tostring from the message handler, four levels above the error", function()
    if skip() then return end
    local prog = os.tmpname()
    put(prog, [[
debug = require "debug"
m = {x=0}
setmetatable(m, {__tostring = function(x)
  return tostring(debug.getinfo(4).currentline + x.x)
end})
error(m)
]])
    local _, err, rc = run(BIN .. " " .. prog)
    os.remove(prog)
    assert.equal(1, rc)
    assert.is_truthy(err:find(BIN .. ": 6\n", 1, true), err)
  end)

  it("names itself by argv[0] in messages, as lua.c does", function()
    if skip() then return end
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir .. " && ln -s \"$PWD/" .. BIN .. "\" " .. dir .. "/mylua"))
    local _, err = run(dir .. "/mylua -e \"error('x')\"")
    os.execute("rm -r " .. dir)
    assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/mylua: %(command line%):1: x", err)
  end)

  it("prints Lua's copyright line alone with -v, before what -e prints", function()
    if skip() then return end
    local out, _, rc = run(BIN .. " -v -e \"print'hello'\"")
    assert.equal(0, rc)
    assert.matches("^Lua 5%.4%.%d+  Copyright %(C%) [^\n]*PUC%-Rio\nhello\n$", out)
  end)
end)
