--[[
pool.lua -- concur.pool: map, imap, imap_unordered, starmap, submit and
futures over worker processes or threads.

Compiled into the library as a string (Makefile: $(B)/gen/pool_lua.h) and
run once per lua_State by bindings/pool.c with (concur, helpers). Written in
the common subset of Lua 5.4 and LuaJIT (5.1 syntax and goto, no integer
division, no <close> inside): the orchestration is light, the heavy parts
(queues, the codec, processes, threads) are C.

How work moves.
  * One shared task queue feeds every worker (dynamic hand-out: a worker
    takes the next message when it is free), one result queue comes back.
  * A map call registers its function once, under a generation id, in a
    shared dict (`fns[gen]`); chunk messages carry only {gen, cid, first
    index or index list, items, n}. A worker caches the decoded function
    per generation. `live[gen]` is cleared when a call ends or is cancelled,
    so workers skip the chunks of a cancelled call without running them.
  * submit() in a process or thread pool puts its task in the task queue
    before it returns ({0, cid, j, nargs, args...}, one packed string when
    the function is registered and the arguments are scalars), so a task
    never waits on the caller. Workers take up to 64 messages at once while
    messages prove quick (< 0.2 ms), one at a time after one runs > 2 ms,
    and give back what they took but did not start after a long one. A
    cancelled submit is marked in the shared dict `skip` (and counted in
    `cancels[1]`, so workers look only when there are marks); the worker
    that takes it skips it. Under the MPI backend, which moves only when
    rank 0 calls into it, submit buffers in the caller and hands out
    batches, each one message with its distinct functions once: at once
    while a rank is idle (the last slot of `st` counts idle workers), when
    64 are buffered, and before every call that waits.
  * Messages made only of scalars (the usual map chunk of numbers or
    strings, a batch of tasks whose functions are registered) travel as
    one string packed by pool.c, which the codec copies instead of
    walking value by value.
  * Chunks grow while items prove quick: each reply says how long its
    message ran, and the caller sizes later messages to ~2 ms of work (at
    most 2048 items, less near the end of a known list). chunksize is the
    smallest hand-out.
  * Each worker owns four f64 slots of a shared.array `st`: the chunk id it
    runs, the item index it runs (stored before each item), the item's start
    time (only when a per-item timeout is set), and the item's position in
    its chunk; the array's last slot counts idle workers. The caller
    keeps every chunk it sent until its result arrives (`out[cid]`), so when
    a worker dies it knows exactly which item was running -- that item fails
    with "worker died (SIGKILL)" -- and re-queues the rest of the chunk;
    a replacement worker starts in the same slot. A worker killed between
    taking a message and recording it, or holding messages it took but had
    not started, loses them: after a death, a pool that stays quiet with
    chunks still out sends them again.
  * The pool terminates itself at the end of the state through a finalizer
    made after each worker (finalizers run newest first, so it runs before
    a worker handle's own finalizer would join a worker that waits for
    tasks), and a forked copy of a pool refuses every call.

The backend seam (issue 14 adds kind = "mpi"). Everything above the
backend -- chunking, futures, errors, seeds, journal, progress, death
handling -- talks to workers only through this table:

  backend.start(pool, slot) -> w     start a worker for slot (1..n) running
                                     worker_main(ctx); w is any table, w.id
                                     a printable name ("process 4242")
  backend.send(pool, msg)            hand a message to whichever worker is
                                     free (here: the shared task queue)
  backend.recv(pool, max, timeout)   up to max result messages, {} on timeout
  backend.alive(pool, w)             false once the worker has ended
  backend.reap(pool, w, quiet) -> why  after it ended: "SIGKILL", "exit 1: ...";
                                     quiet: it was just killed, the caller may
                                     be interrupted (poll, do not block)
  backend.kill(pool, w)              stop it now (SIGKILL / cancel)
  backend.stop(pool)                 no more tasks: workers finish and exit
  backend.immediate                  true when a message sent reaches an idle
                                     worker without further calls: submits
                                     are then sent at once, not buffered

`kind` may be such a table. A backend's workers run worker_main(ctx)
(exported as pool._worker_main) with ctx.get() / ctx.put(msg) in place of
the queues, and report their position through ctx.st like the process and
thread workers do (ctx = {st, live, fns, slot, kind, init, init_args,
maxtasks, get, put}); the pool's own pieces a backend uses are pool.st,
pool.live, pool.fns, pool.n and pool.workers.
]]

local concur, C = ...
local process, thread, queue, shared = concur.process, concur.thread, concur.queue, concur.shared
local clock = concur.clock
local unpack = table.unpack or unpack
local floor, huge = math.floor, math.huge
local type, pairs, ipairs, select, tostring, error, pcall, setmetatable =
  type, pairs, ipairs, select, tostring, error, pcall, setmetatable

local M = {}

local SIGNAMES = { [1] = "SIGHUP", [2] = "SIGINT", [3] = "SIGQUIT", [4] = "SIGILL", [6] = "SIGABRT",
  [7] = "SIGBUS", [8] = "SIGFPE", [9] = "SIGKILL", [11] = "SIGSEGV", [13] = "SIGPIPE",
  [14] = "SIGALRM", [15] = "SIGTERM" }

local function argerr(fname, n, msg) error(("%s: bad argument #%d (%s)"):format(fname, n, msg), 3) end

local function is_int(x) return type(x) == "number" and x == x and x ~= huge and x ~= -huge and floor(x) == x end

-- ------------------------------------------------------------------ worker

-- Runs in every worker (a forked process or a thread's own lua_State): take
-- messages until the task queue closes or maxtasks items have run.
local function worker_main(ctx)
  local concur = require "concur"
  local clock = concur.clock
  local unpack = table.unpack or unpack
  -- the message handler of every task: error(nil) reads "nil" under
  -- every VM (Lua 5.4's traceback of nil is a traceback with no message),
  -- so a task's error is never nil
  local dtraceback = debug.traceback
  local function traceback(e)
    if e == nil then e = "nil" end
    return dtraceback(e, 2)
  end
  local get, put = ctx.get, ctx.put
  -- take(k): up to k messages (nil once there are no more); give_back(ms)
  -- returns messages not started
  local take, give_back
  if not get then
    local tq, rq = ctx.tq, ctx.rq
    local share = ctx.n or 1 -- take at most 1/n of what is queued
    put = function(m) return rq:put(m) end
    take = function(k)
      if k > 1 then
        local fair = math.floor(#tq / share)
        if fair < k then k = fair > 1 and fair or 1 end
      end
      return tq:get_many(k)
    end
    give_back = function(ms) tq:put_many(ms) end
  else -- a backend's own channel: one message at a time
    take = function()
      local m = get()
      if m == nil then return nil end
      return { m }
    end
  end
  local cancels, skip = ctx.cancels, ctx.skip
  local C = require("concur.pool")._C
  local st, live, fns = ctx.st, ctx.live, ctx.fns
  local slot = ctx.slot
  local b = (slot - 1) * 4
  local idle = #st
  local me
  if ctx.kind == "thread" then me = "thread " .. concur.thread.id()
  else me = "process " .. concur.process.pid() end
  local jit = rawget(_G, "jit") ~= nil
  local function seed(S, i)
    if jit then math.randomseed((S * 1000003 + i) % 4503599627370496)
    else math.randomseed(S, i) end
  end
  if ctx.init then
    local a = ctx.init_args or {}
    local ok, err = xpcall(ctx.init, traceback, unpack(a, 1, a.n or #a))
    if not ok then
      put({ slot, -1, tostring(err), me })
      return
    end
  end
  local function pack(...) return { n = select("#", ...), ... } end
  local cache = {}
  local fcache = {}
  local NOFNS = {}
  local U = {} -- reused by every packed message (read before the next)
  local count = 0
  -- send a result message; a result that cannot cross becomes that
  -- item's error instead of killing the worker
  local t0 = 0 -- when the current message started: replies say how long it ran
  -- (each reply goes at once: held for the next message, it would wait as
  -- long as that message runs)
  local function reply(cid, res, errs, n)
    local dt = clock() - t0
    if not errs and type(res) == "string" then
      put(C.pack({ slot, cid, n, me, res, dt }, 1, 6))
      return
    end
    local ok, err = pcall(put, { slot, cid, res, errs, me, n, dt })
    if ok then return end
    errs = errs or {}
    for k = 1, n do
      if not errs[k] then
        local ok2 = pcall(concur.encode, res[k])
        if not ok2 then errs[k] = "result could not be sent: " .. tostring(err); res[k] = nil end
      end
    end
    ok, err = pcall(put, { slot, cid, res, errs, me, n })
    if not ok then
      for k = 1, n do res[k] = nil; errs[k] = errs[k] or ("result could not be sent: " .. tostring(err)) end
      put({ slot, cid, {}, errs, me, n })
    end
  end
  -- One submit packed as {0, cid, j, nargs, args...} (u), its function
  -- registered (j < 0): run it; its results go back as one packed string
  -- {slot, -cid, nres, values...}, or, when it failed or a result needs the
  -- codec, in the forms of a batch's reply (finish). Runs of them are run
  -- by pool.c's singles, the same steps in C.
  local function finish(cid, ok, ...)
    if ok then
      reply(cid, { { select("#", ...), ... } }, nil, 1)
    else
      local err = ...
      reply(cid, C.pack({ -1 }, 1, 1), { err }, 1)
    end
  end
  local function finish_single(cid, ok, ...)
    if ok then
      local msg = C.packv(slot, -cid, select("#", ...), ...)
      if msg then put(msg) return end
    end
    finish(cid, ok, ...)
  end
  local function single(u, cid)
    local j, na = u[3], u[4]
    local fn = fcache[j]
    if not fn then fn = fns[j]; fcache[j] = fn end
    st[b + 2] = 1
    finish_single(cid, xpcall(fn, traceback, unpack(u, 5, 4 + na)))
  end
  local rq = ctx.rq
  local singles = not get and cancels and C.singles
  -- Messages are taken several at a time while they prove quick (up to
  -- 64, and at most 1/n of those queued: a burst of submits costs one queue
  -- operation per worker wake-up), one at a time once one runs long, so
  -- slow work is still spread; after a long one, and when another worker
  -- waits, the messages not started go back for the other workers.
  local group, gi, gn, want = nil, 0, 0, 1
  local function give_rest() -- the messages taken but not started go back
    if gi >= gn or not give_back then return end
    local rest = {}
    for k = gi + 1, gn do rest[#rest + 1] = group[k]; group[k] = nil end
    give_back(rest)
    gn = gi
  end
  while true do
    if gi >= gn then
      st:add(idle, 1) -- (the pool's count of idle workers)
      group = take(want)
      st:add(idle, -1)
      if group == nil then break end
      gi, gn = 0, #group
      -- others wait for work: keep a fair share, they take the rest (what
      -- was quick may now be long: holding it all would idle them)
      local others = gn > 1 and give_back and st[idle] or 0
      if others > 0 then
        gi = math.ceil(gn / (others + 1)) -- kept: 1..gi; give_rest hands back the rest
        give_rest()
        gi = 0
      end
    end
    if singles then -- quick submits in a row, in C; it stops at anything else
      local done, long = singles(group, gi, gn, fcache, st, b, cancels, rq, slot, traceback, finish,
        ctx.maxtasks and ctx.maxtasks - count or gn)
      if done > 0 then
        gi, count = gi + done, count + done
        if long then want = 1; give_rest() else want = 64 end
        if ctx.maxtasks and count >= ctx.maxtasks then give_rest() break end
      end
    end
    if gi < gn then
      gi = gi + 1
      local m = group[gi]
      group[gi] = nil
      t0 = clock()
      local u -- one submit, packed: {0, cid, j, nargs, args...}
      if type(m) == "string" then -- a message of scalars travels packed
        u = C.unpack(m, U, 1)
        if u[1] ~= 0 then m, u = { u[1], u[2], u[3], u[5], u[4] }, nil
        elseif type(u[4]) == "string" then m, u = { 0, u[2], NOFNS, u[4], u[3] }, nil
        else m = u end
      end
      local gen, cid = m[1], m[2]
      st[b + 1] = cid
      if gen == 0 and (u or m[5] == 1) and cancels and cancels[1] > 0 and skip[cid] then
        put({ slot, cid, false, nil, me, 0 }) -- cancelled before it started
      elseif u then
        single(u, cid)
        count = count + 1
      elseif gen ~= 0 then
        local spec = cache[gen]
        if spec == nil and live[gen] then
          spec = fns[gen]
          cache[gen] = spec
        end
        if spec and live[gen] then
          local fn, star, S, timed = spec.fn, spec.star, spec.seed, spec.timeout
          local first, items, n = m[3], m[4], m[5]
          if type(items) == "string" then items = C.unpack(items) end
          local idx = type(first) == "table" and first or nil
          local res, errs = C.table(n), nil
          local k = 0
          -- one protected call runs the whole chunk; a failure records that
          -- item's error and resumes after it
          local function run()
            while k < n do
              k = k + 1
              local i = idx and idx[k] or first + k - 1
              st[b + 2] = i
              if timed then st[b + 3] = clock() end
              if S then seed(S, i) end
              if star then
                local a = items[k]
                res[k] = fn(unpack(a, 1, a.n or #a))
              else
                res[k] = fn(items[k])
              end
            end
          end
          if star or S or timed then
            while k < n do
              local ok, err = xpcall(run, traceback)
              if not ok then
                errs = errs or {}
                errs[k] = err
              end
            end
          else -- the plain case loops in C (pool.c: run)
            while k < n do
              st[b + 4] = k -- (run stores each item's; still k: it failed before one)
              local ok, err = xpcall(C.run, traceback, fn, items, n, res, st, b, first, k)
              if ok then k = n
              else
                local at = st[b + 4]
                k = at > k and at or k + 1
                errs = errs or {}
                errs[k] = err
              end
            end
          end
          reply(cid, not errs and C.pack(res, 1, n) or res, errs, n)
          count = count + n
        else
          cache[gen] = false
          put({ slot, cid, false, nil, me, 0 }) -- skipped: its call is over
        end
      else
        -- a batch of submitted tasks: m = {0, cid, fns, tasks}; tasks is
        -- packed {j, nargs, args..., j, nargs, ...} or a table of {j, args};
        -- j > 0 is fns[j], j < 0 a function registered in the shared dict
        local fl, tasks = m[3], m[4]
        local packed = type(tasks) == "string"
        local flat = packed and C.unpack(tasks)
        local n = m[5]
        local res, errs = {}, nil
        local out, no = {}, 0 -- packed results: {nres, values..., nres, ...}
        local pos = 1
        for k = 1, n do
          local j, r
          st[b + 2] = k
          if packed then
            j = flat[pos]
            local na = flat[pos + 1]
            local fn = j > 0 and fl[j] or fcache[j]
            if not fn then fn = fns[j]; fcache[j] = fn end
            r = pack(xpcall(fn, traceback, unpack(flat, pos + 2, pos + 1 + na)))
            pos = pos + 2 + na
          else
            local t = tasks[k]
            j = t[1]
            local fn = j > 0 and fl[j] or fcache[j]
            if not fn then fn = fns[j]; fcache[j] = fn end
            local a = t[2]
            r = pack(xpcall(fn, traceback, unpack(a, 1, a.n)))
          end
          if r[1] then
            local nr = r.n - 1
            r[1] = nr -- r = {count, values...}
            res[k] = r
            no = no + 1
            out[no] = nr
            for x = 2, nr + 1 do out[no + x - 1] = r[x] end
            no = no + nr
          else
            errs = errs or {}
            errs[k] = r[2]
            no = no + 1
            out[no] = -1
          end
        end
        res = C.pack(out, 1, no) or res
        reply(cid, res, errs, n)
        count = count + n
      end
      local now = clock()
      if now - t0 > 0.002 then -- long work: the rest of the group goes back
        want = 1
        give_rest()
      elseif now - t0 < 2e-4 then
        want = 64
      end
      -- (no item first: a worker that dies after it records its next cid
      -- and before its first item leaves at 0, "none started", not the
      -- last item of this message)
      st[b + 2] = 0
      st[b + 1] = 0
      if ctx.maxtasks and count >= ctx.maxtasks then
        give_rest()
        break
      end
    end
  end
end
M._worker_main = worker_main

-- ------------------------------------------------------------------ backends

local function queue_send(pool, msg) pool.tq:put(msg) end
-- Blocks on the result queue itself (woken by the put, no polling); a
-- worker's death is noticed by the caller's periodic check (every 50 ms).
local function queue_recv(pool, max, timeout)
  local got = pool.rq:get_many(max, 0)
  if got then return got end
  if timeout <= 0 then return {} end
  return pool.rq:get_many(max, timeout < 0.05 and timeout or 0.05) or {}
end
local function queue_stop(pool) pool.tq:close() end

local function worker_ctx(pool, slot)
  return { tq = pool.tq, rq = pool.rq, st = pool.st, live = pool.live, fns = pool.fns, slot = slot,
    kind = pool.kind, init = pool.init, init_args = pool.init_args, maxtasks = pool.maxtasks,
    cancels = pool.cancels, skip = pool.skip, n = pool.n }
end

local backends = {}

backends.process = {
  start = function(pool, slot)
    local h = process.spawn { worker_main, worker_ctx(pool, slot), name = "pool worker " .. slot }
    return { h = h, id = "process " .. h.pid }
  end,
  send = queue_send, recv = queue_recv, stop = queue_stop, immediate = true,
  alive = function(pool, w) return w.h:alive() end,
  kill = function(pool, w) w.h:kill("SIGKILL") end,
  reap = function(pool, w, quiet)
    if quiet then -- killed, maybe with the interruption flag up: poll
      for _ = 1, 1000 do if not w.h:alive() then break end C.nap(0.002) end
    end
    local ok, err = pcall(w.h.join, w.h)
    local code = w.h.exitcode
    if type(code) == "number" and code < 0 then return SIGNAMES[-code] or ("signal " .. -code) end
    if ok then return "exit 0" end
    return "exit " .. tostring(code) .. ": " .. tostring(err)
  end,
}

backends.thread = {
  start = function(pool, slot)
    local h = thread.new(worker_main, worker_ctx(pool, slot))
    return { h = h, id = "thread " .. slot }
  end,
  send = queue_send, recv = queue_recv, stop = queue_stop, immediate = true,
  alive = function(pool, w) return w.h:alive() end,
  kill = function(pool, w) w.h:cancel() end,
  reap = function(pool, w, quiet)
    if quiet then
      for _ = 1, 400 do if not w.h:alive() then break end C.nap(0.005) end
    end
    local ok, r1, r2 = pcall(w.h.join, w.h, quiet and 0 or 5)
    if not ok then return "error: " .. tostring(r1) end
    if r1 == nil and r2 == "cancelled" then return "cancelled" end
    if r1 == nil and r2 == "timeout" then return "did not stop" end
    return "exit 0"
  end,
}

M._backends = backends

-- ------------------------------------------------------------------ progress

-- the progress line is concur.progress's (bindings/progress.c)
local function new_progress(total, label)
  return concur.progress(total, label)
end

-- ------------------------------------------------------------------ sources

-- take(s, i0, k): items[i0 .. i0 + k - 1] (up to n) as an array, and how many
local function indexed_take(items, n)
  return function(s, i0, k)
    local out = {}
    local last = i0 + k - 1
    if last > n then last = n end
    for i = i0, last do out[i - i0 + 1] = items[i] end
    return out, last - i0 + 1
  end
end

-- items: an array, a shared.list, or an iterator function (consumed lazily)
local function source(fname, items)
  local t = type(items)
  if t == "table" then
    local n = #items
    -- raw packing only for plain tables: a proxy's items come from __index
    local arr = getmetatable(items) == nil and items or nil
    return { n = n, arr = arr, take = indexed_take(items, n) }
  elseif t == "function" then
    local ended = false
    return { n = nil, take = function(s, i0, k)
      local out, c = {}, 0
      while c < k and not ended do
        local v = items()
        if v == nil then ended = true; s.n = i0 + c - 1
        else c = c + 1; out[c] = v end
      end
      return out, c
    end }
  elseif t == "userdata" and pcall(function() return items.totable and items.append end) and items.append then
    local n = #items
    return { n = n, take = indexed_take(items, n) }
  end
  argerr(fname, 2, "items expected: an array, a shared.list or an iterator function, got " .. t)
end

-- ------------------------------------------------------------------ journal

local JHEAD = "concur.pool journal 1\n"

local function items_digest(fname, all, n)
  local h = C.fnv("")
  for i = 1, n do
    local ok, s = pcall(concur.encode, all[i])
    if not ok then error(("%s: journal: item %d cannot be recorded (%s)"):format(fname, i, s), 0) end
    h = C.fnv(s, h)
  end
  return h
end

-- read what a previous run finished; refuse a journal of other items
local function journal_open(fname, path, digest, n)
  local done = {}
  local f = io.open(path, "rb")
  if f then
    local data = f:read("*a") or ""
    f:close()
    if #data > 0 then
      local head = JHEAD .. digest .. " " .. n .. "\n"
      if data:sub(1, #head) ~= head then
        if data:sub(1, #JHEAD) ~= JHEAD then
          error(("%s: journal %s is not a pool journal"):format(fname, path), 0)
        end
        error(("%s: journal %s was written for a different item list (delete it to start over)")
          :format(fname, path), 0)
      end
      local pos = #head + 1
      while true do
        local len, at = data:match("^(%d+)\n()", pos)
        if not len then break end
        len = tonumber(len)
        if at + len - 1 > #data then break end -- a record cut by a kill
        local ok, i, v = pcall(concur.decode, data:sub(at, at + len - 1), { trust = true })
        if not ok or type(i) ~= "number" then break end
        done[i] = { v }
        pos = at + len
      end
      -- rewrite: drop a torn tail so appends stay parseable
      local good = data:sub(1, pos - 1)
      if #good ~= #data then
        local w = assert(io.open(path, "wb"))
        w:write(good)
        w:close()
      end
      local a = assert(io.open(path, "ab"))
      return done, a
    end
  end
  local a, err = io.open(path, "wb")
  if not a then error(("%s: journal: %s"):format(fname, err), 0) end
  a:write(JHEAD, digest, " ", n, "\n")
  a:flush()
  return done, a
end

-- ------------------------------------------------------------------ the pool

local Pool = {}
Pool.__index = Pool
local Future = {}
-- a submit's future is a userdata of pool.c; these read and write its
-- fields as if it were a table (and only find methods for a table future)
Future.__index, Future.__newindex = C.fut_index, C.fut_newindex
C.bind(C, Pool, Future)

local function check_pool(p, fname)
  if getmetatable(p) ~= Pool then error(("%s: bad self (pool expected, got %s)"):format(fname, type(p)), 3) end
  if p.owner ~= process.pid() then
    error(("%s: the pool belongs to process %d (a forked child cannot use its parent's pool)"):format(fname, p.owner), 3)
  end
  if p.broken then error(p.broken, 3) end
  if p.closed then error(fname .. ": the pool is closed", 3) end
end

-- A finalizer made after each worker: at the end of the state, objects are
-- finalized newest first, so this runs before the worker's handle would
-- join a worker still waiting for tasks (a hang) and terminates the pool.
-- A replaced worker's finalizer is disarmed: only the newest of a slot acts.
local function sentinel(p, s)
  local token = {}
  p.tokens[s] = token
  local function stop() if p.tokens[s] == token then pcall(p.terminate, p) end end
  if rawget(_G, "newproxy") then
    local u = newproxy(true)
    getmetatable(u).__gc = stop
    return u
  end
  return setmetatable({}, { __gc = stop })
end

local function start_worker(p, s)
  p.workers[s] = p.be.start(p, s)
  p.sentinels[s] = sentinel(p, s)
end

function M.new(opts)
  local fname = "pool.new"
  if opts ~= nil and type(opts) ~= "table" then argerr(fname, 1, "options table expected, got " .. type(opts)) end
  opts = opts or {}
  local n = opts.workers
  if n == nil then n = process.cpu_count() end
  if not is_int(n) or n < 1 or n > 4096 then argerr(fname, 1, "workers must be an integer 1..4096, got " .. tostring(n)) end
  local kind = opts.kind or "process"
  -- "mpi" and "auto" are registered by concur.cluster (mpi/): load it on
  -- demand; "auto" without an MPI launch (or without the module) is "process"
  if (kind == "mpi" or kind == "auto") and not backends[kind] then
    if kind == "mpi" or os.getenv("OMPI_COMM_WORLD_SIZE") or os.getenv("PMI_SIZE") then
      local ok, err = pcall(require, "concur.cluster")
      if not ok and kind == "mpi" then
        error(fname .. ": kind \"mpi\" needs the concur.cluster module (" .. tostring(err):match("^[^\n]*") .. ")", 2)
      end
    end
    if kind == "auto" and not backends.auto then kind = "process" end
  end
  local be = type(kind) == "table" and kind or backends[kind]
  if not be then argerr(fname, 1, "kind must be \"process\", \"thread\", \"mpi\" or \"auto\", got " .. tostring(kind)) end
  if opts.init ~= nil and type(opts.init) ~= "function" then argerr(fname, 1, "init must be a function") end
  if opts.init_args ~= nil and type(opts.init_args) ~= "table" then argerr(fname, 1, "init_args must be a table") end
  local mt = opts.maxtasks
  if mt ~= nil and (not is_int(mt) or mt < 1) then argerr(fname, 1, "maxtasks must be an integer >= 1, got " .. tostring(mt)) end
  local p = setmetatable({
    owner = process.pid(), n = n, kind = type(kind) == "string" and kind or (kind.name or "custom"), be = be,
    init = opts.init, init_args = opts.init_args, maxtasks = mt,
    tq = queue(), rq = queue(), st = shared.array(4 * n + 1, "f64"),
    live = shared.dict(), fns = shared.dict(),
    workers = {}, idlei = 4 * n + 1, fcache = setmetatable({}, { __mode = "k" }), nfids = 0, out = {}, nextcid = 0, nextgen = 0,
    jobs = setmetatable({}, { __mode = "k" }), sub = {}, nsub = 0, lastcheck = clock(),
    immediate = be.immediate,
  }, Pool)
  if be.immediate then -- cancelled submits the workers skip: skip[cid], counted in cancels[1]
    p.cancels, p.skip = shared.array(1, "i64"), shared.dict()
  end
  if be.send == queue_send then p.direct = p.tq end -- submits put straight into it
  if p.init_args then p.init_args.n = p.init_args.n or #p.init_args end
  if rawget(_G, "newproxy") then -- LuaJIT: tables have no __gc
    p.proxy = newproxy(true)
    getmetatable(p.proxy).__gc = function() pcall(p.terminate, p) end
  end
  p.sentinels, p.tokens = {}, {}
  for s = 1, n do start_worker(p, s) end
  return p
end

local function send_chunk(p, job, rec)
  p.nextcid = p.nextcid + 1
  local cid = p.nextcid
  p.out[cid] = rec
  rec.job = job
  -- scalars only: one string, which the codec copies instead of walking
  local m
  if rec.batch then
    local nt = #rec.futs
    if rec.packed and next(rec.fl) == nil then m = C.pack({ 0, cid, nt, rec.packed }, 1, 4)
    elseif rec.packed then m = { 0, cid, rec.fl, rec.packed, nt }
    else -- arguments that are not scalars: {j, args} per task, through the codec
      local tasks = {}
      for k = 1, nt do
        local f = rec.futs[k]
        tasks[k] = { rec.js[k], { n = f.n, unpack(f, 1, f.n) } }
      end
      m = { 0, cid, rec.fl, tasks, nt }
    end
  else
    if type(rec.first) == "number" and type(rec.items) == "string" then
      m = C.pack({ job.gen, cid, rec.first, rec.n, rec.items }, 1, 5)
    end
    m = m or { job.gen, cid, rec.first, rec.items, rec.n }
  end
  p.be.send(p, m)
end

local send_single -- (below: a submit's own message)

-- a cancel's mark is done with (its task's reply came, or it goes again):
-- workers look for marks only while cancels[1] counts some
local function unskip(p, cid)
  if p.skip[cid] then
    p.skip[cid] = nil
    p.cancels:add(1, -1)
  end
end

-- a chunk that lost its worker: item `at` failed, the rest go again
local function requeue(p, rec, at)
  if rec.single then -- one submit: again, unless it was the item that failed
    -- (settled by worker_ended when `at` said it ran; any other `at` is
    -- what the worker ran before: it died before it started this one)
    if rec.skipped then unskip(p, rec.cid) end
    if rec.state == "running" then -- its message again, under the same cid
      p.out[rec.cid] = rec
      p.be.send(p, rec.m)
    end
    return
  end
  if rec.batch then
    local futs, js = {}, {}
    for k = 1, #rec.futs do
      if k ~= at then futs[#futs + 1], js[#js + 1] = rec.futs[k], rec.js[k] end
    end
    if #futs > 0 then send_chunk(p, rec.job, { batch = true, fl = rec.fl, futs = futs, js = js }) end -- as a table
    return
  end
  local idx, items = {}, {}
  if type(rec.items) == "string" then rec.items = C.unpack(rec.items) end
  for k = 1, rec.n do
    local i = type(rec.first) == "table" and rec.first[k] or rec.first + k - 1
    if i ~= at then idx[#idx + 1] = i; items[#items + 1] = rec.items[k] end
  end
  if #idx > 0 and not rec.job.over then
    send_chunk(p, rec.job, { first = idx, items = items, n = #idx })
  end
end

-- whether item i is one of a map chunk's
local function chunk_has(rec, i)
  local first = rec.first
  if type(first) == "table" then
    for k = 1, rec.n do if first[k] == i then return true end end
    return false
  end
  return type(i) == "number" and i >= first and i < first + rec.n
end

-- the futures a record of submitted tasks holds: a batch's, or the one
-- future that is its own record (a submit sent on its own)
local function futures_of(rec) return rec.futs or { rec } end

-- a worker ended: fail what it ran, re-queue the rest, start another
-- (cid, at: what it ran, when the caller read it before stopping it: a
-- cancelled thread may answer and take its next message at once)
local function worker_ended(p, s, why, cid, at)
  local w = p.workers[s]
  local b = (s - 1) * 4
  if not cid then cid, at = p.st[b + 1], p.st[b + 2] end
  p.had_death = true
  local reason = why or p.be.reap(p, w)
  if why then p.be.reap(p, w) end
  p.st[b + 1], p.st[b + 2], p.st[b + 3] = 0, 0, 0
  p.workers[s] = nil
  local rec = cid ~= 0 and p.out[cid]
  if rec then
    p.out[cid] = nil
    local msg = why and reason or ("worker died (" .. reason .. ")")
    if rec.batch or rec.single then
      local f = futures_of(rec)[at]
      if f then f:_settle(false, msg, w.id) end
    elseif chunk_has(rec, at) then
      rec.job:fail(at, msg, w.id)
    else
      at = nil -- it died before it started an item of this chunk: all again
    end
    requeue(p, rec, at)
  end
  if not p.closed and not p.broken then start_worker(p, s) end
end

-- A worker killed between taking a message and recording its chunk id
-- leaves a chunk nobody holds. After a death, when the pool has been quiet
-- for three checks in a row (no message queued either way, every worker
-- without a chunk) while chunks are still out, those were lost: send them
-- again (nothing of them ran, or it ran on the dead worker).
local function find_lost(p)
  if not next(p.out) then p.had_death, p.quiet = false, 0; return end
  local quiet = #p.tq == 0 and #p.rq == 0
  for s = 1, p.n do
    if quiet and p.st[(s - 1) * 4 + 1] ~= 0 then quiet = false end
  end
  p.quiet = quiet and (p.quiet or 0) + 1 or 0
  if p.quiet < 3 then return end
  p.quiet = 0
  local lost = {}
  for cid, rec in pairs(p.out) do lost[#lost + 1] = rec; p.out[cid] = nil end
  for _, rec in ipairs(lost) do
    requeue(p, rec, nil)
  end
end

local function check_workers(p)
  p.lastcheck = clock()
  if p.had_death then find_lost(p) end
  local now = p.lastcheck
  for s = 1, p.n do
    local w = p.workers[s]
    if w then
      if not p.be.alive(p, w) then
        worker_ended(p, s)
      else
        local b = (s - 1) * 4
        local cid, at = p.st[b + 1], p.st[b + 2]
        local rec = cid ~= 0 and p.out[cid]
        local to = rec and rec.job and rec.job.timeout
        if to and p.st[b + 3] > 0 and now - p.st[b + 3] > to then
          p.be.kill(p, w)
          worker_ended(p, s, ("timed out after %gs"):format(to), cid, at)
        end
      end
    end
  end
end

-- settle f from t[at] = its number of results, t[at + 1 ..] = the results;
-- returns that number
local function settle_from(f, t, at, who)
  local nr = t[at]
  if nr == 1 then f:_settle(true, t[at + 1], who, 1)
  elseif nr == 0 then f:_settle(true, nil, who, 0)
  else f:_settle(true, { unpack(t, at + 1, at + nr) }, who, nr) end
  return nr
end

local DU = {} -- deliver's unpacked reply, read before the next
local function deliver(p, m)
  if type(m) == "string" then
    local u = C.unpack(m, DU, 1)
    local cid = u[2]
    if cid < 0 then -- one submit's results: {slot, -cid, nres, values...}
      cid = -cid
      local rec = p.out[cid]
      if not rec then return end
      p.out[cid] = nil
      if rec.skipped then unskip(p, cid) end
      settle_from(rec, u, 3, nil)
      return
    end
    m = { u[1], cid, u[5], nil, u[4], u[3], u[6] }
  end
  local slot, cid = m[1], m[2]
  if cid == -1 then
    p.broken = ("pool: init failed in %s: %s"):format(m[4], m[3])
    return
  end
  local rec = p.out[cid]
  if not rec then return end
  p.out[cid] = nil
  local res, errs, me, n = m[3], m[4], m[5], m[6]
  if rec.batch or rec.single then -- submitted tasks: {nres, values...} or an error each
    if rec.skipped then unskip(p, cid) end
    if res == false then -- one submit its worker skipped: cancelled
      if rec.state == "running" then
        rec.state = "cancelled"
      end
      return
    end
    local futs = futures_of(rec)
    local flat, pos = type(res) == "string" and C.unpack(res), 1
    for k = 1, #futs do
      local f = futs[k]
      if errs and errs[k] ~= nil then
        f:_settle(false, errs[k], me)
        if flat then pos = pos + 1 end
      elseif flat then
        pos = pos + 1 + settle_from(f, flat, pos, me)
      else
        settle_from(f, res[k], 1, me)
      end
    end
    return
  end
  local job = rec.job
  if res == false then
    if not job.over then requeue(p, rec, nil) end
    return
  end
  local dt = m[7]
  if dt and n > 0 then -- seconds per item, smoothed: sizes the next messages
    local per = dt / n
    job.per = job.per and 0.7 * job.per + 0.3 * per or per
  end
  job:chunk_done(rec, res, errs, me, n)
end

-- Functions submitted again and again are registered once in the shared
-- dict (key -id) and sent by id. Only when that cannot change what the
-- task sees: a Lua function whose upvalues are scalars, shared objects,
-- loaded modules, _ENV, or functions without upvalues of their own; each
-- submit re-checks that every upvalue is still the same value.
local function cacheable(fn)
  local info = debug.getinfo(fn, "Su")
  if info.what == "C" then return nil end
  local ups = {}
  for i = 1, info.nups do
    local name, v = debug.getupvalue(fn, i)
    local t = type(v)
    if t == "table" then
      if name ~= "_ENV" and not package.loaded[name] and not (function()
        for _, m in pairs(package.loaded) do if m == v then return true end end
      end)() then return nil end
    elseif t == "function" then
      local fi = debug.getinfo(v, "u")
      if fi.nups > 1 or (fi.nups == 1 and debug.getupvalue(v, 1) ~= "_ENV") then return nil end
    elseif t == "thread" then
      return nil
    end
    ups[i] = v
  end
  return { seen = 0, ups = ups, n = info.nups }
end

-- the same upvalue: rawequal, and for a number the same subtype and the
-- same sign of zero (rawequal(0.0, -0.0) and rawequal(1, 1.0) are true)
local mtype = math.type
local function same(a, b)
  if not rawequal(a, b) then return false end
  if type(a) ~= "number" then return true end
  if mtype and mtype(a) ~= mtype(b) then return false end
  return a ~= 0 or 1 / a == 1 / b
end

local function fn_id(p, fn)
  local e = p.fcache[fn]
  if e == nil then
    e = cacheable(fn) or false
    p.fcache[fn] = e
  end
  if not e then return nil end
  local getupvalue = debug.getupvalue
  for i = 1, e.n do
    local _, v = getupvalue(fn, i)
    if not same(v, e.ups[i]) then p.fcache[fn] = false; return nil end
  end
  if e.id then return e.id end
  e.seen = e.seen + 1
  if e.seen < 2 or p.nfids >= 256 then return nil end
  p.nfids = p.nfids + 1
  e.id = -p.nfids
  p.fns[e.id] = fn
  return e.id
end

-- A buffered future holds its arguments in its array part (f[1..f.n]) until it is
-- settled; a batch record lists its futures and their function refs (js).
local function flush(p, parts)
  if p.nsub == 0 then return end
  local sub = p.sub
  p.sub, p.nsub = {}, 0
  local fl, fidx, futs, js = {}, {}, {}, {}
  local flat, nf = {}, 0
  for k = 1, #sub do
    local f = sub[k]
    if f.state == "pending" then
      local fn = f.fn
      local j = fidx[fn]
      if not j then
        j = fn_id(p, fn)
        if not j then j = #fl + 1; fl[j] = fn end
        fidx[fn] = j
      end
      local n = #futs + 1
      futs[n], js[n] = f, j
      local na = f.n
      flat[nf + 1], flat[nf + 2] = j, na
      for x = 1, na do flat[nf + 2 + x] = f[x] end
      nf = nf + 2 + na
      f.state = "running"
      f.fn = nil
    end
  end
  local nt = #futs
  if nt == 0 then return end
  -- one batch per worker, so tasks buffered while the workers started or
  -- were busy are spread, not all queued behind one worker
  parts = parts or p.n
  if parts > nt then parts = nt end
  if parts <= 1 then
    send_chunk(p, nil, { batch = true, fl = fl, futs = futs, js = js, packed = C.pack(flat, 1, nf) })
    return
  end
  local per = math.ceil(nt / parts)
  local pos = 1
  for k0 = 1, nt, per do
    local fs, jj = {}, {}
    local start = pos
    for k = k0, math.min(k0 + per - 1, nt) do
      fs[#fs + 1], jj[#jj + 1] = futs[k], js[k]
      pos = pos + 2 + futs[k].n
    end
    send_chunk(p, nil, { batch = true, fl = fl, futs = fs, js = jj, packed = C.pack(flat, start, pos - start) })
  end
end

-- Process and thread pools: a submit goes into the task queue at once, as a
-- message of its own ({0, cid, j, nargs, args...} packed when the function
-- is registered and the arguments are scalars), so it runs as soon as a
-- worker is free whatever the caller does next; workers take such messages
-- many at a time (worker_main). The future is its own record in p.out and
-- keeps the message (f.m) until it is settled, to send it again if a
-- worker died before it recorded the task (requeue); j: fn's id or false.
send_single = function(p, f, tq, j, fn, ...) -- tq: the task queue, to put straight into
  p.nextcid = p.nextcid + 1
  local cid = p.nextcid
  f.cid = cid
  p.out[cid] = f -- (before the put: a finalizer run by it may pump the reply)
  local n = select("#", ...)
  local m
  if j then m = C.packv(0, cid, j, n, ...) end
  if not m then
    local fl = {}
    if not j then fl, j = { fn }, 1 end
    m = { 0, cid, fl, { { j, { n = n, ... } } }, 1 }
  end
  f.m = m
  local ok, err
  if tq then ok, err = pcall(tq.put, tq, m) else ok, err = pcall(p.be.send, p, m) end
  if not ok then -- nothing was sent: nothing stays recorded
    p.out[cid] = nil
    error("pool:submit: " .. tostring(err):gsub("^[^\n]-:%d+: ", ""), 3)
  end
end

-- let every active job top up its chunks in flight
local function feed(p)
  for job in pairs(p.jobs) do job:feed() end
end

-- take results for up to `timeout` seconds (0: only what is there): the
-- number of messages taken, and the futures settled meanwhile (pool.c's
-- and _settle's, through self.settling: as_completed and wait read them)
function Pool:_pump(timeout)
  flush(self)
  feed(self)
  if self.broken then error(self.broken, 0) end
  local list, outer = {}, self.settling
  self.settling = list
  local got, left, n
  if self.be.recv == queue_recv then -- pool.c settles submits' packed replies from the queue's bytes
    got, left, n = C.take(self.rq, 256, timeout < 0.05 and timeout or 0.05, self.out, list)
  else
    got = self.be.recv(self, 256, timeout)
    n = #got
    left = n
    if n > 0 and self.immediate then left = C.deliver(got, n, self.out, list) end -- (the same, from strings)
  end
  for k = 1, left do deliver(self, got[k]) end
  if self.broken then error(self.broken, 0) end
  if n == 0 or clock() - self.lastcheck > 0.05 then check_workers(self) end
  self.settling = outer
  feed(self)
  return n, list
end

-- ------------------------------------------------------------------ map jobs

local Job = {}
Job.__index = Job

local function chunk_of(p, n, opt)
  if opt then return opt end
  if not n then return 256 end
  -- four chunks per worker like Python's Pool, at most 2^16 items a message
  local c = math.ceil(n / (4 * p.n))
  if c > 65536 then c = 65536 end
  if c < 1 then c = 1 end
  return c
end

local function check_opts(fname, o)
  if o == nil then return {} end
  if type(o) ~= "table" then argerr(fname, 3, "options table expected, got " .. type(o)) end
  local cs = o.chunksize
  if cs ~= nil and (not is_int(cs) or cs < 1 or cs > 2^31) then argerr(fname, 3, "chunksize must be an integer >= 1, got " .. tostring(cs)) end
  if o.errors ~= nil and o.errors ~= "raise" and o.errors ~= "collect" then
    argerr(fname, 3, "errors must be \"raise\" or \"collect\", got " .. tostring(o.errors))
  end
  local t = o.timeout
  if t ~= nil and (type(t) ~= "number" or not (t > 0)) then argerr(fname, 3, "timeout must be a number > 0, got " .. tostring(t)) end
  if t == huge then o.timeout = nil end
  local S = o.seed
  if S ~= nil and (not is_int(S) or S < -2^53 or S > 2^53) then argerr(fname, 3, "seed must be an integer (|seed| <= 2^53), got " .. tostring(S)) end
  if o.journal ~= nil and type(o.journal) ~= "string" then argerr(fname, 3, "journal must be a file name") end
  if o.progress ~= nil and type(o.progress) ~= "boolean" and type(o.progress) ~= "string" then
    argerr(fname, 3, "progress must be a boolean or a label")
  end
  return o
end

-- one map-like call: feeds chunks, keeps results, reports errors
local function new_job(p, fname, fn, items, o, star, ordered)
  if type(fn) ~= "function" then argerr(fname, 1, "function expected, got " .. type(fn)) end
  local src = source(fname, items)
  p.nextgen = p.nextgen + 1
  local job = setmetatable({
    pool = p, fname = fname, gen = p.nextgen, src = src, next = 1, cs = chunk_of(p, src.n, o.chunksize),
    results = C.table(src.n), errors = nil, nerr = 0, ndone = 0, collect = o.errors == "collect", timeout = o.timeout,
    first_err = nil, ordered = ordered, ready = {}, maxin = 2 * p.n + 2, inflight = 0,
  }, Job)
  if o.journal then
    local all, n = {}, 0
    while true do
      local chunk, c = src:take(n + 1, 65536)
      for k = 1, c do all[n + k] = chunk[k] end
      n = n + c
      if c < 65536 or (src.n and n >= src.n) then break end
    end
    job.src = source(fname, all)
    local dig = items_digest(fname, all, n)
    local done, f = journal_open(fname, o.journal, dig, n)
    job.jdone, job.jfile, job.jbuf, job.jt = done, f, {}, clock()
    job.cs = chunk_of(p, n, o.chunksize)
  end
  -- in flight: two chunks a worker, more when chunks are small (up to
  -- ~2048 items), so workers find the next message waiting, not asleep
  job.maxin = math.max(2 * p.n + 2, math.min(128, math.floor(2048 / job.cs)))
  p.fns[job.gen] = { fn = fn, star = star or nil, seed = o.seed, timeout = o.timeout }
  p.live[job.gen] = true
  if o.progress then
    job.progress = new_progress(job.src.n, type(o.progress) == "string" and o.progress or fname)
  end
  p.jobs[job] = true -- weakly: an abandoned imap stops being fed once collected
  return job
end

function Job:feed()
  if self.over then return end
  if self.iter and self.iter[1] == nil then -- an imap whose loop was left
    self:finish()
    return
  end
  local p = self.pool
  while self.inflight < self.maxin and not self.exhausted do
    if self.ordered and self.limit and self.next > self.limit then break end
    local i0 = self.next
    local items, c
    local arr = self.src.arr
    -- chunksize is the smallest hand-out: once items prove quick, one
    -- message carries several chunks' worth (up to ~2 ms of work and 2048
    -- items), so messaging does not dominate, and the imbalance at the end
    -- stays small
    local cs = self.cs
    if self.per and self.per * cs < 0.002 then
      local k = floor(0.002 / (self.per * cs))
      if k > 256 then k = 256 end
      if cs * k > 2048 then k = floor(2048 / cs) end -- only small chunks grow
      if self.src.n then -- near the end, smaller again (guided hand-out)
        local g = floor((self.src.n - i0 + 1) / (2 * self.pool.n * cs))
        if g < k then k = g end
      end
      if k > 1 then cs = cs * k end
    end
    if arr and not self.jdone then -- numbers travel packed (pool.c: pack)
      c = cs
      if i0 + c - 1 > self.src.n then c = self.src.n - i0 + 1 end
      items = c > 0 and C.pack(arr, i0, c)
    end
    if not items then items, c = self.src:take(i0, cs) end
    if c == 0 then self.exhausted = true; break end
    self.next = i0 + c
    if self.src.n and self.next > self.src.n then self.exhausted = true end
    local rec
    if self.jdone then
      local idx, its = {}, {}
      for k = 1, c do
        local i = i0 + k - 1
        local d = self.jdone[i]
        if d then self:item(i, true, d[1], nil, true)
        else idx[#idx + 1] = i; its[#its + 1] = items[k] end
      end
      if #idx > 0 then rec = { first = idx, items = its, n = #idx } end
    else
      rec = { first = i0, items = items, n = c }
    end
    if rec then
      self.inflight = self.inflight + 1
      send_chunk(p, self, rec)
    end
  end
end

function Job:journal_flush(force)
  if not self.jfile then return end
  local buf = self.jbuf
  if #buf == 0 then return end
  if force or #buf >= 256 or clock() - self.jt > 0.2 then
    self.jfile:write(table.concat(buf))
    self.jfile:flush()
    self.jbuf = {}
    self.jt = clock()
  end
end

function Job:item(i, ok, v, who, replay)
  self.ndone = self.ndone + 1
  if ok then
    if not self.on_item then self.results[i] = v end -- imap hands them over
    if self.jfile and not replay then
      local okk, s = pcall(concur.encode, i, v)
      if okk then self.jbuf[#self.jbuf + 1] = #s .. "\n" .. s end
    end
  else
    self.nerr = self.nerr + 1
    self.errors = self.errors or {}
    self.errors[i] = v
    if not self.collect and (not self.first_err or i < self.first_err) then
      self.first_err = i
      self.first_msg = ("%s: item %d failed in %s: %s"):format(self.fname, i, who or "?", tostring(v))
      self.err_obj = v
    end
  end
  if self.progress then self.progress:step(1) end
  if self.on_item then self.on_item(i, ok, v, who) end
end

function Job:fail(i, msg, who) self:item(i, false, msg, who) end

function Job:chunk_done(rec, res, errs, me, n)
  self.inflight = self.inflight - 1
  local first = rec.first
  local idx = type(first) == "table" and first
  if type(res) == "string" then
    if not idx and not self.on_item and not self.jfile then
      C.unpack(res, self.results, first)
      self.ndone = self.ndone + n
      if self.progress then self.progress:step(n) end
      return
    end
    res = C.unpack(res)
  end
  for k = 1, n do
    local i = idx and idx[k] or first + k - 1
    if errs and errs[k] ~= nil then self:item(i, false, errs[k], me)
    else self:item(i, true, res[k], me) end
  end
  self:journal_flush(false)
end


function Job:finished()
  return self.exhausted and self.ndone >= (self.src.n or 0) - (self.skipped or 0)
end

-- end the call: cancel what is left, close journal and progress
function Job:finish()
  if self.over then return end
  self.over = true
  local p = self.pool
  p.live[self.gen] = nil
  p.fns[self.gen] = nil
  for cid, rec in pairs(p.out) do
    if rec.job == self then p.out[cid] = nil end
  end
  p.jobs[self] = nil
  self:journal_flush(true)
  if self.jfile then self.jfile:close(); self.jfile = nil end
  if self.progress then pcall(self.progress.done, self.progress); self.progress = nil end
end

-- the pool's reaction to an error escaping a call (Ctrl-C, an error in a
-- caller's loop): interruptions stop the workers, other errors only cancel
local function abort_job(p, job, err)
  job:finish()
  if concur.interrupted(err) then p:terminate() end
  error(err, 0)
end

local function run_job(p, job)
  local ok, err = pcall(function()
    while not job:finished() and not job.first_err do
      p:_pump(0.25)
      job:journal_flush(false)
    end
  end)
  if not ok then abort_job(p, job, err) end
  if job.first_err then
    job:finish()
    error(job.first_msg, 0)
  end
  job:finish()
end

function Pool:map(fn, items, opts)
  check_pool(self, "pool:map")
  local o = check_opts("pool:map", opts)
  local job = new_job(self, "pool.map", fn, items, o, false)
  run_job(self, job)
  local n = job.src.n or 0
  job.results.n = n
  if job.collect then return job.results, job.errors or {} end
  return job.results
end

function Pool:starmap(fn, items, opts)
  check_pool(self, "pool:starmap")
  local o = check_opts("pool:starmap", opts)
  if type(items) == "table" then
    for i = 1, #items do
      if type(items[i]) ~= "table" then argerr("pool:starmap", 2, ("item %d is a %s, not an argument table"):format(i, type(items[i]))) end
    end
  end
  local job = new_job(self, "pool.starmap", fn, items, o, true)
  run_job(self, job)
  job.results.n = job.src.n or 0
  if job.collect then return job.results, job.errors or {} end
  return job.results
end

-- In raise mode a failed item raises when the loop reaches it (in order
-- for imap, as it arrives for imap_unordered); in collect mode it is
-- yielded as `i, nil, err`.
local function imap_iter(self, fname, fn, items, opts, ordered)
  check_pool(self, fname)
  local o = check_opts(fname, opts)
  local job = new_job(self, (fname:gsub(":", ".")), fn, items, o, false, ordered)
  -- lazy: smaller chunks than map so the first results come early
  if not o.chunksize then job.cs = job.src.n and math.min(job.cs, 256) or 256 end
  job.maxin = math.max(2 * self.n + 2, math.min(128, math.floor(2048 / job.cs)))
  local ready = {}      -- imap: index -> {ok, value, who}
  local nexti = 1
  local q, qh, qt = {}, 1, 0 -- imap_unordered: arrivals {i, ok, value, who}
  job.on_item = function(i, ok, v, who)
    if ordered then ready[i] = { ok, v, who }
    else qt = qt + 1; q[qt] = { i, ok, v, who } end
  end
  local p = self
  local function yield(i, ok, v, who)
    if ok then return i, v end
    if job.collect then return i, nil, v end
    job:finish()
    error(("%s: item %d failed in %s: %s"):format(job.fname, i, who or "?", tostring(v)), 0)
  end
  local function step()
    while true do
      if ordered then
        local r = ready[nexti]
        if r then
          ready[nexti] = nil
          nexti = nexti + 1
          return yield(nexti - 1, r[1], r[2], r[3])
        end
        if job.exhausted and job.src.n and nexti > job.src.n then job:finish(); return nil end
      else
        if qh <= qt then
          local r = q[qh]
          q[qh] = nil
          qh = qh + 1
          return yield(r[1], r[2], r[3], r[4])
        end
        if job:finished() then job:finish(); return nil end
      end
      local ok, err = pcall(p._pump, p, 0.25)
      if not ok then abort_job(p, job, err) end
    end
  end
  job.iter = setmetatable({ step }, { __mode = "v" }) -- gone with the loop (LuaJIT)
  -- Lua 5.4 closes the 4th value of a generic for when the loop is left
  -- (break, error, return): the call is cancelled at once
  return step, nil, nil, setmetatable({}, { __close = function() job:finish() end })
end

function Pool:imap(fn, items, opts) return imap_iter(self, "pool:imap", fn, items, opts, true) end
function Pool:imap_unordered(fn, items, opts) return imap_iter(self, "pool:imap_unordered", fn, items, opts, false) end

-- ------------------------------------------------------------------ futures

-- hand buffered submits to the workers now
function Pool:flush()
  check_pool(self, "pool:flush")
  flush(self)
end

local submit_c = C.submit
function Pool:submit(fn, ...)
  -- the plain case (a registered function, arguments that pack, a task
  -- queue to put into) is pool.c's submit, checks and all
  local f = submit_c(self, fn, ...)
  if f then return f end
  check_pool(self, "pool:submit")
  if type(fn) ~= "function" then argerr("pool:submit", 1, "function expected, got " .. type(fn)) end
  if self.immediate then
    local j, tq = fn_id(self, fn), self.direct
    if j and tq then -- a function registered just now: pool.c's submit takes it
      f = submit_c(self, fn, ...)
      if f then return f end
    end
    -- (pool.c's future, as submit makes it; it keeps its message, not
    -- the function and arguments: send_single)
    f = C.future(self)
    send_single(self, f, tq, j or false, fn, ...)
    return f
  end
  local f = setmetatable({ pool = self, fn = fn, n = select("#", ...), state = "pending", ... }, Future)
  self.nsub = self.nsub + 1
  self.sub[self.nsub] = f
  if self.nsub >= 64 then flush(self)
  else
    -- idle workers without a message waiting: one batch each
    local idle = self.st[self.idlei]
    if idle > 0 then
      local want = idle - #self.tq
      if want > 0 then flush(self, want) end
    end
  end
  return f
end

-- ok: v is the only result (nr == 1) or an array of nr results
function Future:_settle(ok, v, who, nr)
  if self.state == "done" or self.state == "cancelled" then return end
  self.state = "done"
  self.ok = ok
  if self.single then self.m = nil -- its message, the arguments: not needed any more
  else
    self.fn = nil
    for x = 1, self.n do self[x] = nil end
  end
  if ok then self.value, self.nr = v, nr
  else self.err = v; self.who = who end
  local list = self.pool.settling
  if list then list[#list + 1] = self end
end

local function check_future(f, fname)
  if getmetatable(f) ~= Future then error(("%s: bad self (future expected, got %s)"):format(fname, type(f)), 3) end
end

local function settled(f) return f.state == "done" or f.state == "cancelled" end

local function wait_future(f, timeout, fname)
  if settled(f) then return true end
  local p = f.pool
  if p.closed and not p.closing then return settled(f) end
  local deadline = timeout and clock() + timeout
  flush(p)
  while not settled(f) do
    local left = deadline and deadline - clock() or 0.25
    if left <= 0 then return false end
    p:_pump(left < 0.25 and left or 0.25)
  end
  return true
end

local function check_timeout(fname, t, n)
  if t ~= nil and (type(t) ~= "number" or not (t >= 0)) then argerr(fname, n or 1, "timeout must be a number >= 0, got " .. tostring(t)) end
  if t == huge then return nil end
  return t
end

local fvalue = C.value
function Future:result(timeout)
  if timeout == nil then -- settled with results: pool.c hands them over
    local nr, v = fvalue(self)
    if nr == 1 then return v end
    if nr == 0 then return end
    if nr then return unpack(v, 1, nr) end
  end
  check_future(self, "future:result")
  if self.state ~= "done" or timeout ~= nil then -- (done: nothing to wait for)
    timeout = check_timeout("future:result", timeout)
    if not wait_future(self, timeout, "future:result") then return nil, "timeout" end
  end
  if self.state == "cancelled" then error("future:result: the future was cancelled", 2) end
  if not self.ok then
    if type(self.err) == "string" then error(("future:result: task failed in %s: %s"):format(self.who or "?", self.err), 2) end
    error(self.err, 2)
  end
  local nr = self.nr
  if nr == 1 then return self.value end
  if nr == 0 then return end
  return unpack(self.value, 1, nr)
end

function Future:error(timeout)
  check_future(self, "future:error")
  timeout = check_timeout("future:error", timeout)
  if not wait_future(self, timeout, "future:error") then return nil, "timeout" end
  if self.state == "cancelled" then return "cancelled" end
  if self.ok then return nil end
  return self.err
end

function Future:done()
  check_future(self, "future:done")
  if not settled(self) and self.state ~= "pending" then pcall(self.pool._pump, self.pool, 0) end
  return settled(self)
end

function Future:cancelled() return self.state == "cancelled" end

-- true when the task had not been handed to a worker yet
function Future:cancel()
  check_future(self, "future:cancel")
  local p = self.pool
  if self.state == "pending" then
    self.state = "cancelled"
    return true
  end
  if self.state == "running" and self.single and p.owner == process.pid() and not p.closed then
    -- queued: the worker that takes it skips it (the mark goes first, then
    -- the look at what the workers run; a worker marks what it runs, then
    -- looks for the mark). Already running: false, and its result comes;
    -- if that worker saw the mark after all, it ends cancelled (deliver).
    p.skip[self.cid] = true
    p.cancels:add(1, 1)
    self.skipped = true
    for s = 1, p.n do
      if p.st[(s - 1) * 4 + 1] == self.cid then return false end
    end
    self.state = "cancelled"
    self.m = nil
    return true
  end
  return self.state == "cancelled"
end

Future.__tostring = function(f) return "pool.future (" .. f.state .. ")" end

local function futures_arg(fname, fs)
  if type(fs) ~= "table" then argerr(fname, 1, "array of futures expected, got " .. type(fs)) end
  for i = 1, #fs do
    if getmetatable(fs[i]) ~= Future then argerr(fname, 1, ("item %d is not a future"):format(i)) end
  end
end

-- What as_completed and wait watch: the futures not settled yet (pend[f],
-- np of them; a future given twice counts once), and the settled ones not
-- yet handed out (ready[rh..rt]). Each pump reports the futures it settled;
-- when it reports none of these, one look at every pending future finds
-- those settled some other way (another pump, cancel, terminate). So a
-- future costs O(1), not a look at all the others each time.
local function tracker(fs)
  local t = { pend = {}, np = 0, ready = {}, rh = 1, rt = 0, pools = {} }
  local seen = {}
  for i = 1, #fs do
    local f = fs[i]
    if not t.pend[f] then t.pend[f] = true; t.np = t.np + 1 end
    local p = f.pool
    if not seen[p] then seen[p] = true; t.pools[#t.pools + 1] = p end
  end
  return t
end

local function track(t, f)
  if t.pend[f] then
    t.pend[f] = nil
    t.np = t.np - 1
    t.rt = t.rt + 1
    t.ready[t.rt] = f
  end
end

local function track_scan(t)
  for f in pairs(t.pend) do if settled(f) then track(t, f) end end
end

-- pump every pool involved, up to `slice` seconds in all
local function track_pump(t, slice)
  local before = t.rt
  local pools = {}
  for _, p in ipairs(t.pools) do if not p.closed or p.closing then pools[#pools + 1] = p end end
  if #pools > 1 then slice = slice / #pools end
  for _, p in ipairs(pools) do
    local _, list = p:_pump(slice)
    for k = 1, #list do track(t, list[k]) end
  end
  if t.rt == before then track_scan(t) end
end

function M.as_completed(fs, timeout)
  local fname = "pool.as_completed"
  futures_arg(fname, fs)
  timeout = check_timeout(fname, timeout, 2)
  local deadline = timeout and clock() + timeout
  local t = tracker(fs)
  track_scan(t)
  return function()
    while true do
      if t.rh <= t.rt then
        local f = t.ready[t.rh]
        t.ready[t.rh] = nil
        t.rh = t.rh + 1
        return f
      end
      if t.np == 0 then return nil end
      local rem = deadline and deadline - clock() or 0.25
      if rem <= 0 then error(("%s: timeout (%d of %d futures not done)"):format(fname, t.np, #fs), 2) end
      track_pump(t, rem < 0.25 and rem or 0.25)
    end
  end
end

function M.wait(fs, opts)
  local fname = "pool.wait"
  futures_arg(fname, fs)
  if opts ~= nil and type(opts) ~= "table" then argerr(fname, 2, "options table expected, got " .. type(opts)) end
  opts = opts or {}
  local timeout = check_timeout(fname, opts.timeout, 2)
  local when = opts.return_when or "all"
  if when ~= "all" and when ~= "first" and when ~= "first_error" then
    argerr(fname, 2, "return_when must be \"all\", \"first\" or \"first_error\", got " .. tostring(when))
  end
  local deadline = timeout and clock() + timeout
  local t = tracker(fs)
  track_scan(t)
  local failed = false
  while true do
    for k = t.rh, t.rt do
      local f = t.ready[k]
      if f.state == "done" and not f.ok then failed = true end
    end
    t.rh = t.rt + 1
    if t.np == 0 or (when == "first" and t.rt > 0) or (when == "first_error" and failed) then break end
    local rem = deadline and deadline - clock() or 0.25
    if rem <= 0 then break end
    track_pump(t, rem < 0.25 and rem or 0.25)
  end
  local done, pending = {}, {}
  for i = 1, #fs do
    local f = fs[i]
    if t.pend[f] then pending[#pending + 1] = f else done[#done + 1] = f end
  end
  return done, pending
end

-- ------------------------------------------------------------------ lifetime

-- no more tasks; workers finish what is queued (submitted futures included)
function Pool:close()
  if getmetatable(self) ~= Pool then error("pool:close: bad self", 2) end
  if self.closed or self.owner ~= process.pid() then return end
  pcall(flush, self)
  self.closing = true
  -- wait for submitted work to come back before closing the queue
  local ok, err = pcall(function()
    while next(self.out) ~= nil and not self.broken do self:_pump(0.25) end
  end)
  self.closing = false
  self.closed = true
  self.be.stop(self)
  if not ok then
    self:terminate()
    error(err, 0)
  end
end

function Pool:join()
  if getmetatable(self) ~= Pool then error("pool:join: bad self", 2) end
  if not self.closed then error("pool:join: close() the pool first", 2) end
  for s = 1, self.n do
    local w = self.workers[s]
    if w then self.workers[s] = nil; self.be.reap(self, w) end
  end
end

-- stop now: pending work is dropped, workers are killed and reaped
function Pool:terminate()
  if getmetatable(self) ~= Pool then error("pool:terminate: bad self", 2) end
  if self.terminated or self.owner ~= process.pid() then return end -- a forked copy owns nothing
  self.terminated = true
  self.closed = true
  for job in pairs(self.jobs) do pcall(job.finish, job) end
  for _, f in ipairs(self.sub) do if f.state == "pending" then f.state = "cancelled" end end
  for _, rec in pairs(self.out) do
    if rec.batch or rec.single then
      for _, f in ipairs(futures_of(rec)) do f:_settle(false, "pool terminated") end
    end
  end
  self.out = {}
  pcall(self.be.stop, self)
  for s = 1, self.n do
    local w = self.workers[s]
    if w then pcall(self.be.kill, self, w) end
  end
  for s = 1, self.n do
    local w = self.workers[s]
    if w then self.workers[s] = nil; pcall(self.be.reap, self, w, true) end
  end
end

Pool.__close = function(self, err)
  if err ~= nil then self:terminate()
  else
    local ok, e = pcall(self.close, self)
    pcall(self.join, self)
    self:terminate()
    if not ok then error(e, 0) end
  end
end
Pool.__gc = function(self) pcall(self.terminate, self) end
Pool.__tostring = function(self)
  return ("pool (%d %s workers%s)"):format(self.n, self.kind, self.closed and ", closed" or "")
end

function Pool:workers_alive()
  local n = 0
  for s = 1, self.n do if self.workers[s] and self.be.alive(self, self.workers[s]) then n = n + 1 end end
  return n
end

-- pids or names of the current workers
function Pool:worker_ids()
  local t = {}
  for s = 1, self.n do
    local w = self.workers[s]
    if w then t[#t + 1] = w.pid or (w.h and w.h.pid) or w.id end
  end
  return t
end

M._C = C
M.Pool = Pool
M.Future = Future
return M
