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

local f = W[workload]
if not f then
  io.stderr:write("unknown workload ", tostring(workload), "\n")
  os.exit(2)
end
print(string.format("%.6g", f(size)))
