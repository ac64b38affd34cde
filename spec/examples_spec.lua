-- Every tutorial example at a small size, checking the lesson's observable
-- facts (counts, emptiness, sets, END handling, whole lines), never timing.
-- The examples run under build/concur, so this file runs once (the concur flavour).
local flavour = os.getenv("CONCUR_TEST_FLAVOUR")

local function run(cmd)
  local f = io.popen("timeout 60 " .. cmd .. " 2>&1")
  local out = f:read("*a")
  f:close()
  return out
end

local function ex(name, args)
  return run("build/concur examples/" .. name .. ".lua " .. (args or ""))
end

local function skip()
  if flavour and flavour ~= "concur" then
    pending("runs once, under the concur flavour")
    return true
  end
  if not io.open("build/concur") then
    pending("build/concur not built")
    return true
  end
end

describe("tutorial examples", function()
  it("01: one busy process uses one core, several use several", function()
    if skip() then return end
    local out = ex("01_busy_loop", "0.3")
    local one = tonumber(out:match("1 busy process%(es%):.-cores used ([%d.]+)"))
    assert.is_true(one > 0.25 and one < 1.5, out) -- ~1 on an idle machine; shared CI machines are loaded
    assert.matches("cores used", out)
  end)

  it("02: three processes count the same primes as one", function()
    if skip() then return end
    local out = ex("02_primes_processes", "100000")
    assert.matches("1 process:%s+9592 primes", out)
    assert.matches("3 processes: 9592 primes", out)
    assert.matches("same count", out)
  end)

  it("03: children fill their own copies; the parent's table stays empty", function()
    if skip() then return end
    local out = ex("03_plain_table", "4")
    local children = 0
    for _ in out:gmatch("its own table has 4 items") do children = children + 1 end
    assert.equal(3, children)
    assert.matches("parent %d+: its table has 0 items", out)
  end)

  it("04: the shared list shows every child's items in the parent", function()
    if skip() then return end
    local out = ex("04_shared_list", "4")
    local items = out:match("the shared list has 12 items: ([%d, ]+)")
    assert.truthy(items, out)
    local set = {}
    for v in items:gmatch("%d+") do set[v] = true end
    for pid in out:gmatch("child (%d+) appended") do
      for i = 1, 4 do assert.truthy(set[tostring(tonumber(pid) * 100 + i)]) end
    end
  end)

  it("05: per-item appends and a batched extend give the same primes", function()
    if skip() then return end
    local out = ex("05_primes_into_list", "100000")
    assert.matches("one append per prime:%s+9592 primes", out)
    assert.matches("local batch %+ extend:%s+9592 primes", out)
  end)

  it("06: the receiver stops at END", function()
    if skip() then return end
    local out = ex("06_pipe", "5")
    assert.matches("received: message 5", out)
    assert.is_nil(out:find("received: END", 1, true))
    assert.matches("receiver stopped at END after 5 messages", out)
  end)

  it("07: threads append to one list", function()
    if skip() then return end
    assert.matches("the list has 400 items", ex("07_threads_list", "100"))
  end)

  it("08: threads count the same primes and say why they help", function()
    if skip() then return end
    local out = ex("08_primes_threads", "100000")
    assert.matches("1 thread:%s+9592 primes", out)
    assert.matches("3 threads: 9592 primes", out)
    assert.matches("no global interpreter lock", out)
  end)

  it("09: five sleeps in threads overlap", function()
    if skip() then return end
    local out = ex("09_sleep_threads", "0.1")
    local seq = tonumber(out:match("sequential: .- took ([%d.]+)s"))
    local par = tonumber(out:match("5 threads: .- took ([%d.]+)s"))
    assert.is_true(seq >= 0.5, out) -- five sleeps one after another
    assert.is_true(par < seq, out)  -- a fact about overlap, not a timing budget
  end)

  it("10: lines printed under the lock are never torn", function()
    if skip() then return end
    local out = ex("10_lock_print", "20")
    local n = 0
    for line in out:gmatch("[^\n]+") do
      assert.truthy(line:match("^process %d says line %d+ of 20$"), line)
      n = n + 1
    end
    assert.equal(60, n)
  end)

  it("11: the worker takes lines until stop", function()
    if skip() then return end
    local out = run("sh -c \"printf 'one\\\\ntwo\\\\nstop\\\\nafter\\\\n' | build/concur examples/11_queue_worker.lua\"")
    assert.matches("worker got: one", out)
    assert.matches("worker got: two", out)
    assert.is_nil(out:find("after", 1, true))
    assert.matches("the worker handled 2 lines", out)
  end)

  it("12 and 13: threads fetch from the local pre-forked server", function()
    if skip() then return end
    local out = run("env URLS=4 DELAY=0.05 build/concur examples/12_http_threads.lua")
    assert.matches("in threads: 4 requests in [%d.]+s %(4 ok%)", out)
    assert.matches("200, %d+ bytes: served by pid %d+: GET /page4", out)
  end)

  it("13: the server runs several accepting processes and stops on its own", function()
    if skip() then return end
    local out = ex("13_prefork_server", "0.3 2 0")
    assert.matches("listening on http://127.0.0.1:%d+/ with worker pids %d+, %d+", out)
    local workers = 0
    for _ in out:gmatch("worker %d+ served %d+ requests") do workers = workers + 1 end
    assert.equal(2, workers)
  end)

  it("demo: the headline lesson runs and agrees with itself", function()
    if skip() then return end
    local out = ex("demo", "100000")
    assert.matches("1 process%s+[%d.]+s%s+9592 primes", out)
    assert.matches("3 processes%s+[%d.]+s%s+9592 primes", out)
    assert.matches("3 threads%s+[%d.]+s%s+9592 primes", out)
    assert.matches("pure%-Lua", out)
  end)
end)

describe("pool examples", function()
  it("sweep: writes one CSV row per point, in order, with progress, and removes its journal", function()
    if skip() then return end
    local csv = os.tmpname()
    local out = ex("sweep", csv .. " 100 2")
    assert.matches("100 points written to " .. csv:gsub("%p", "%%%0"), out)
    assert.matches("sweep: 100/100 done in", out)
    local rows = {}
    for line in io.lines(csv) do rows[#rows + 1] = line end
    assert.equal("damping,drive,amplitude", rows[1])
    assert.equal(101, #rows)
    assert.matches("^0%.0500,0%.5000,", rows[2])
    assert.is_nil(io.open(csv .. ".journal"))
    os.remove(csv)
  end)

  it("montecarlo: the seeded pool estimate is the same on 1, 2 and 4 workers", function()
    if skip() then return end
    local out = ex("montecarlo", "20000")
    local seen = {}
    for n, pi in out:gmatch("pool, (%d) worker%(s%), seed 42: pi ~ ([%d.]+)") do seen[tonumber(n)] = pi end
    assert.is_truthy(seen[1] and seen[2] and seen[4], out)
    assert.equal(seen[1], seen[2])
    assert.equal(seen[1], seen[4])
    assert.matches("reproducible across worker counts: true", out)
  end)
end)
