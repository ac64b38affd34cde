-- Run by spec/cluster_pool_spec.lua: rank 0 runs this script (launched with
-- -l concur.serve, or without it: CLUSTER_PROBE=auto-serve), the others serve.
-- Prints "ok <name>" or "FAIL <name>: why" per check.
local concur = require "concur"
local cluster = require "concur.cluster"
local pool = require "concur.pool"
io.write(("top %d\n"):format(cluster.rank())); io.flush()

local function check(name, fn)
  local ok, err = pcall(fn)
  io.write(ok and ("ok %s\n"):format(name) or ("FAIL %s: %s\n"):format(name, tostring(err)))
  io.flush()
end
local function eq(want, got, what)
  if want ~= got then error(("%s: expected %s, got %s"):format(what or "value", tostring(want), tostring(got)), 2) end
end

local p = pool.new{kind = os.getenv("POOL_KIND") or "mpi"}

check("map", function()
  local items = {}
  for i = 1, 10000 do items[i] = i end
  local r = p:map(function(x) return x * 2 end, items)
  eq(10000, #r, "count")
  for i = 1, 10000 do if r[i] ~= 2 * i then error("item " .. i .. " is " .. tostring(r[i])) end end
end)

check("work spread over the ranks", function()
  local seen = {}
  local r = p:map(function() local c = require "concur.cluster"; local t = concur.clock() + 0.002
    while concur.clock() < t do end return c.rank() end, {1, 2, 3, 4, 5, 6, 7, 8}, {chunksize = 1})
  for _, k in ipairs(r) do seen[k] = true end
  eq(nil, seen[0], "rank 0 does not work")
  eq(true, seen[1] and seen[2], "ranks 1 and 2 both worked")
end)

check("imap, imap_unordered, starmap", function()
  local out = {}
  for _, v in p:imap(function(x) return x + 1 end, {1, 2, 3}) do out[#out + 1] = v end
  eq("2,3,4", table.concat(out, ","))
  local sum = 0
  for _, v in p:imap_unordered(function(x) return x * x end, {1, 2, 3}) do sum = sum + v end
  eq(14, sum)
  eq("3,7", table.concat(p:starmap(function(a, b) return a + b end, {{1, 2}, {3, 4}}), ","))
end)

check("submit and futures", function()
  local f = p:submit(function(a, b) return a * b, "two" end, 6, 7)
  local a, b = f:result(20)
  eq(42, a); eq("two", b)
end)

check("task error names rank, host and traceback", function()
  local ok, err = pcall(p.map, p, function(x) if x == 2 then error("bad item") end return x end, {1, 2, 3})
  eq(false, ok)
  err = tostring(err)
  assert(err:find("item 2 failed in rank %d %(" .. cluster.hostname():gsub("%p", "%%%0") .. ", pid %d+%)"), err)
  assert(err:find("bad item", 1, true) and err:find("stack traceback", 1, true), err)
end)

check("upvalues travel, shared objects are refused", function()
  local k = 10
  eq(13, p:map(function(x) return x + k end, {3})[1])
  local q = concur.queue.new()
  local ok, err = pcall(p.map, p, function(x) return q end, {1})
  eq(false, ok)
  assert(tostring(err):find("cannot send a shared object", 1, true), err)
end)

check("seeds are per item and reproducible", function()
  local a = p:map(function() return math.random(1, 1e9) end, {1, 2, 3, 4}, {seed = 7})
  local b = p:map(function() return math.random(1, 1e9) end, {1, 2, 3, 4}, {seed = 7})
  eq(table.concat(a, ","), table.concat(b, ","))
end)

check("a second pool after the first is closed", function()
  p:close(); p:join()
  local q = pool.new{kind = "mpi", maxtasks = 1}
  eq("1,4,9", table.concat(q:map(function(x) return x * x end, {1, 2, 3}, {chunksize = 1}), ","))
  q:close(); q:join()
end)

io.write("done\n")
