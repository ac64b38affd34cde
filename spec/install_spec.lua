-- Installing concur the ways Lua and C users install things: make install
-- into a temporary PREFIX (and DESTDIR), an embedding program built with
-- only pkg-config, the modules found by stock lua5.4 and luajit on their
-- default paths under that prefix, make uninstall, luarocks make offline,
-- the README's tour, and require "concur.<lib>" on its own. It shells out
-- to make, cc and the interpreters, so it runs once (the concur flavour).
local flavour = os.getenv("CONCUR_TEST_FLAVOUR")

local function skip()
  if flavour and flavour ~= "concur" then pending("runs once, under the concur flavour") return true end
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- run a shell command (bounded); returns stdout+stderr and the exit status
local function sh(cmd, limit)
  local f = io.popen("timeout -k 5 " .. (limit or 60) .. " sh -c " .. q(cmd) .. " 2>&1; echo \"<rc=$?>\"")
  local out = f:read("*a")
  f:close()
  local body, rc = out:match("^(.-)<rc=(%d+)>%s*$")
  return body, tonumber(rc)
end

local function ok(cmd, limit)
  local out, rc = sh(cmd, limit)
  assert(rc == 0, "`" .. cmd .. "` exited " .. tostring(rc) .. ":\n" .. out)
  return out
end

local function have(prog) return select(2, sh("command -v " .. prog)) == 0 end

-- every file (and symlink) under dir, sorted, relative to dir
local function files(dir)
  local out = sh("cd " .. q(dir) .. " && find . ! -type d | sort")
  local t = {}
  for line in out:gmatch("[^\n]+") do t[#t + 1] = line:sub(3) end
  return t
end

local function contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

-- an interpreter's default package.cpath with /usr/local moved to prefix:
-- what it would search if concur had been installed with PREFIX=/usr/local
local function default_cpath(interp, prefix)
  local out = ok("env -u LUA_CPATH -u LUA_CPATH_5_4 " .. interp .. " -e 'io.write(package.cpath)'")
  return (out:gsub("/usr/local", prefix))
end

describe("make install", function()
  local tmp, prefix

  setup(function()
    if flavour and flavour ~= "concur" then return end
    tmp = ok("mktemp -d /tmp/concur-install.XXXXXX"):gsub("%s+$", "")
    prefix = tmp .. "/prefix"
    ok("make -s install PREFIX=" .. prefix, 300)
  end)

  teardown(function()
    if tmp then sh("rm -rf " .. q(tmp)) end
    sh("make -s build/concur.pc") -- back to the default PREFIX
  end)

  it("writes a concur.pc that names the prefix it was installed to and requires lua5.4", function()
    if skip() then return end
    local f = assert(io.open(prefix .. "/lib/pkgconfig/concur.pc"))
    local pc = f:read("*a")
    f:close()
    assert.matches("prefix=" .. prefix:gsub("%p", "%%%0") .. "\n", pc)
    assert.matches("\nRequires: lua5%.4\n", pc)
  end)

  it("installs libconcur.so with the SONAME libconcur.so.0 and its version links", function()
    if skip() then return end
    local lib = prefix .. "/lib/"
    assert.matches("%(SONAME%)%s+Library soname: %[libconcur%.so%.0%]", ok("readelf -d " .. lib .. "libconcur.so"))
    assert.equal("libconcur.so.0", ok("readlink " .. lib .. "libconcur.so"):gsub("%s+$", ""))
    assert.matches("^libconcur%.so%.0%.%d+%.%d+\n", ok("readlink " .. lib .. "libconcur.so.0"))
  end)

  it("builds and runs an embedding program with only pkg-config --cflags --libs concur", function()
    if skip() then return end
    local env = "PKG_CONFIG_PATH=" .. prefix .. "/lib/pkgconfig "
    ok("cp tests/embed.c " .. tmp .. "/embed.c")
    ok("cd " .. tmp .. " && " .. env .. "cc -o embed embed.c $(" .. env .. "pkg-config --cflags --libs concur)", 60)
    assert.matches("libconcur%.so%.0", ok("readelf -d " .. tmp .. "/embed"))
    assert.matches("embed: ok", ok("cd " .. tmp .. " && LD_LIBRARY_PATH=" .. prefix .. "/lib ./embed", 60))
  end)

  it("puts the modules where stock lua5.4 and luajit look by default under the prefix", function()
    if skip() then return end
    local probe = 'local c = require "concur"; local q = c.queue(); q:put(41); ' ..
      'io.write(package.searchpath("concur", package.cpath), " ", q:get() + 1)'
    local out = ok("cd / && LUA_CPATH=" .. q(default_cpath("lua5.4", prefix)) .. " lua5.4 -e " .. q(probe))
    assert.equal(prefix .. "/lib/lua/5.4/concur.so 42", out)
    if have("luajit") then
      out = ok("cd / && LUA_CPATH=" .. q(default_cpath("luajit", prefix)) .. " luajit -e " .. q(probe))
      assert.equal(prefix .. "/lib/lua/5.1/concur.so 42", out)
    end
  end)

  it("installs the concur binary and its man page", function()
    if skip() then return end
    assert.matches("^Lua 5%.4", ok(prefix .. "/bin/concur -v")) -- as lua5.4 -v prints
    assert.matches("concur %d", ok(prefix .. "/bin/concur --help"))
    assert.truthy(io.open(prefix .. "/share/man/man1/concur.1"))
  end)

  it("stages under DESTDIR with the final PREFIX in concur.pc, and make uninstall removes every file", function()
    if skip() then return end
    local dest = tmp .. "/dest"
    ok("make -s install DESTDIR=" .. dest .. " PREFIX=/opt/concur-test", 300)
    local f = assert(io.open(dest .. "/opt/concur-test/lib/pkgconfig/concur.pc"))
    local pc = f:read("*a")
    f:close()
    assert.matches("prefix=/opt/concur%-test\n", pc)
    local staged = files(dest .. "/opt/concur-test")
    for _, want in ipairs{"bin/concur", "include/concur.h", "lib/libconcur.a", "lib/libconcur.so",
                          "lib/libconcur.so.0", "lib/lua/5.4/concur.so", "lib/lua/5.1/concur.so",
                          "share/man/man1/concur.1"} do
      assert(contains(staged, want), want .. " not installed; got: " .. table.concat(staged, " "))
    end
    ok("make -s uninstall DESTDIR=" .. dest .. " PREFIX=/opt/concur-test", 60)
    assert.same({}, files(dest))
    -- and the plain install too
    ok("make -s uninstall PREFIX=" .. prefix, 60)
    assert.same({}, files(prefix))
  end)
end)

describe("man/concur.1", function()
  it("formats with groff -man -ww without a warning", function()
    if skip() then return end
    assert.equal("", ok("groff -man -ww -z man/concur.1"))
  end)

  it("documents every CONCUR_* environment variable the code reads", function()
    if skip() then return end
    local f = assert(io.open("man/concur.1"))
    local man = f:read("*a")
    f:close()
    local env = man:match("%.SH ENVIRONMENT\n(.-)%.SH ")
    assert.truthy(env)
    local names = ok("grep -rhoE 'getenv\\(\"CONCUR_[A-Z0-9_]+' runtime bindings host | sort -u")
    local n = 0
    for name in names:gmatch("CONCUR_[A-Z0-9_]+") do
      n = n + 1
      assert(env:find(".B " .. name, 1, true), name .. " is not in the man page's ENVIRONMENT")
    end
    assert.is_true(n >= 1)
    for _, section in ipairs{"SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT", "EXIT STATUS", "EXAMPLES"} do
      assert(man:find("\n.SH " .. section .. "\n", 1, true), "no " .. section .. " section")
    end
  end)
end)

describe("luarocks", function()
  it("builds and installs the rockspec offline into a tree with luarocks make, and require works from it", function()
    if skip() then return end
    if not have("luarocks") then error("luarocks is not installed (make deps installs it)") end
    local tree = ok("mktemp -d /tmp/concur-rock.XXXXXX"):gsub("%s+$", "")
    local out, rc = sh("luarocks --lua-version=5.4 --tree=" .. tree .. " make rockspecs/concur-scm-1.rockspec", 300)
    local run, rrc
    if rc == 0 then
      run, rrc = sh("eval \"$(luarocks --lua-version=5.4 --tree=" .. tree .. " path)\" && cd / && " ..
        "lua5.4 -e 'local c = require \"concur\"; io.write(c.version, \" \", " ..
        "package.searchpath(\"concur\", package.cpath))'")
    end
    sh("rm -rf " .. q(tree) .. " build/rock")
    assert(rc == 0, "luarocks make exited " .. tostring(rc) .. ":\n" .. out)
    assert(rrc == 0, run)
    assert.matches("^%d+%.%d+%.%d+ " .. tree:gsub("%p", "%%%0") .. "/lib/lua/5%.4/concur%.so$", run)
  end)
end)

-- the ```lua block of README.md whose text names marker (its file name)
local function readme_block(marker)
  local f = assert(io.open("README.md"))
  local text = f:read("*a")
  f:close()
  for block in text:gmatch("```lua\n(.-)```") do
    if block:find(marker, 1, true) then return block end
  end
  error("README.md has no lua block naming " .. marker)
end

describe("README tour", function()
  local function run_tour(interp, code, env)
    local file = os.tmpname()
    local f = io.open(file, "w")
    f:write(code)
    f:close()
    local out, rc = sh((env or "") .. interp .. " " .. file, 60)
    os.remove(file)
    assert(rc == 0, out)
    assert.matches("^78498\t5\n100\n$", out)
  end

  it("runs as written under build/concur", function()
    if skip() then return end
    run_tour("build/concur", readme_block("tour.lua"))
  end)

  it("has a version for stock lua5.4 and luajit that runs as written under both", function()
    if skip() then return end
    local code = readme_block("tour-stock.lua")
    run_tour("lua5.4", code, "LUA_CPATH='build/lua5.4/?.so;;' ")
    if have("luajit") then run_tour("luajit", code, "LUA_CPATH='build/luajit/?.so;;' ") end
  end)
end)

describe("require of one library", function()
  for _, interp in ipairs{"lua5.4", "luajit"} do
    it("gives concur.queue, concur.shared, concur.process ... on their own in a fresh " .. interp, function()
      if skip() then return end
      if interp == "luajit" and not have("luajit") then return end
      local probe = 'local q = require "concur.queue"; local s = require "concur.shared"; ' ..
        'local p = require "concur.process"; local t = require "concur.thread"; ' ..
        'local l = require "concur.lock"; local pi = require "concur.pipe"; ' ..
        'local pr = require "concur.primes"; ' ..
        'local x = q(); x:put(1); local d = s.dict(); d.a = x:get(); ' ..
        'local c = p.spawn(function() return 7 end); ' ..
        'io.write(d.a, " ", c:join(10), " ", t.new(function() return 8 end):join(10), " ", ' ..
        'pr.count(0, 100), " ", type(l), " ", type(pi), " ", ' ..
        'tostring(require "concur.queue" == require("concur").queue))'
      local out = ok("LUA_CPATH='build/" .. (interp == "luajit" and "luajit" or "lua5.4") .. "/?.so;;' " ..
        interp .. " -e " .. q(probe))
      assert.equal("1 7 8 25 table table true", out)
    end)
  end
end)
