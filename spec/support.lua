-- Shared helpers for specs: run a snippet in a fresh interpreter of the
-- flavour under test (build/concur, lua5.4 + module, luajit + module).
local M = {}

local flavour = os.getenv("CONCUR_TEST_FLAVOUR") or "concur"
M.flavour = flavour
M.luajit = type(jit) == "table"
M.interp = ({
  concur = "build/concur", asan = "build/asan/concur", tsan = "build/tsan/concur",
  ["lua5.4"] = "lua5.4", luajit = "luajit",
})[flavour] or "build/concur"
-- a stock interpreter with the module (not the concur host)?
M.module = flavour == "lua5.4" or flavour == "luajit" or flavour:match("^asan%-") ~= nil
if flavour:match("^asan%-") then -- stock interpreters with the ASan module need its runtime preloaded
  M.interp = "env LD_PRELOAD=" .. os.getenv("PWD") .. "/build/asan/libasan-fork.so " .. flavour:sub(6)
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Run code (a Lua chunk; `concur` is a local holding the module) in a fresh
-- interpreter with extra environment assignments, bounded by `limit`
-- seconds. Returns stdout+stderr, the exit status and whether it timed out.
function M.run(code, env, limit)
  local chunk = 'local concur = require "concur" ' .. code
  local cmd = "timeout -k 2 " .. (limit or 30) .. " env " .. (env or "") .. " " .. M.interp ..
    " -e " .. q(chunk) .. " 2>&1; echo \"<exit $?>\""
  local f = io.popen(cmd)
  local out = f:read("*a")
  f:close()
  local status = tonumber(out:match("<exit (%d+)>%s*$"))
  out = out:gsub("<exit %d+>%s*$", "")
  return out, status, status == 124 or status == 137
end

-- A finalizer that works on both VMs (LuaJIT runs __gc only on userdata).
function M.finalizer(fn)
  if newproxy then
    local p = newproxy(true)
    getmetatable(p).__gc = fn
    return p
  end
  return setmetatable({}, {__gc = fn})
end

return M
