-- concur.cluster on Open MPI: the SPMD API on 3 ranks, with the default
-- transports and on TCP over loopback (how ranks on different machines
-- talk), a killed rank, a failing rank, and the handshake. Each case runs
-- mpirun under `timeout`: nothing here can hang. Where MPI or the module is
-- missing, every case is reported pending, loudly (spec/cluster/ holds the
-- scripts the ranks run).
local concur = require "concur"
local process = concur.process

local C = dofile("spec/cluster/support.lua")
local flavour, interp, moddir, TSAN_ENV = C.flavour, C.interp, C.moddir, C.TSAN_ENV
local exists, have = C.exists, C.have
local other = moddir == "build/luajit" and {"lua5.4", "build/lua5.4"} or {"luajit", "build/luajit"}
local why_skip = C.why_skip("cluster_spec", "cluster.so")

local TCP = {"--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"}

-- mpirun -n 3 over argv, bounded; returns status, stdout..stderr, timed_out
local function mpirun(opts)
  local cmd = {"timeout", "-k", "5", tostring(opts.limit or 40), "env",
    "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
    "LUA_CPATH=" .. moddir .. "/?.so;;", "CONCUR_CLUSTER_CHUNK=65536",
    "CLUSTER_PROBE=" .. (opts.probe or "ok"), TSAN_ENV or "CONCUR_TSAN=0",
    "mpirun", "--oversubscribe"}
  for _, a in ipairs(opts.mca or {}) do cmd[#cmd + 1] = a end
  for _, a in ipairs(opts.ranks or {"-n", "3", interp, opts.script or "spec/cluster/probe.lua"}) do
    cmd[#cmd + 1] = a
  end
  local r = process.run(cmd)
  return r.status, r.stdout .. r.stderr, r.status == 124 or r.status == -9
end

local function with_probe(label, mca)
  describe("cluster (" .. label .. ")", function()
    local out
    local function ran()
      if not out then
        local status
        status, out = mpirun{mca = mca}
        out = out .. "\nexit status " .. tostring(status) .. "\n"
      end
      return out
    end
    local function case(name, check)
      it(name, function()
        if why_skip then return pending("SKIPPED: " .. why_skip) end
        local o = ran()
        for r = 0, 2 do
          if not o:find(("ok %d %s\n"):format(r, check), 1, true) then
            error(("rank %d did not pass %q:\n%s"):format(r, check, o))
          end
        end
      end)
    end
    case("runs the script on every rank and reports size 3", "size")
    case("sends codec values (cycles, functions with upvalues, bytes) around a ring", "codec values")
    case("filters recv by tag and by source", "tag and source filters")
    case("carries nil and false as values", "nil and false travel")
    case("carries every kind of scalar, and strings around the small-message size", "scalars of every kind and strings around the small-message size")
    case("returns nil, 'timeout' from a recv with nothing to match", "recv timeout")
    case("carries a message longer than one chunk intact and in order", "large message in chunks")
    case("refuses shared objects naming the path to them", "shared objects refused with the path")
    case("names the function and argument of a bad argument (NaN, huge, 2^63, range)", "bad arguments named")
    case("runs bcast, gather, allgather, reduce (in rank order) and barrier", "collectives")
    case("lets a rank fork children that refuse MPI calls clearly", "fork inside a rank")
    case("serves send and recv from threads of a rank", "threads in a rank")
    case("lets thread:cancel interrupt a waiting recv", "cancel interrupts a waiting recv")
    it("ends with every rank done and mpirun exiting 0", function()
      if why_skip then return pending("SKIPPED: " .. why_skip) end
      local o = ran()
      assert(o:find("done 0\n", 1, true) and o:find("done 1\n", 1, true) and o:find("done 2\n", 1, true), o)
      assert(o:find("exit status 0\n", 1, true), o)
    end)
  end)
end

with_probe("default transports", nil)
with_probe("TCP over loopback", TCP)

describe("cluster failures", function()
  local function skip() if why_skip then pending("SKIPPED: " .. why_skip) return true end end

  it("ends the job with a non-zero status when a rank is SIGKILLed", function()
    if skip() then return end
    local status, out, timed_out = mpirun{script = "spec/cluster/fail.lua", probe = "kill", limit = 30}
    assert.is_false(timed_out, out)
    assert.are_not.equal(0, status, out)
    assert.is_nil(out:find("done", 1, true), out)
  end)

  it("aborts the whole job when a rank's script raises, showing the error", function()
    if skip() then return end
    local status, out, timed_out = mpirun{script = "spec/cluster/fail.lua", probe = "error", limit = 30}
    assert.is_false(timed_out, out)
    assert.are_not.equal(0, status, out)
    assert.truthy(out:find("boom on rank 1", 1, true), out)
  end)

  it("aborts the whole job when a rank exits non-zero", function()
    if skip() then return end
    local status, out, timed_out = mpirun{script = "spec/cluster/fail.lua", probe = "exit", limit = 30}
    assert.is_false(timed_out, out)
    assert.are_not.equal(0, status, out)
  end)

  it("refuses ranks whose concur version differs, naming both", function()
    if skip() then return end
    local status, out, timed_out = mpirun{limit = 30, ranks = {
      "-n", "1", "env", "CONCUR_CLUSTER_TEST_VERSION=9.9.9", interp, "spec/cluster/fail.lua", ":",
      "-n", "2", interp, "spec/cluster/fail.lua"}}
    assert.is_false(timed_out, out)
    assert.are_not.equal(0, status, out)
    assert.truthy(out:find("concur.cluster: ranks differ: rank 0 is [^;]*concur 9.9.9; rank 1 is [^\n]*concur 0"), out)
    assert.is_nil(out:find("up 1", 1, true), out)
  end)

  it("refuses ranks whose Lua differs (5.4 beside LuaJIT), naming both", function()
    if skip() then return end
    if not have(other[1]) or not exists(other[2] .. "/concur/cluster.so") then
      return pending("SKIPPED: " .. other[1] .. " or its module is missing")
    end
    local status, out, timed_out = mpirun{limit = 30, ranks = {
      "-n", "1", "env", "LUA_CPATH=" .. other[2] .. "/?.so;;", other[1], "spec/cluster/fail.lua", ":",
      "-n", "1", interp, "spec/cluster/fail.lua"}}
    assert.is_false(timed_out, out)
    assert.are_not.equal(0, status, out)
    assert.truthy(out:find("ranks differ: rank 0 is LuaJIT", 1, true) or out:find("rank 1 is LuaJIT", 1, true), out)
  end)
end)
