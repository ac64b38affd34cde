-- What the cluster specs share: which interpreter and module directory the
-- ranks use under each test flavour, the TSan environment for mpirun'd
-- ranks, and whether MPI is here at all (else every case is pending, loudly).
local concur = require "concur"
local process = concur.process

local C = {}
C.flavour = os.getenv("CONCUR_TEST_FLAVOUR") or "concur"
C.interp = ({concur = "build/concur", asan = "build/asan/concur", tsan = "build/tsan/concur",
             ["lua5.4"] = "lua5.4", luajit = "luajit", ["asan-lua5.4"] = "lua5.4",
             ["asan-luajit"] = "luajit"})[C.flavour] or "build/concur"
C.moddir = (C.flavour == "luajit" or C.flavour == "asan-luajit") and "build/luajit" or "build/lua5.4"
-- under a sanitizer host, its own instrumented module when it was built (not
-- for the asan-lua5.4/luajit flavours: the ranks run without the preload)
local sanitized = ({asan = "build/asan/lua5.4", tsan = "build/tsan/lua5.4"})[C.flavour]
if sanitized and io.open(sanitized .. "/concur/cluster.so") then C.moddir = sanitized end

-- under TSan, the ranks also need scripts/tsan-mpi.supp (Open MPI's own
-- lock orders); TSan takes one suppressions file, so both go into one
if C.flavour == "tsan" then
  local path = os.tmpname()
  local out = assert(io.open(path, "w"))
  for _, f in ipairs{"scripts/tsan.supp", "scripts/tsan-mpi.supp"} do
    local h = io.open(f)
    if h then out:write(h:read("*a"), "\n") h:close() end
  end
  out:close()
  local opts = (os.getenv("TSAN_OPTIONS") or ""):gsub("suppressions=%S*", "")
  C.TSAN_ENV = "TSAN_OPTIONS=" .. opts .. " suppressions=" .. path
end

function C.exists(path)
  local f = io.open(path) if f then f:close() return true end return false
end

function C.have(cmd)
  return process.run{"sh", "-c", "command -v " .. cmd}.status == 0
end

-- nil when MPI and the module (file: "cluster.so" or "serve.so") are here;
-- else why not, also written to stderr naming the spec
function C.why_skip(spec, file)
  local why
  if not C.have("mpirun") then why = "mpirun not found (make deps installs openmpi-bin)"
  elseif not C.exists(C.moddir .. "/concur/" .. file) then
    why = C.moddir .. "/concur/" .. file .. " not built (no MPI at build time?)"
  end
  if why then io.stderr:write(("\n*** %s: SKIPPED under %s: %s ***\n\n"):format(spec, C.flavour, why)) end
  return why
end

return C
