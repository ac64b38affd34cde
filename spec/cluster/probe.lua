-- Run by spec/cluster_spec.lua on 3 ranks (mpirun -n 3): every rank checks
-- the SPMD API and prints one line per check, "ok <rank> <name>" or
-- "FAIL <rank> <name>: <why>"; the spec asserts on those lines.
local concur = require "concur"
local cluster = require "concur.cluster"
local process, thread, queue = concur.process, concur.thread, concur.queue
local rank, size = cluster.rank(), cluster.size()

local function check(name, fn)
  local ok, err = pcall(fn)
  io.write(ok and ("ok %d %s\n"):format(rank, name) or ("FAIL %d %s: %s\n"):format(rank, name, tostring(err)))
  io.flush()
end

local function eq(want, got, what)
  if want ~= got then error(("%s: expected %s, got %s"):format(what or "value", tostring(want), tostring(got)), 2) end
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("no error; expected one matching " .. pattern, 2) end
  if not tostring(err):find(pattern) then error("error " .. tostring(err) .. " does not match " .. pattern, 2) end
end

check("size", function() eq(3, size, "size") end)

check("codec values", function()
  -- ring: each rank sends to the next, receives from the previous
  local t = {n = rank, list = {1, 2.5, "three", true}, bytes = "a\0b"}
  t.self = t
  local k = rank * 100
  t.fn = function(x) return x + k end
  cluster.send(t, (rank + 1) % size, 5)
  local got, from, tag = cluster.recv((rank - 1) % size, 5, 20)
  eq((rank - 1) % size, from, "from")
  eq(5, tag, "tag")
  eq(from, got.n, "n")
  eq(got, got.self, "cycle")
  eq("a\0b", got.bytes, "bytes")
  eq(2.5, got.list[2], "float")
  eq(from * 100 + 1, got.fn(1), "function with upvalue")
end)

check("tag and source filters", function()
  if rank == 1 then
    cluster.send("first-tag1", 0, 1)
    cluster.send("second-tag2", 0, 2)
  elseif rank == 2 then
    cluster.send("from-2", 0, 1)
  else
    eq("second-tag2", (cluster.recv(1, 2, 20)), "tag 2 first")
    eq("from-2", (cluster.recv(2, nil, 20)), "source 2")
    local v, from, tag = cluster.recv(nil, nil, 20)
    eq("first-tag1", v, "remaining")
    eq(1, from, "from")
    eq(1, tag, "tag")
  end
end)

check("nil and false travel", function()
  if rank == 1 then cluster.send(nil, 0, 3); cluster.send(false, 0, 3)
  elseif rank == 0 then
    local v, from = cluster.recv(1, 3, 20)
    eq(nil, v); eq(1, from, "from")
    eq(false, (cluster.recv(1, 3, 20)))
  end
end)

check("scalars of every kind and strings around the small-message size", function()
  -- one scalar travels without the codec (bindings/fastmsg.h), on the C
  -- stack of both ranks; longer strings and tables take the codec
  local mtype = math.type or type -- (LuaJIT: numbers only)
  local vals = { true, 0, -1, math.maxinteger or 2^52, math.mininteger or -2^52, 2^53, -0.0, 1/0, -1/0, 0.1, "" }
  for _, len in ipairs { 1, 40, 47, 48, 49, 50, 56, 63, 64, 65, 200, 5000 } do vals[#vals + 1] = string.rep("x", len) end
  if rank == 1 then
    for _, v in ipairs(vals) do cluster.send(v, 0, 6) end
    cluster.send(0/0, 0, 6)
  elseif rank == 0 then
    for i, v in ipairs(vals) do
      local got = cluster.recv(1, 6, 20)
      eq(v, got, "value " .. i)
      eq(mtype(v), mtype(got), "type of value " .. i)
      if v == 0 and 1 / v < 0 then eq(-1/0, 1 / got, "sign of -0.0") end
    end
    local nan = cluster.recv(1, 6, 20)
    eq(true, nan ~= nan, "NaN")
  end
end)

check("recv timeout", function()
  local v, why = cluster.recv(nil, 999, 0.05)
  eq(nil, v); eq("timeout", why)
  v, why = cluster.recv(nil, 999, 0)
  eq("timeout", why)
end)

check("large message in chunks", function()
  -- CONCUR_CLUSTER_CHUNK is small in the spec: this crosses as many chunks
  local big = string.rep("0123456789abcdef", 64 * 1024) -- 1 MiB
  if rank == 2 then
    cluster.send({big, big:upper()}, 0, 4)
    cluster.send("small after big", 0, 4)
  elseif rank == 0 then
    local got = cluster.recv(2, 4, 30)
    eq(#big, #got[1], "length"); eq(true, got[1] == big, "bytes intact"); eq(true, got[2] == big:upper(), "second")
    eq("small after big", (cluster.recv(2, 4, 30)), "order")
  end
end)

check("shared objects refused with the path", function()
  local q = queue.new()
  raises('cannot send a shared object to another rank.*argument 1, at value%.jobs%[2%]%.q', cluster.send,
    {jobs = {1, {q = q}}}, (rank + 1) % size)
  raises('at value<upvalue q>', cluster.send, function() return q end, 0)
  raises('cannot send a coroutine', cluster.send, {co = coroutine.create(print)}, 0)
  raises('cannot send a shared object', cluster.bcast, q, rank)
end)

check("bad arguments named", function()
  raises("cluster.send: bad argument #2 %(destination rank 3 out of range 0..2%)", cluster.send, 1, 3)
  raises("cluster.send: bad argument #2 %(destination rank: integer expected, got non%-integer number%)", cluster.send, 1, 0/0)
  raises("bad argument #2", cluster.send, 1, math.huge)
  raises("bad argument #2", cluster.send, 1, 2^63)
  raises("bad argument #2 %(destination rank: integer expected, got no value%)", cluster.send, 1)
  raises("bad argument #3 %(tag %-1 out of range", cluster.send, 1, 0, -1)
  raises("bad argument #3 %(tag", cluster.send, 1, 0, 1.5)
  raises("cluster.recv: bad argument #3 %(timeout must be a non%-negative number%)", cluster.recv, nil, nil, 0/0)
  raises("cluster.recv: bad argument #3 %(timeout must be a non%-negative number%)", cluster.recv, nil, nil, -1)
  raises("cluster.recv: bad argument #1 %(source rank 7 out of range", cluster.recv, 7)
  raises("cluster.reduce: bad argument #2 %(function expected, got no value%)", cluster.reduce, 1)
  raises("cluster.bcast: bad argument #2 %(root rank", cluster.bcast, 1, -1)
end)

check("collectives", function()
  eq("from 1", cluster.bcast(rank == 1 and "from 1" or "ignored", 1), "bcast")
  local g = cluster.gather({r = rank}, 2)
  if rank == 2 then eq(0, g[1].r); eq(1, g[2].r); eq(2, g[3].r) else eq(nil, g, "gather off root") end
  local ag = cluster.allgather(rank * 10)
  eq(3, #ag); eq(0, ag[1]); eq(10, ag[2]); eq(20, ag[3])
  local order = cluster.reduce(tostring(rank), function(a, b) return a .. "," .. b end, 0)
  if rank == 0 then eq("0,1,2", order, "reduce in rank order") else eq(nil, order) end
  eq(3, cluster.reduce(rank, function(a, b) return a + b end, 1) or 3, "sum")
  cluster.barrier()
  local big = cluster.bcast(rank == 0 and string.rep("x", 300000) or nil, 0)
  eq(300000, #big, "chunked bcast")
end)

check("fork inside a rank", function()
  local p = process.spawn(function() return cluster.rank() * 2, process.pid() end)
  local v = p:join(20)
  eq(rank * 2, v, "child result")
  local c = process.spawn(function() return cluster.send(1, 0) end)
  raises("cluster.send: not available in a forked child %(pid %d+%) of rank " .. rank, function() c:join(20) end)
  local b = process.spawn(function() return cluster.barrier() end)
  raises("cluster.barrier: not available in a forked child", function() b:join(20) end)
end)

check("threads in a rank", function()
  -- a thread of rank 1 sends, a thread of rank 0 receives
  if rank == 1 then
    local t = thread.new(function() local c = require "concur.cluster"; c.send("from a thread", 0, 6); return true end)
    eq(true, t:join(20), "sender thread")
  elseif rank == 0 then
    local t = thread.new(function() local c = require "concur.cluster"; return (c.recv(1, 6, 20)) end)
    eq("from a thread", t:join(20), "receiver thread")
  end
end)

check("cancel interrupts a waiting recv", function()
  local t = thread.new(function() local c = require "concur.cluster"; return c.recv(nil, 998) end)
  eq(nil, (t:join(0.1)), "still waiting")
  t:cancel()
  local v, why = t:join(20)
  eq(nil, v); eq("cancelled", why)
end)

cluster.barrier()
io.write(("done %d\n"):format(rank))
