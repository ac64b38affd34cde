-- LuaJIT side of make bench: `luajit luajit_bench.lua WORKLOAD SIZE` with
-- build/luajit/concur.so on package.cpath; prints one number.
--
-- The "concur (LuaJIT)" column runs the very workloads of concur_bench.lua:
-- this file loads that source and translates what LuaJIT's parser lacks
-- (Lua 5.4's floor division `a // b`, written on one line with a name, a
-- number or a parenthesised expression on each side) into math.floor(a / b).
-- Workloads that need LuaJIT itself (the FFI) are defined here. A workload
-- that still does not load or run exits non-zero with the reason on stderr;
-- run.lua shows "-" and the reason.
local workload, size = arg[1], tonumber(arg[2])

local W = {}

-- element writes/s through a:ptr() (FFI double *), one worker
W.array_ptr = function(n)
  local concur = require "concur"
  local len = 1000000
  local a = concur.shared.array(len, "f64")
  local p = a:ptr()
  local reps = math.max(1, math.floor(n / len))
  local t0 = concur.clock()
  for r = 1, reps do
    for i = 0, len - 1 do p[i] = i + r end
  end
  local dt = concur.clock() - t0
  assert(a[len] == len - 1 + reps)
  return reps * len / dt
end

if W[workload] then
  print(string.format("%.6g", W[workload](size)))
  return
end

-- ---- concur_bench.lua under LuaJIT ----

local here = (arg[0] or ""):match("^(.*/)") or "./"

-- `x // y` -> `math.floor((x) / (y))`, outside strings and comments.
local OPERAND = {"%b()", "[%w_%.]+%b[]", "[%w_%.]+"}
local function floordiv(code)
  local out, i = {}, 1
  while i <= #code do
    local c = code:sub(i, i)
    local long = code:match("^%-%-%[(=*)%[", i) or code:match("^%[(=*)%[", i)
    if long then -- a long string or long comment: copied as it is
      local close = "]" .. long .. "]"
      local e = code:find(close, i, true) or #code
      out[#out + 1] = code:sub(i, e + #close - 1)
      i = e + #close
    elseif code:sub(i, i + 1) == "--" then
      local e = code:find("\n", i, true) or #code
      out[#out + 1] = code:sub(i, e)
      i = e + 1
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= #code and code:sub(j, j) ~= c do j = j + (code:sub(j, j) == "\\" and 2 or 1) end
      out[#out + 1] = code:sub(i, j)
      i = j + 1
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  -- now rewrite `a // b` in the code pieces only (strings and comments are
  -- whole pieces that start with a quote or --)
  local src = {}
  for k, piece in ipairs(out) do
    if #piece == 1 then src[#src + 1] = piece else src[#src + 1] = "\0" .. k .. "\0" end
  end
  local s = table.concat(src)
  for _, left in ipairs(OPERAND) do
    for _, right in ipairs(OPERAND) do
      s = s:gsub("(" .. left .. ")%s*//%s*(" .. right .. ")", "math.floor((%1) / (%2))")
    end
  end
  if s:find("//", 1, true) then return nil, "a `//` the translation does not handle" end
  return (s:gsub("%z(%d+)%z", function(k) return out[tonumber(k)] end))
end

table.unpack = table.unpack or unpack
local f = assert(io.open(here .. "concur_bench.lua"))
local code, why = floordiv(f:read("*a"))
f:close()
if not code then
  io.stderr:write("concur_bench.lua under LuaJIT: ", why, "\n")
  os.exit(3)
end
local chunk, err = loadstring(code, "@" .. here .. "concur_bench.lua")
if not chunk then
  io.stderr:write("concur_bench.lua under LuaJIT: ", err, "\n")
  os.exit(3)
end
chunk()
