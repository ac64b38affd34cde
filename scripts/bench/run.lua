-- make bench: every workload in concur, Python and C, side by side.
-- usage: build/concur scripts/bench/run.lua [--quick]   (BENCH_ONLY=prefix: some rows)
--
-- Each repetition runs concur, concur under LuaJIT, Python and C in turn
-- (A A' B C A A' B C ...) so a drift in the machine's speed hits all alike;
-- figures are medians of REPS runs with min and max. Results: a table on
-- stdout, build/bench/results.json and build/bench/report.svg.
--
-- The LuaJIT column runs the same workload (scripts/bench/luajit_bench.lua
-- loads concur_bench.lua under `luajit` with build/luajit/concur.so). A row
-- with `jit = "reason"` is not run there; a row whose concur spec ends in
-- "luajit" runs under LuaJIT only (its ratios and target use that figure).
-- Every "-" in a concur column gets a numbered note with the reason.
local quick = arg[1] == "--quick"
local REPS = quick and 3 or 5
local here = "scripts/bench/"
local out = "build/bench/"
os.execute("mkdir -p " .. out)

local function sh(cmd)
  local f = io.popen(cmd .. " 2>/dev/null")
  local s = f:read("*a")
  local ok = f:close()
  return ok and s or nil
end

local has_python = sh("command -v python3") ~= nil and sh("command -v python3") ~= ""
if not has_python then print("notice: python3 not found: the Python column is skipped") end
local has_luajit = (sh("command -v luajit") or "") ~= "" and io.open("build/luajit/concur.so") ~= nil
if not has_luajit then print("notice: luajit or build/luajit/concur.so missing: LuaJIT rows are skipped") end
local cc = os.getenv("CC") or "cc"
local cref = out .. "c_ref"
local has_c = os.execute(cc .. " -O2 -pthread -o " .. cref .. " " .. here .. "c_ref.c 2>/dev/null")
if not has_c then print("notice: could not build the C reference: the C column is skipped") end

-- concur.cluster rows (issue 14): 2 MPI ranks on this machine, beside
-- mpi_ref.c; skipped with a notice where MPI or the module is missing
local mpi_env = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 LUA_CPATH='build/lua5.4/?.so;;' "
local has_mpi = (sh("command -v mpirun") or "") ~= "" and io.open("build/lua5.4/concur/cluster.so") ~= nil
local mpi_ref = out .. "mpi_ref"
local has_mpi_c = has_mpi and os.execute("mpicc -O2 -o " .. mpi_ref .. " " .. here .. "mpi_ref.c 2>/dev/null")
if not has_mpi then print("notice: mpirun or build/lua5.4/concur/cluster.so missing: the cluster rows are skipped") end

-- name, label, unit, higher-is-better, {concur workload, size, quick size},
-- {python ...} or false, {c ...} or false, target
local P, Q = 3000000, 200000
local rows = {
  {"primes_t1", "primes, C kernel, 1 thread", "s", false, {"primes_c_t1", P, Q}, {"primes_py_p1", P, Q}, {"primes_t1", P, Q}},
  {"primes_t2", "primes, C kernel, 2 threads", "s", false, {"primes_c_t2", P, Q}, {"primes_py_p2", P, Q}, {"primes_t2", P, Q}},
  {"primes_t3", "primes, C kernel, 3 threads", "s", false, {"primes_c_t3", P, Q}, {"primes_py_p3", P, Q}, {"primes_t3", P, Q}},
  {"primes_p2", "primes, C kernel, 2 processes", "s", false, {"primes_c_p2", P, Q}, {"primes_py_p2", P, Q}, {"primes_t2", P, Q}},
  {"primes_p3", "primes, C kernel, 3 processes", "s", false, {"primes_c_p3", P, Q}, {"primes_py_p3", P, Q}, {"primes_t3", P, Q}},
  {"primes_lua_t1", "primes, pure-Lua is_prime, 1 thread", "s", false, {"primes_lua_t1", P, Q}, {"primes_py_p1", P, Q}, {"primes_t1", P, Q}},
  {"primes_lua_t3", "primes, pure-Lua is_prime, 3 threads", "s", false, {"primes_lua_t3", P, Q}, {"primes_py_t3", P, Q}, {"primes_t3", P, Q}},
  {"list_append_3p", "shared.list:append per item, 3 processes", "/s", true, {"list_append_3p", 300000, 30000}, {"list_append_3p", 10000, 2000}, {"list_append_3p", 300000, 30000},
    {">=", 2e6, "abs"}},
  {"list_extend_3p", "shared.list:extend in 1000s, 3 processes", "/s", true, {"list_extend_3p", 300000, 30000}, {"list_extend_3p", 100000, 20000}, false},
  {"queue_tt", "queue, thread -> thread", "/s", true, {"queue_tt", 1000000, 100000}, {"queue_tt", 200000, 50000}, {"queue_tt", 1000000, 100000}, {">=", 5e6, "abs"}},
  {"queue_pp", "queue, process -> process", "/s", true, {"queue_pp", 1000000, 100000}, {"queue_pp", 200000, 50000}, {"queue_pp", 1000000, 100000}, {">=", 1e6, "abs"}},
  {"queue_pp4", "queue, 4 producer processes -> 1", "/s", true, {"queue_pp4", 1000000, 100000}, {"queue_pp4", 200000, 50000}, {"queue_pp4", 1000000, 100000}, {">=", 3e6, "abs"}},
  {"queue_batch_tt", "queue put_many/get_many in 1000s, thread -> thread", "/s", true, {"queue_batch_tt", 2000000, 200000}, false, false, {">=", 25e6, "abs"}},
  {"pipe_oneway", "pipe one-way, process -> process", "/s", true, {"pipe_oneway", 500000, 50000}, {"pipe_oneway", 200000, 50000}, {"pipe_oneway", 500000, 50000}, {">=", 1.5e6, "abs"}},
  {"pipe_rtt", "pipe round trip", "us", false, {"pipe_rtt", 20000, 2000}, {"pipe_rtt", 20000, 2000}, {"pipe_rtt", 20000, 2000}, {"<=", 2, "vs_c"}},
  {"lock_uncontended", "lock acquire+release, uncontended", "/s", true, {"lock_uncontended", 5000000, 500000}, {"lock_uncontended", 5000000, 500000}, {"lock_uncontended", 5000000, 500000}, {">=", 1.3, "vs_py"}},
  {"lock_typemethods", "lock acquire+release through the type's methods", "/s", true, {"lock_typemethods", 5000000, 500000}, false, false},
  {"lock_contended2", "lock acquire+release, 2 threads contending", "/s", true, {"lock_contended2", 1000000, 100000}, {"lock_contended2", 1000000, 100000}, {"lock_contended2", 1000000, 100000}},
  {"spawn_process", "process spawn+join (median)", "us", false, {"spawn_process", 200, 50}, {"spawn_process", 100, 20}, {"spawn_process", 200, 50}, {"<=", 500, "abs"}},
  {"spawn_upv_ints", "spawn+join, 10^6 ints captured (median)", "us", false, {"spawn_upv_ints", 50, 20}, {"spawn_upv_ints", 50, 20}, false},
  {"spawn_upv_rows", "spawn+join, 10^6 rows captured (median)", "us", false, {"spawn_upv_rows", 50, 20}, {"spawn_upv_rows", 50, 20}, false},
  {"spawn_thread", "thread new+join (median)", "us", false, {"spawn_thread", 500, 100}, {"spawn_thread", 500, 100}, {"spawn_thread", 500, 100}, {"<=", 40, "abs"}},
  {"rss_thread", "memory per idle thread", "KiB", false, {"rss_thread", 20, 10}, {"rss_thread", 20, 10}, {"rss_thread", 20, 10}, {"<=", 24, "abs"}},
  -- issue 10: pure Lua in a thread runs as fast as in the main state (time ratio, 1 = same)
  {"lua_loop_thread_vs_main", "pure-Lua loop, thread / main state time", "x", false, {"lua_loop_thread_vs_main", 30000000, 5000000}, false, false, {"<=", 1.05, "abs"}},
  {"rss_process", "memory per idle process (PSS)", "KiB", false, {"rss_process", 10, 5}, {"rss_process", 10, 5}, {"rss_process", 10, 5}},
  -- shared.array (issue 13): Python holds Array.get_lock() per add, as its docs say to
  {"array_add", "shared.array a:add, uncontended", "/s", true, {"array_add", 5000000, 500000}, {"array_add", 500000, 100000}, {"array_add", 20000000, 2000000},
    {">=", 15e6, "abs"}},
  {"array_add_local", "shared.array add(a, i, 1), method in a local", "/s", true, {"array_add_local", 5000000, 500000}, {"array_add", 500000, 100000}, {"array_add", 20000000, 2000000}},
  {"array_hist4p", "shared.array histogram, 4 processes", "/s", true, {"array_hist4p", 1000000, 200000}, {"array_hist4p", 1000000, 100000}, {"array_hist4p", 1000000, 200000},
    {">=", 30, "vs_py"}},
  -- concur.cluster (issue 14): small values between 2 ranks; target 30% of C's rate
  {"cluster_pingpong", "cluster.send/recv ping-pong, 2 MPI ranks", "/s", true, {"pingpong", 200000, 20000, "mpi"}, false, {"pingpong", 200000, 20000, "mpi"},
    {"<=", 3.33, "vs_c"}},
  {"cluster_stream", "cluster.send -> recv stream, 2 MPI ranks", "/s", true, {"stream", 500000, 50000, "mpi"}, false, {"stream", 500000, 50000, "mpi"},
    {"<=", 3.33, "vs_c"}},
  -- the MPI pool: rank 0 runs the script (-l concur.serve), the others work
  {"cluster_pool_map", "pool kind=mpi map, small items, 2 worker ranks", "/s", true, {"pool_map", 100000, 20000, "mpi", 3}, false, false},
  {"cluster_pool_primes1", "pool kind=mpi primes < 3e6, 1 worker rank", "s", false, {"pool_primes", P, Q, "mpi", 2}, false, false},
  {"cluster_pool_primes2", "pool kind=mpi primes < 3e6, 2 worker ranks", "s", false, {"pool_primes", P, Q, "mpi", 3}, false, false},
  {"array_ptr", "shared.array writes via a:ptr(), LuaJIT", "/s", true, {"array_ptr", 100000000, 10000000, "luajit"}, {"array_ptr", 2000000, 1000000}, {"array_ptr", 100000000, 10000000},
    {">=", 200e6, "abs"}},
  -- pool (issue 12): Python's Pool(2) / ThreadPoolExecutor(2) / ProcessPoolExecutor(2);
  -- the primes rows run pure-Python count in Python and the C kernel in concur
  -- (what matters there is 2 workers against 1: pool_primes_*2 vs *1)
  {"pool_map_p2", "pool map x*x 10^6 ints, 2 processes", "/s", true, {"pool_map_p2", 1000000, 200000}, {"pool_map", 1000000, 200000}, false, {">=", 1.5, "vs_py"}},
  {"pool_map_t2", "pool map x*x 10^6 ints, 2 threads", "/s", true, {"pool_map_t2", 1000000, 200000}, {"pool_map", 1000000, 200000}, false, {">=", 1.5, "vs_py"}},
  {"pool_imapu_p2", "pool imap_unordered chunksize=1, 2 processes", "/s", true, {"pool_imapu_p2", 200000, 50000}, {"pool_imapu", 200000, 50000}, false, {">=", 10, "vs_py"}},
  {"pool_imapu_t2", "pool imap_unordered chunksize=1, 2 threads", "/s", true, {"pool_imapu_t2", 200000, 50000}, {"pool_imapu", 200000, 50000}, false, {">=", 10, "vs_py"}},
  {"pool_submit_t2", "pool submit+result, 2 threads", "/s", true, {"pool_submit_t2", 100000, 20000}, {"pool_submit_t", 100000, 20000}, false, {">=", 10, "vs_py"}},
  {"pool_submit_p2", "pool submit+result, 2 processes", "/s", true, {"pool_submit_p2", 100000, 20000}, {"pool_submit_p", 20000, 5000}, false, {">=", 30, "vs_py"}},
  {"pool_primes_p1", "pool map primes < 3e6 in chunks, 1 process", "s", false, {"pool_primes_p1", P, Q}, {"pool_primes_1", P, Q}, false},
  {"pool_primes_p2", "pool map primes < 3e6 in chunks, 2 processes", "s", false, {"pool_primes_p2", P, Q}, {"pool_primes_2", P, Q}, false},
  {"pool_primes_t1", "pool map primes < 3e6 in chunks, 1 thread", "s", false, {"pool_primes_t1", P, Q}, {"pool_primes_1", P, Q}, false},
  {"pool_primes_t2", "pool map primes < 3e6 in chunks, 2 threads", "s", false, {"pool_primes_t2", P, Q}, {"pool_primes_2", P, Q}, false},
  {"pool_sweep_p2", "pool sweep 400 x 5 ms, 2 processes, time/ideal", "x", false, {"pool_sweep_p2", 400, 100}, {"pool_sweep", 400, 100}, false, {"<=", 1.05, "abs"}},
  {"pool_sweep_t2", "pool sweep 400 x 5 ms, 2 threads, time/ideal", "x", false, {"pool_sweep_t2", 400, 100}, {"pool_sweep", 400, 100}, false, {"<=", 1.05, "abs"}},
  -- concur.progress (issue 12): one p:step() per item, stderr not a terminal (a log)
  {"progress_step", "concur.progress p:step() per item", "/s", true, {"progress_step", 1000000, 1000000}, false, false},
}

local errfile = out .. "stderr.txt"
-- the first line a failed run printed on stderr, for the notes
local function last_error()
  local f = io.open(errfile)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  local line = s:match("([^\n]*error[^\n]*)") or s:match("([^\n]+)")
  return line and line:gsub("^%s+", ""):sub(1, 160)
end

-- a concur run whose stderr went to errfile: the figure, or nil and why not
local function run_reporting(cmd, under)
  local f = io.popen(cmd)
  local s = f:read("*a")
  local ok = f:close()
  local v = ok and tonumber(s:match("[%d.eE+-]+"))
  if v then return v end
  return nil, "failed under " .. under .. ": " .. (last_error() or "no output")
end

-- one run: the figure, or nil and why not
local function run_one(kind, spec)
  if not spec then return nil end
  local size = quick and spec[3] or spec[2]
  local cmd
  if spec[4] == "mpi" then -- under mpirun; rank 0 prints
    if kind == "luajit" or kind == "python" then return nil, "an MPI row: build/concur and C only" end
    if not has_mpi or (kind == "c" and not has_mpi_c) then return nil, "MPI missing" end
    local ranks = spec[5] or 2
    local serve = spec[1]:match("^pool_") and "-l concur.serve " or ""
    cmd = kind == "concur" and string.format("%stimeout 300 mpirun --oversubscribe -n %d build/concur %s%scluster_bench.lua %s %d",
        mpi_env, ranks, serve, here, spec[1], size)
      or string.format("%stimeout 300 mpirun -n 2 %s %s %d", mpi_env, mpi_ref, spec[1], size)
    local got = sh(cmd)
    return got and tonumber(got:match("[%d.eE+-]+"))
  end
  if kind == "luajit" then
    if not has_luajit then return nil, "luajit or build/luajit/concur.so missing" end
    return run_reporting(string.format("LUA_CPATH='build/luajit/?.so' timeout 300 luajit %sluajit_bench.lua %s %d 2>%s",
      here, spec[1], size, errfile), "LuaJIT")
  elseif kind == "concur" then
    return run_reporting(string.format("timeout 300 build/concur %sconcur_bench.lua %s %d 2>%s",
      here, spec[1], size, errfile), "build/concur")
  elseif kind == "python" then
    if not has_python then return nil end
    cmd = string.format("timeout 300 python3 %spython_ref.py %s %d", here, spec[1], size)
  else
    if not has_c then return nil end
    cmd = string.format("timeout 300 %s %s %d", cref, spec[1], size)
  end
  local s = sh(cmd)
  return s and tonumber(s:match("[%d.eE+-]+"))
end

local function stats(xs)
  if #xs == 0 then return nil end
  table.sort(xs)
  local n = #xs
  local med = n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
  return {median = med, min = xs[1], max = xs[n], runs = n}
end

-- how many times better concur is than other (>1: concur better)
local function better(row, mine, other)
  if not mine or not other or mine == 0 or other == 0 then return nil end
  return row[4] and mine / other or other / mine
end

-- BENCH_ONLY=array_ runs only the rows whose name starts with it
local only = os.getenv("BENCH_ONLY")
local results = {}
local notes = {} -- reason -> number, in order of first use
local note_list = {}
local function note(reason)
  if not notes[reason] then
    note_list[#note_list + 1] = reason
    notes[reason] = #note_list
  end
  return notes[reason]
end
for _, row in ipairs(rows) do
  if only and row[1]:sub(1, #only) ~= only then goto next_row end
  local got = {concur = {}, luajit = {}, python = {}, c = {}}
  local why = {}
  -- where each column's run comes from: a LuaJIT-only row has no 5.4 run
  local jit_only = row[5] and row[5][4] == "luajit"
  local specs = {concur = not jit_only and row[5] or nil, python = row[6], c = row[7],
                 luajit = row[5] and not row.jit and row[5] or nil}
  if jit_only then why.concur = "needs LuaJIT's FFI: runs in the LuaJIT column only" end
  if row.jit then why.luajit = row.jit end
  for _ = 1, REPS do
    for _, kind in ipairs{"concur", "luajit", "python", "c"} do
      local v, err = run_one(kind, specs[kind])
      if v then table.insert(got[kind], v) elseif err then why[kind] = why[kind] or err end
    end
  end
  local r = {name = row[1], label = row[2], unit = row[3], higher_is_better = row[4],
             concur = stats(got.concur), luajit = stats(got.luajit), python = stats(got.python), c = stats(got.c)}
  for _, kind in ipairs{"concur", "luajit"} do
    if not r[kind] and row[5] and why[kind] then
      r[kind .. "_note"] = why[kind]
      r[kind .. "_note_n"] = note(why[kind])
    end
  end
  local pm = r.python and r.python.median
  r.luajit_vs_python = better(row, r.luajit and r.luajit.median, pm)
  -- ratios and the target judge the build/concur figure (LuaJIT's for a LuaJIT-only row)
  local main = jit_only and r.luajit or r.concur
  local cm = main and main.median
  r.luajit_only = jit_only or nil
  r.vs_python = better(row, cm, pm)
  r.c_factor = r.c and cm and (1 / better(row, cm, r.c.median)) or nil -- cost relative to C
  local t = row[8]
  if t then
    local value = t[3] == "vs_c" and r.c_factor or t[3] == "vs_py" and r.vs_python or cm
    r.target = string.format("%s %s%s", t[1], t[3] == "vs_c" and tostring(t[2]) .. "x C" or
      t[3] == "vs_py" and tostring(t[2]) .. "x Py" or
      (t[2] >= 1e6 and string.format("%gM", t[2] / 1e6) or tostring(t[2])), t[3] == "abs" and "" or "")
    if value then
      r.status = ((t[1] == ">=" and value >= t[2]) or (t[1] == "<=" and value <= t[2])) and "PASS" or "MISS"
    else
      r.status = "n/a"
    end
  end
  results[#results + 1] = r
  io.stderr:write(string.format("  done %-18s\n", row[1]))
  ::next_row::
end

-- derived: the prime count's scaling, 2 threads and 2 processes against 1
local function find(name) for _, r in ipairs(results) do if r.name == name then return r end end end
do -- the MPI pool: 2 worker ranks against 1
  local one, two = find("cluster_pool_primes1"), find("cluster_pool_primes2")
  if one and two and one.concur and two.concur then
    local s = one.concur.median / two.concur.median
    results[#results + 1] = {name = "cluster_pool_speedup", label = "speed-up, 2 worker ranks vs 1 (pool mpi)", unit = "x",
      higher_is_better = true, concur = {median = s, min = s, max = s, runs = 1}, target = ">= 1.8", status = s >= 1.8 and "PASS" or "MISS"}
  end
end
-- issue 10: a spawn whose function captures 10^6 values, against an empty spawn (time ratio)
for _, pair in ipairs{{"spawn_upv_ints", "spawn+join, 10^6 ints captured / empty"}, {"spawn_upv_rows", "spawn+join, 10^6 rows captured / empty"}} do
  local empty, big = find("spawn_process"), find(pair[1])
  if empty and big and empty.concur and big.concur then
    local s = big.concur.median / empty.concur.median
    local ps = (empty.python and big.python) and big.python.median / empty.python.median or nil
    local function one_run(v) return v and {median = v, min = v, max = v, runs = 1} or nil end
    results[#results + 1] = {name = pair[1] .. "_vs_empty", label = pair[2], unit = "x", higher_is_better = false,
      concur = one_run(s), python = one_run(ps), target = "<= 2", status = s <= 2 and "PASS" or "MISS"}
  end
end
for _, pair in ipairs{{"primes_t2", "speed-up, 2 threads vs 1 (C kernel)"}, {"primes_p2", "speed-up, 2 processes vs 1 (C kernel)"}} do
  local one, two = find("primes_t1"), find(pair[1])
  if one and two and one.concur and two.concur then
    local s = one.concur.median / two.concur.median
    local cs = (one.c and two.c) and one.c.median / two.c.median or nil
    local js = (one.luajit and two.luajit) and one.luajit.median / two.luajit.median or nil
    local function one_run(v) return v and {median = v, min = v, max = v, runs = 1} or nil end
    results[#results + 1] = {name = pair[1] .. "_speedup", label = pair[2], unit = "x", higher_is_better = true,
      concur = one_run(s), luajit = one_run(js), c = one_run(cs),
      c_factor = cs and cs / s or nil, target = ">= 1.9", status = s >= 1.9 and "PASS" or "MISS"}
  end
end

-- ---- the table ----
local function fmt(v, unit)
  if not v then return "-" end
  if unit == "/s" then
    if v >= 1e6 then return string.format("%.2fM/s", v / 1e6) end
    if v >= 1e3 then return string.format("%.1fk/s", v / 1e3) end
    return string.format("%.0f/s", v)
  end
  if unit == "s" then return string.format("%.3fs", v) end
  if unit == "us" then return string.format("%.1fus", v) end
  if unit == "KiB" then return string.format("%.0fKiB", v) end
  return string.format("%.2f%s", v, unit)
end
local function ratio(v) return v and string.format("%.2fx", v) or "-" end

-- "concur" and "vs Python" head two columns each: the build/concur (Lua 5.4)
-- figure and the LuaJIT one
local header = string.format("%-44s %23s %11s %11s %20s %8s  %-12s %s", "workload", "concur", "Python", "C",
  "vs Python", "x of C", "target", "")
local sub = string.format("%-44s %11s %11s %11s %11s %10s %9s", "", "Lua 5.4", "LuaJIT", "", "", "Lua 5.4", "LuaJIT")
print(header)
print(sub)
print(string.rep("-", #header + 4))
for _, r in ipairs(results) do
  local function cell(s, n) return s and fmt(s.median, r.unit) or n and string.format("-[%d]", n) or "-" end
  print(string.format("%-44s %11s %11s %11s %11s %10s %9s %8s  %-12s %s", r.label, cell(r.concur, r.concur_note_n),
    cell(r.luajit, r.luajit_note_n), cell(r.python), cell(r.c), ratio(r.vs_python), ratio(r.luajit_vs_python),
    ratio(r.c_factor), r.target or "", r.status or ""))
end
print(string.format("\n%d runs each (median; min and max in results.json), A A' B C alternated; %s sizes.",
  REPS, quick and "QUICK" or "full"))
print("'vs Python': times concur is better than Python (same work, per second or per run), for")
print("  build/concur (Lua 5.4) and for `luajit` with build/luajit/concur.so running the same workload.")
print("'x of C': concur's cost relative to plain C (1.00x = as fast as C); it and the target judge the")
print("  Lua 5.4 figure, or the LuaJIT one for a row that runs under LuaJIT only.")
for i, reason in ipairs(note_list) do print(string.format("[%d] %s", i, reason)) end

-- ---- JSON ----
local function json(v, ind)
  ind = ind or ""
  local t = type(v)
  if t == "nil" then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then return (v ~= v or v == math.huge) and "null" or string.format("%.6g", v) end
  if t == "string" then return string.format("%q", v):gsub("\\\n", "\\n") end
  local parts, isarr = {}, #v > 0
  if isarr then
    for _, x in ipairs(v) do parts[#parts + 1] = ind .. "  " .. json(x, ind .. "  ") end
    return "[\n" .. table.concat(parts, ",\n") .. "\n" .. ind .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = string.format("%s  %q: %s", ind, k, json(v[k], ind .. "  ")) end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. ind .. "}"
end
local machine = {cpus = process.cpu_count(), quick = quick, reps = REPS,
  kernel = (sh("uname -sr") or ""):gsub("%s+$", ""), python = has_python and (sh("python3 --version") or ""):gsub("%s+$", "") or nil}
machine.luajit = has_luajit and (sh("luajit -v") or ""):gsub("%s+$", "") or nil
local f = assert(io.open(out .. "results.json", "w"))
f:write(json({machine = machine, results = results, notes = note_list}), "\n")
f:close()

-- ---- SVG: speed-up over Python per workload, log scale; two bars a row ----
local bars = {}
for _, r in ipairs(results) do
  local v54 = not r.luajit_only and r.vs_python or nil
  if v54 or r.luajit_vs_python then bars[#bars + 1] = {r = r, v54, r.luajit_vs_python} end
end
local W, rowh, left, top = 900, 34, 330, 76
local H = top + #bars * rowh + 60
local lo, hi = 0.1, 1000
for _, b in ipairs(bars) do
  for k = 1, 2 do
    if b[k] then hi = math.max(hi, b[k] * 1.5) lo = math.min(lo, b[k] / 1.5) end
  end
end
local function x(v) return left + (math.log(v, 10) - math.log(lo, 10)) / (math.log(hi, 10) - math.log(lo, 10)) * (W - left - 40) end
local COLORS = {{"#2a7ab0", "#c0504d"}, {"#e39b2f", "#8e44ad"}} -- {faster, slower} for Lua 5.4, LuaJIT
local svg = {string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">', W, H),
  string.format('<rect width="%d" height="%d" fill="white"/>', W, H),
  string.format('<text x="%d" y="24" font-size="16" font-weight="bold">concur vs Python: times faster (log scale; 1x = same)</text>', 10),
  string.format('<text x="10" y="44" fill="#555">%s sizes, median of %d runs, %d CPUs</text>', quick and "quick" or "full", REPS, machine.cpus),
  string.format('<rect x="%d" y="54" width="12" height="10" fill="%s"/><text x="%d" y="63">build/concur (Lua 5.4)</text>', left, COLORS[1][1], left + 16),
  string.format('<rect x="%d" y="54" width="12" height="10" fill="%s"/><text x="%d" y="63">luajit + build/luajit/concur.so</text>', left + 180, COLORS[2][1], left + 196)}
local decade = 10 ^ math.floor(math.log(lo, 10))
while decade <= hi do
  local gx = x(decade)
  if gx >= left then
    svg[#svg + 1] = string.format('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>', gx, top - 5, gx, H - 40, decade == 1 and "#000" or "#ddd")
    svg[#svg + 1] = string.format('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%gx</text>', gx, H - 22, decade)
  end
  decade = decade * 10
end
for i, b in ipairs(bars) do
  local y = top + (i - 1) * rowh
  svg[#svg + 1] = string.format('<text x="%d" y="%d" text-anchor="end">%s</text>', left - 8, y + 20, b.r.label:gsub("&", "&amp;"):gsub("<", "&lt;"))
  for k = 1, 2 do
    local v = b[k]
    local by = y + 3 + (k - 1) * 14
    if v then
      local x0, x1 = x(1), x(v)
      svg[#svg + 1] = string.format('<rect x="%.1f" y="%d" width="%.1f" height="12" fill="%s"/>', math.min(x0, x1), by, math.abs(x1 - x0), COLORS[k][v >= 1 and 1 or 2])
      svg[#svg + 1] = string.format('<text x="%.1f" y="%d" fill="#000" font-size="10">%.1fx</text>', math.max(x0, x1) + 4, by + 10, v)
    else
      svg[#svg + 1] = string.format('<text x="%.1f" y="%d" fill="#888" font-size="10">-</text>', x(1) + 4, by + 10)
    end
  end
end
svg[#svg + 1] = string.format('<text x="%d" y="%d" fill="#555">speed-up over Python (same workload); "-": not run, see the notes in the table</text>', left, H - 6)
svg[#svg + 1] = "</svg>"
f = assert(io.open(out .. "report.svg", "w"))
f:write(table.concat(svg, "\n"), "\n")
f:close()
print("\nwrote " .. out .. "results.json and " .. out .. "report.svg")
