--[[
cluster_pool.lua -- the "mpi" and "auto" kinds of concur.pool, on
concur.cluster. Compiled into build/*/concur/cluster.so (Makefile, with
scripts/embed.lua) and run when concur.cluster loads, with (cluster, C) where
C holds the private pool channel: C.psend(v, rank), C.precv(from, timeout)
(a communicator of its own, so the script's own send/recv never see pool
traffic) and C.serving(on) (rank 0 tells its workers to leave at exit).

Launch. Rank 0 runs the script; every other rank serves. Two ways:
  mpirun -n 4 build/concur -l concur.serve script.lua
      concur.serve makes ranks 1..3 serve before the script is read, and
      leave when rank 0 ends (exit status 0) -- the script's top-level code
      runs once, on rank 0;
  mpirun -n 4 build/concur script.lua
      every rank runs the script up to pool.new{kind = "mpi"}; there ranks
      1..3 turn into workers and leave when rank 0 ends. The code before
      pool.new ran on every rank: a warning says so, once, on rank 1.

Backend (the seam in lib/concur/pool.lua). Worker slot s is rank s; slots
past size - 1 are placeholders that get no work, so the pool's default
size (cpu_count) does not matter. Hand-out is dynamic with one message in
flight per rank (a rank that ends after maxtasks then never holds an
unanswered message; with maxtasks, rank 0 counts what it sent and sends a
worker nothing past its quota); the rest wait in rank 0's backlog. A
worker fetches a call's function (pool.fns[gen], or a submitted function's
id) from rank 0 the first time it needs it ("need" -> "fn"); messages that
arrive meanwhile wait in the session's stash.

Failure model. A rank that dies ends the MPI job (mpirun aborts the others),
so alive() is false only for a worker that ended its session (maxtasks, init
failure). kill() cannot stop a remote computation: a timed-out item fails at
once, and its rank takes new work once it has finished the old.
]]
local cluster, C = ...
local concur = require "concur"
local clock = concur.clock

local M = {}
local epoch_counter = 0

local function rank_name()
  return ("rank %d (%s, pid %d)"):format(cluster.rank(), cluster.hostname(), concur.process.pid())
end

-- ------------------------------------------------------------ worker side

-- One worker session on this rank: run worker_main until rank 0 says stop,
-- maxtasks is reached, or init fails. Returns a message to handle next (a
-- new session that arrived while this one waited), or nil.
local function session(start)
  local pool = require "concur.pool"
  local epoch, wid, slot, n = start[2], start[3], start[4], start[5]
  local o = start[6]
  local me = rank_name()
  local after
  local stash, sh, st_ = {}, 1, 0 -- messages that came while fetching a function
  local function take()
    if sh <= st_ then
      local m = stash[sh]
      stash[sh] = nil
      sh = sh + 1
      return m
    end
    return C.precv(0)
  end
  -- the functions a call registered on rank 0 (pool.fns), fetched on first
  -- use: a chunk names its call's generation, a batch its functions' ids
  local fns = setmetatable({}, { __index = function(t, k)
    C.psend({ "need", epoch, wid, k }, 0)
    while true do
      local m = C.precv(0)
      if m == nil then -- rank 0 ended
        after = false
        return nil
      end
      if m[1] == "fn" and m[2] == k then
        rawset(t, k, m[3])
        return m[3]
      end
      st_ = st_ + 1
      stash[st_] = m
    end
  end })
  local live = setmetatable({}, { __index = function() return true end })
  local ctx = {
    st = concur.shared.array(4 * n + 1, "f64"), live = live, fns = fns, slot = slot, kind = "mpi",
    init = o.init, init_args = o.init_args, maxtasks = o.maxtasks,
  }
  function ctx.get()
    if after ~= nil then return nil end
    while true do
      local m = take()
      if m == nil then after = false return nil end -- rank 0 ended
      local what = m[1]
      if what == "task" then return m[2]
      elseif what == "stop" then return nil
      elseif what == "pool" then after = m return nil
      end
    end
  end
  function ctx.put(msg)
    if type(msg) == "table" then -- name the rank (a packed message has no error to name it in)
      if msg[2] == -1 then msg[4] = me else msg[5] = me end
    end
    C.psend({ "res", epoch, wid, msg }, 0)
  end
  pool._worker_main(ctx)
  if after == false then return false end
  C.psend({ "ended", epoch, wid }, 0)
  return after
end

-- Serve until rank 0 ends; then leave this process (exit status 0).
function M.serve()
  local m = nil
  while true do
    if m == nil then m = C.precv(0) end
    if m == nil then break end -- rank 0 ended
    if m == false then break end
    if m[1] == "pool" then m = session(m)
    else m = nil end -- a message of a session that is over
  end
  io.stdout:flush()
  os.exit(0)
end

-- ------------------------------------------------------------ rank 0 side

local warned = false

local function state(p)
  local s = p._mpi
  if s then return s end
  if cluster.rank() ~= 0 then
    -- launched without -l concur.serve: this rank becomes a worker here
    if cluster.rank() == 1 and not warned then
      warned = true
      io.stderr:write("concur.pool: kind = \"mpi\" without -l concur.serve: every rank ran the script's",
        " top-level code up to pool.new; ranks 1..", cluster.size() - 1, " serve from here",
        " (mpirun ... build/concur -l concur.serve script.lua runs it on rank 0 only)\n")
    end
    M.serve()
  end
  if cluster.size() < 2 then
    error("pool.new: kind = \"mpi\" needs at least 2 ranks (rank 0 runs the script, the others work);"
      .. " launched with " .. cluster.size() .. " (mpirun -n 3 ... -l concur.serve script.lua)", 0)
  end
  C.serving(true)
  epoch_counter = epoch_counter + 1
  s = { epoch = epoch_counter, ranks = cluster.size() - 1, backlog = {}, bfirst = 1, blast = 0,
        busy = {}, wid = {}, ended = {}, count = {}, nextwid = 0 }
  p._mpi = s
  return s
end

local function set_idle(p, s)
  local idle = 0
  for r = 1, s.ranks do
    if r <= p.n and s.wid[r] and not s.busy[r] and not s.ended[r] then idle = idle + 1 end
  end
  if p.idlei then p.st[p.idlei] = idle end -- (a later pool counts idle workers there)
end

-- how many items a task message holds (the pool packs scalar-only
-- messages into a string: {gen, cid, first, n, items} or {0, cid, n, tasks})
local function items_in(msg)
  if type(msg) == "table" then return msg[5] end
  local u = require("concur.pool")._C.unpack(msg)
  return u[1] == 0 and u[3] or u[4]
end

local function dispatch(p, s, r, msg)
  s.busy[r] = true
  if p.maxtasks then -- it ends after maxtasks items: send it no more
    s.count[r] = s.count[r] + items_in(msg)
    if s.count[r] >= p.maxtasks then s.ended[r] = "soon" end
  end
  C.psend({ "task", msg }, r)
end

-- hand backlog to the free ranks
local function pump(p, s)
  for r = 1, math.min(s.ranks, p.n) do
    if s.bfirst > s.blast then break end
    if s.wid[r] and not s.busy[r] and not s.ended[r] then
      local msg
      repeat -- chunks of a call that is over (an error, a cancel) are dropped
        msg = s.backlog[s.bfirst]
        s.backlog[s.bfirst] = nil
        s.bfirst = s.bfirst + 1
        if type(msg) == "table" and msg[1] ~= 0 and p.live[msg[1]] == nil then msg = nil end
      until msg or s.bfirst > s.blast
      if msg then dispatch(p, s, r, msg) end
    end
  end
  set_idle(p, s)
end

local backend = { name = "mpi" }

function backend.start(p, slot)
  local s = state(p)
  if slot > s.ranks then return { id = "unused slot " .. slot, placeholder = true } end
  s.nextwid = s.nextwid + 1
  local wid = s.nextwid
  s.wid[slot], s.busy[slot], s.ended[slot], s.count[slot] = wid, false, false, 0
  local o = { init = p.init, init_args = p.init_args, maxtasks = p.maxtasks }
  C.psend({ "pool", s.epoch, wid, slot, p.n, o }, slot)
  pump(p, s)
  return { id = "rank " .. slot, slot = slot, wid = wid }
end

function backend.send(p, msg)
  local s = state(p)
  s.blast = s.blast + 1
  s.backlog[s.blast] = msg
  pump(p, s)
end

function backend.recv(p, max, timeout)
  local s = state(p)
  local out = {}
  local wait = timeout
  while #out < max do
    local m = C.precv(nil, wait)
    if m == nil then break end
    wait = 0
    if m[2] == s.epoch then
      local r
      for k = 1, s.ranks do if s.wid[k] == m[3] then r = k break end end
      if m[1] == "res" then
        out[#out + 1] = m[4]
        if r then s.busy[r] = false end
      elseif m[1] == "ended" and r then
        s.ended[r] = true
      elseif m[1] == "need" then -- a worker fetches a function of a call
        local ok, v = pcall(function() return p.fns[m[4]] end)
        C.psend({ "fn", m[4], ok and v or nil }, r or m[3])
      end
      pump(p, s)
    end
  end
  return out
end

function backend.alive(p, w)
  if w.placeholder then return true end
  local s = p._mpi
  return not (s and s.wid[w.slot] == w.wid and s.ended[w.slot] == true)
end

function backend.kill(p, w)
  -- a remote computation cannot be stopped short of ending the job: the
  -- rank finishes it and its answer is dropped (see the top)
  w.killed = true
end

function backend.reap(p, w)
  if w.placeholder then return "exit 0" end
  local s = p._mpi
  if s and s.wid[w.slot] == w.wid then s.wid[w.slot] = nil end
  if w.killed then return "killed" end
  return "exit 0"
end

function backend.stop(p)
  local s = p._mpi
  if not s or s.stopped then return end
  s.stopped = true
  for r = 1, s.ranks do
    if r <= p.n and s.wid[r] and not s.ended[r] then C.psend({ "stop" }, r) end
  end
end

M.backend = backend

-- "auto": MPI when this is an MPI job of more than one rank, local
-- processes otherwise. The choice is made at the pool's first worker.
M.auto = { name = "auto" }
for _, f in ipairs { "send", "recv", "alive", "kill", "reap", "stop" } do
  M.auto[f] = function(p, ...) return p.be[f](p, ...) end
end
function M.auto.start(p, slot)
  local pool = require "concur.pool"
  local be = cluster.size() > 1 and backend or pool._backends.process
  p.be = be
  return be.start(p, slot)
end

-- register with the pool, if it is there
local ok, pool = pcall(require, "concur.pool")
if ok and type(pool) == "table" and pool._backends then
  pool._backends.mpi = backend
  pool._backends.auto = M.auto
end

return M
