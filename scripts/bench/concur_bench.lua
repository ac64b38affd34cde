-- concur side of make bench: `build/concur concur_bench.lua WORKLOAD SIZE`
-- prints one number: the workload's figure in the unit run.lua expects.
local concur = require "concur"
local process, thread, shared, queue, pipe, lock, primes =
  concur.process, concur.thread, concur.shared, concur.queue, concur.pipe, concur.lock, concur.primes
local clock = concur.clock

local workload, size = arg[1], tonumber(arg[2])

-- Balanced split of [0, n) for w workers: interleaved chunks, so each worker
-- gets small and large numbers alike (the cost of a trial division grows
-- with n; contiguous halves would leave one worker with the harder half).
local CHUNK = 10000
local function primes_in_workers(spawn, w, n, count_fn)
  local hs = {}
  for k = 0, w - 1 do
    hs[#hs + 1] = spawn(function(first, step, limit)
      local total = 0
      for lo = first, limit - 1, step do
        total = total + count_fn(lo, math.min(lo + CHUNK, limit))
      end
      return total
    end, k * CHUNK, w * CHUNK, n)
  end
  local total = 0
  for _, h in ipairs(hs) do total = total + h:join() end
  return total
end

local function lua_count(lo, hi) -- the tutorial's is_prime, in pure Lua
  local c = 0
  for n = lo, hi - 1 do
    local p = true
    if n <= 1 then p = false
    elseif n <= 3 then p = true
    elseif n % 2 == 0 or n % 3 == 0 then p = false
    else
      local i = 5
      while i * i <= n do
        if n % i == 0 or n % (i + 2) == 0 then p = false break end
        i = i + 6
      end
    end
    if p then c = c + 1 end
  end
  return c
end

local function timed(f)
  local t0 = clock()
  f()
  return clock() - t0
end

local function rss_kib(pid)
  local f = io.open("/proc/" .. (pid or "self") .. "/smaps_rollup") or io.open("/proc/" .. (pid or "self") .. "/status")
  if not f then return 0 end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("Pss:%s+(%d+)") or s:match("VmRSS:%s+(%d+)")) or 0
end

local W = {}

-- primes: seconds for [0, size)
for _, w in ipairs{1, 2, 3} do
  W["primes_c_p" .. w] = function(n) return timed(function() primes_in_workers(process.spawn, w, n, primes.count) end) end
  W["primes_c_t" .. w] = function(n) return timed(function() primes_in_workers(thread.new, w, n, primes.count) end) end
  W["primes_lua_t" .. w] = function(n) return timed(function() primes_in_workers(thread.new, w, n, lua_count) end) end
end

-- appends/s to one shared list from 3 processes
W.list_append_3p = function(n)
  local l = shared.list()
  return 3 * n / timed(function()
    local ps = {}
    for k = 1, 3 do ps[k] = process.spawn(function() for i = 1, n do l:append(i) end end) end
    for _, p in ipairs(ps) do p:join() end
  end)
end
W.list_extend_3p = function(n)
  local l = shared.list()
  return 3 * n / timed(function()
    local ps = {}
    for k = 1, 3 do
      ps[k] = process.spawn(function()
        local batch = {}
        for i = 1, n do batch[#batch + 1] = i if #batch == 1000 then l:extend(batch) batch = {} end end
        if #batch > 0 then l:extend(batch) end
      end)
    end
    for _, p in ipairs(ps) do p:join() end
  end)
end

-- msgs/s through a queue: producers put n small integers in total
local function queue_rate(spawn, producers, n)
  local q = queue(100000)
  return n / timed(function()
    local per = n // producers
    local hs = {}
    for k = 1, producers do hs[k] = spawn(function(qq) for i = 1, per do qq:put(i) end end, q) end
    for _ = 1, per * producers do q:get() end
    for _, h in ipairs(hs) do h:join() end
  end)
end
W.queue_tt = function(n) return queue_rate(thread.new, 1, n) end
W.queue_pp = function(n) return queue_rate(process.spawn, 1, n) end
W.queue_pp4 = function(n) return queue_rate(process.spawn, 4, n) end
-- msgs/s through a queue in batches of 1000: put_many / get_many, thread -> thread
W.queue_batch_tt = function(n)
  local q = queue(100000)
  local B = 1000
  local batches = n // B
  return batches * B / timed(function()
    local t = thread.new(function(qq, nb, b)
      local batch = {}
      for i = 1, b do batch[i] = i end
      for _ = 1, nb do qq:put_many(batch) end
    end, q, batches, B)
    local got = 0
    while got < batches * B do got = got + #q:get_many(B) end
    t:join()
  end)
end

-- pipe: one-way msgs/s between processes, and round trip in microseconds
W.pipe_oneway = function(n)
  local r, w = pipe{duplex = false}
  return n / timed(function()
    local p = process.spawn(function() for i = 1, n do w:send(i) end end)
    for _ = 1, n do r:recv() end
    p:join()
  end)
end
W.pipe_rtt = function(n)
  local a, b = pipe()
  local echo = process.spawn(function()
    while true do
      local v = b:recv()
      if v == nil then return end
      b:send(v)
    end
  end)
  a:send(0) a:recv() -- warm up
  local t = timed(function() for i = 1, n do a:send(i) a:recv() end end)
  a:close()
  echo:join()
  return t / n * 1e6
end

-- lock acquire+release pairs/s
W.lock_uncontended = function(n)
  local m = lock()
  return n / timed(function() for _ = 1, n do m:acquire() m:release() end end)
end
-- through the type's methods, as a lock only passed around is called: the
-- receiver check every call (a handle is bound only to its own methods)
W.lock_typemethods = function(n)
  local m = lock()
  local methods = getmetatable(m).__index
  local acq, rel = methods.acquire, methods.release
  return n / timed(function() for _ = 1, n do acq(m) rel(m) end end)
end
W.lock_contended2 = function(n)
  local m = lock()
  return 2 * n / timed(function()
    local ts = {}
    for k = 1, 2 do ts[k] = thread.new(function(mm) for _ = 1, n do mm:acquire() mm:release() end end, m) end
    for _, t in ipairs(ts) do t:join() end
  end)
end

-- spawn + join latency in microseconds (median of n)
local function spawn_latency(spawn, n)
  local ts = {}
  for i = 1, n do
    local t0 = clock()
    spawn(function() return 1 end):join()
    ts[i] = clock() - t0
  end
  table.sort(ts)
  return ts[(n + 1) // 2] * 1e6
end
W.spawn_process = function(n) return spawn_latency(process.spawn, n) end
W.spawn_thread = function(n) return spawn_latency(thread.new, n) end

-- spawn + join of a function whose upvalue is a big table (median, us):
-- a fork needs no copy of what the child already has, so the size of the
-- captured data should not show
local function spawn_upv_latency(data, n)
  local ts = {}
  for i = 1, n do
    local t0 = clock()
    process.spawn(function() return #data end):join()
    ts[i] = clock() - t0
  end
  table.sort(ts)
  return ts[(n + 1) // 2] * 1e6
end
W.spawn_upv_ints = function(n)
  local data = {}
  for i = 1, 1000000 do data[i] = i end
  return spawn_upv_latency(data, n)
end
W.spawn_upv_rows = function(n)
  local data = {}
  for i = 1, 1000000 do data[i] = {i, -i} end
  return spawn_upv_latency(data, n)
end

-- pure-Lua loop of n additions, in a thread against the main state: the
-- ratio of their times (1 = as fast), each timed inside its state (thread
-- start and join are spawn_thread's), median of 5 alternating pairs
local function add_loop(n) local s = 0 for i = 1, n do s = s + i end return s end
local function timed_loop(n)
  local c = require("concur").clock
  local t0 = c()
  add_loop(n)
  return c() - t0
end
W.lua_loop_thread_vs_main = function(n)
  local rs = {}
  for k = 1, 5 do rs[k] = thread.new(timed_loop, n):join() / timed_loop(n) end
  table.sort(rs)
  return rs[3]
end

-- memory per idle worker in KiB (RSS/PSS growth with n workers parked on a queue)
W.rss_thread = function(n)
  local q = queue()
  collectgarbage()
  local before = rss_kib()
  local ts = {}
  for i = 1, n do ts[i] = thread.new(function(qq) qq:get() end, q) end
  concur.sleep(0.2)
  local after = rss_kib()
  for _ = 1, n do q:put(0) end
  for _, t in ipairs(ts) do t:join() end
  return (after - before) / n
end
W.rss_process = function(n)
  local q = queue()
  local ps = {}
  for i = 1, n do ps[i] = process.spawn(function() q:get() end) end
  concur.sleep(0.3)
  local sum = 0
  for _, p in ipairs(ps) do sum = sum + rss_kib(p.pid) end
  for _ = 1, n do q:put(0) end
  for _, p in ipairs(ps) do p:join() end
  return sum / n
end

-- shared.array: uncontended a:add from Lua (adds/s)
W.array_add = function(n)
  local a = shared.array(100, "i64")
  local dt = timed(function() for _ = 1, n do a:add(7, 1) end end)
  assert(a[7] == n)
  return n / dt
end

-- the same with the method looked up once (one C call per add instead of two)
W.array_add_local = function(n)
  local a = shared.array(100, "i64")
  local add = a.add
  local dt = timed(function() for _ = 1, n do add(a, 7, 1) end end)
  assert(a[7] == n)
  return n / dt
end

-- a histogram of n samples into 100 f64 bins from 4 processes (adds/s)
W.array_hist4p = function(n)
  local h, per = shared.array(100, "f64"), n // 4
  local dt = timed(function()
    local ps = {}
    for k = 1, 4 do
      ps[k] = process.spawn(function()
        local x = k
        for _ = 1, per do
          x = (x * 1103515245 + 12345) % 2147483648
          h:add(x % 100 + 1, 1)
        end
      end)
    end
    for _, p in ipairs(ps) do p:join() end
  end)
  assert(h:sum() == per * 4)
  return per * 4 / dt
end

-- ---- pool (issue 12): figures exclude starting the pool, as Python's do ----
local function with_pool(kind, workers, fn)
  local p = concur.pool.new { workers = workers, kind = kind }
  p:map(function(x) return x end, { 1, 2, 3, 4 }) -- workers up
  local v = fn(p)
  p:terminate()
  return v
end
for _, kind in ipairs { "process", "thread" } do
  local k = kind:sub(1, 1)
  -- p:map(x * x) over size integers, 2 workers: items/s
  W["pool_map_" .. k .. "2"] = function(n)
    local items = {}
    for i = 1, n do items[i] = i end
    return with_pool(kind, 2, function(p)
      local dt = timed(function() assert(#p:map(function(x) return x * x end, items) == n) end)
      return n / dt
    end)
  end
  -- imap_unordered, chunksize = 1: items/s
  W["pool_imapu_" .. k .. "2"] = function(n)
    local items = {}
    for i = 1, n do items[i] = i end
    return with_pool(kind, 2, function(p)
      local dt = timed(function()
        local c = 0
        for _ in p:imap_unordered(function(x) return x * x end, items, { chunksize = 1 }) do c = c + 1 end
        assert(c == n)
      end)
      return n / dt
    end)
  end
  -- submit + result of size futures: futures/s
  W["pool_submit_" .. k .. "2"] = function(n)
    return with_pool(kind, 2, function(p)
      local function ident(x) return x end
      local dt = timed(function()
        local fs = {}
        for i = 1, n do fs[i] = p:submit(ident, i) end
        for i = 1, n do assert(fs[i]:result() == i) end
      end)
      return n / dt
    end)
  end
  -- primes below size through p:map over chunks of 10^4 (the C kernel): seconds
  for _, w in ipairs { 1, 2 } do
    W["pool_primes_" .. k .. w] = function(n)
      local chunks = {}
      for lo = 0, n - 1, CHUNK do chunks[#chunks + 1] = lo end
      return with_pool(kind, w, function(p)
        return timed(function()
          local r = p:map(function(lo) return concur.primes.count(lo, math.min(lo + 10000, n)) end, chunks, { chunksize = 1 })
          local t = 0
          for i = 1, #r do t = t + r[i] end
          if n == 3000000 then assert(t == 216816) end
        end)
      end)
    end
  end
  -- a sweep of size tasks of 5 ms each on 2 workers: time over the ideal
  -- (size * 5 ms / 2), so 1.00 is perfect
  W["pool_sweep_" .. k .. "2"] = function(n)
    local items = {}
    for i = 1, n do items[i] = i end
    return with_pool(kind, 2, function(p)
      return timed(function() p:map(function(x) concur.sleep(0.005) return x end, items) end) / (n * 0.005 / 2)
    end)
  end
end

-- concur.progress: p:step() per item from Lua (steps/s); the lines go to
-- stderr, which make bench sends to /dev/null
W.progress_step = function(n)
  local p = concur.progress(n, "bench")
  local dt = timed(function() for _ = 1, n do p:step() end end)
  p:done()
  assert(p:count() == n)
  return n / dt
end

local f = W[workload]
if not f then
  io.stderr:write("unknown workload ", tostring(workload), "\n")
  os.exit(2)
end
print(string.format("%.6g", f(size)))
