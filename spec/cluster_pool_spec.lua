-- concur.pool with kind = "mpi" (lib/concur/cluster_pool.lua): rank 0 runs
-- the script, ranks 1..2 work. Launched with -l concur.serve (top-level code
-- once) and without (a warning, the code before pool.new on every rank);
-- a killed rank ends the job and the journal lets the rerun finish only
-- what is left. Every mpirun is bounded by `timeout`. Pending, loudly,
-- where MPI or the module is missing.
local concur = require "concur"
local process = concur.process

local C = dofile("spec/cluster/support.lua")
local flavour, interp, moddir, TSAN_ENV = C.flavour, C.interp, C.moddir, C.TSAN_ENV
local exists = C.exists
local why_skip = C.why_skip("cluster_pool_spec", "serve.so")

local function mpirun(script, opts)
  opts = opts or {}
  local cmd = {"timeout", "-k", "5", "40", "env", "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
    "LUA_CPATH=" .. moddir .. "/?.so;;", TSAN_ENV or "CONCUR_TSAN=0"}
  for _, e in ipairs(opts.env or {}) do cmd[#cmd + 1] = e end
  for _, a in ipairs{"mpirun", "--oversubscribe", "-n", "3"} do cmd[#cmd + 1] = a end
  for _, a in ipairs(opts.mca or {}) do cmd[#cmd + 1] = a end
  cmd[#cmd + 1] = interp
  if opts.serve ~= false then cmd[#cmd + 1] = "-l"; cmd[#cmd + 1] = "concur.serve" end
  cmd[#cmd + 1] = script
  local r = process.run(cmd)
  return r.status, r.stdout .. r.stderr, r.status == 124 or r.status == -9
end

local function probe_cases(label, opts)
  describe("pool kind = \"mpi\" (" .. label .. ")", function()
    local out, status
    local function ran()
      if not out then status, out = mpirun("spec/cluster/pool_probe.lua", opts) end
      return out
    end
    local function case(name, check)
      it(name, function()
        if why_skip then return pending("SKIPPED: " .. why_skip) end
        local o = ran()
        assert(o:find("ok " .. check .. "\n", 1, true), o)
      end)
    end
    case("maps 10^4 items in order", "map")
    case("hands work to ranks 1 and 2, never to rank 0", "work spread over the ranks")
    case("runs imap, imap_unordered and starmap", "imap, imap_unordered, starmap")
    case("runs submitted tasks and returns their results through futures", "submit and futures")
    case("reports a task error with the rank, host name and traceback", "task error names rank, host and traceback")
    case("carries upvalues and refuses shared objects clearly", "upvalues travel, shared objects are refused")
    case("gives per-item seeds that reproduce", "seeds are per item and reproducible")
    case("runs a second pool (maxtasks = 1) after the first is closed", "a second pool after the first is closed")
    it("ends with mpirun exiting 0 and the workers gone", function()
      if why_skip then return pending("SKIPPED: " .. why_skip) end
      local o = ran()
      assert(o:find("done\n", 1, true), o)
      assert.equal(0, status, o)
    end)
    if opts.serve ~= false then
      it("runs the script's top-level code on rank 0 only", function()
        if why_skip then return pending("SKIPPED: " .. why_skip) end
        local o = ran()
        assert(o:find("top 0\n", 1, true), o)
        assert.is_nil(o:find("top [12]\n"), o)
        assert.is_nil(o:find("without -l concur.serve", 1, true), o)
      end)
    else
      it("says so when the top-level code ran on every rank (no -l concur.serve)", function()
        if why_skip then return pending("SKIPPED: " .. why_skip) end
        local o = ran()
        assert(o:find("top 1\n", 1, true) and o:find("top 2\n", 1, true), o)
        assert(o:find('kind = "mpi" without -l concur.serve: every rank ran the script\'s top-level code', 1, true), o)
      end)
    end
  end)
end

probe_cases("-l concur.serve, default transports", {})
probe_cases("no -l concur.serve, TCP over loopback",
  {serve = false, mca = {"--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"}})

describe("pool kind = \"mpi\" failures", function()
  it("ends the job when a worker rank is SIGKILLed; the journal's rerun runs only what was left", function()
    if why_skip then return pending("SKIPPED: " .. why_skip) end
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local env = {"RAN=" .. dir .. "/ran", "MARKER=" .. dir .. "/marker", "JOURNAL=" .. dir .. "/journal"}
    local status, out, timed_out = mpirun("spec/cluster/pool_journal.lua", {env = env})
    assert.is_false(timed_out, out)
    assert.are_not.equal(0, status, out)
    assert.is_nil(out:find("sum ", 1, true), out)
    os.remove(dir .. "/ran")
    status, out, timed_out = mpirun("spec/cluster/pool_journal.lua", {env = env})
    assert.is_false(timed_out, out)
    assert.equal(0, status, out)
    assert.truthy(out:find("sum 2460\n", 1, true), out) -- 3 * (1 + ... + 40)
    local n = 0
    for _ in io.lines(dir .. "/ran") do n = n + 1 end
    assert.is_true(n >= 1 and n < 40, "the rerun computed " .. n .. " of 40 items")
    os.execute("rm -rf " .. dir)
  end)

  it("refuses kind = \"mpi\" on a single rank, saying how to launch", function()
    if why_skip then return pending("SKIPPED: " .. why_skip) end
    local r = process.run{"timeout", "30", "env", TSAN_ENV or "CONCUR_TSAN=0", "LUA_CPATH=" .. moddir .. "/?.so;;", interp, "-e",
      'require "concur.cluster"; local ok, e = pcall(require("concur.pool").new, {kind = "mpi"}); print(ok, e)'}
    assert.truthy(r.stdout:find('false\tpool.new: kind = "mpi" needs at least 2 ranks', 1, true), r.stdout .. r.stderr)
  end)

  it("falls back to local processes for kind = \"auto\" outside an MPI job", function()
    if why_skip then return pending("SKIPPED: " .. why_skip) end
    local r = process.run{"timeout", "30", "env", TSAN_ENV or "CONCUR_TSAN=0", "LUA_CPATH=" .. moddir .. "/?.so;;", interp, "-e",
      'require "concur.cluster"; local p = require("concur.pool").new{kind = "auto", workers = 2};'
      .. 'print(table.concat(p:map(function(x) return x * 2 end, {1, 2, 3}), ",")); p:close(); p:join()'}
    assert.equal("2,4,6\n", r.stdout, r.stderr)
  end)
end)
