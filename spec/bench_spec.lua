-- make bench QUICK=1 keeps working: the shape of its output, never the speed.
-- It shells out to build/concur, so it runs once (under the concur flavour).
local flavour = os.getenv("CONCUR_TEST_FLAVOUR")

describe("make bench QUICK=1", function()
  it("prints the table and writes results.json and report.svg", function()
    if os.getenv("CONCUR_SKIP_BENCH") then pending("CONCUR_SKIP_BENCH is set") return end
    if flavour and flavour ~= "concur" then pending("runs once, under the concur flavour") return end
    if not io.open("build/concur") then pending("build/concur not built") return end
    os.remove("build/bench/results.json")
    local f = io.popen("sh scripts/bench/run.sh --quick 2>/dev/null")
    local out = f:read("*a")
    f:close()
    assert.matches("workload%s+concur%s+Python%s+C%s+vs Python%s+x of C%s+target", out)
    for _, label in ipairs{"shared.list:append per item", "queue, process %-> process", "pipe round trip",
                           "lock acquire%+release, uncontended", "process spawn%+join", "memory per idle thread",
                           "speed%-up, 2 threads vs 1"} do
      assert.matches(label, out)
    end
    assert.matches("PASS", out) -- at least the PASS/MISS column is there
    local json = assert(io.open("build/bench/results.json")):read("*a")
    assert.matches('"results": %[', json)
    assert.matches('"name": "queue_pp"', json)
    assert.matches('"median": [%d.e+-]+', json)
    local svg = assert(io.open("build/bench/report.svg")):read("*a")
    assert.equal("<svg", svg:sub(1, 4))
    assert.matches("</svg>%s*$", svg)
  end)
end)
