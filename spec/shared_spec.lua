-- shared.list and shared.dict, across threads and processes
local concur = require "concur"
local shared, process, thread, queue = concur.shared, concur.process, concur.thread, concur.queue

describe("shared.list", function()
  it("appends, extends, indexes and measures", function()
    local l = shared.list({1, 2})
    l:append("three")
    l:extend({4, {five = 5}})
    assert.equal(5, #l)
    assert.equal(5, l:len())
    assert.equal(1, l[1])
    assert.equal("three", l[3])
    assert.equal(5, l[5].five)
    assert.is_nil(l[6])
    assert.is_nil(l[0])
  end)

  it("sets items in range and appends at #l+1", function()
    local l = shared.list({1})
    l[1] = "one"
    l[2] = "two"
    assert.same({"one", "two"}, l:totable())
    assert.has_error(function() l[4] = 1 end)
    assert.has_error(function() l[1] = nil end)
    assert.has_error(function() l.x = 1 end)
  end)

  it("pops, inserts and removes", function()
    local l = shared.list({1, 2, 3})
    assert.equal(3, l:pop())
    l:insert(1, 0)
    l:insert(9)
    assert.same({0, 1, 2, 9}, l:totable())
    assert.equal(1, l:remove(2))
    assert.same({0, 2, 9}, l:totable())
    assert.has_error(function() l:remove(10) end)
    l:clear()
    assert.equal(0, #l)
    assert.is_nil(l:pop())
  end)

  it("iterates over a snapshot", function()
    local l = shared.list({"a", "b", "c"})
    local seen = {}
    for i, v in l:ipairs() do seen[i] = v end
    assert.same({"a", "b", "c"}, seen)
  end)

  it("prints its items", function()
    assert.equal('shared.list: {1, "two"}', tostring(shared.list({1, "two"})))
  end)

  it("refuses nil items, holes and untransferable values", function()
    local l = shared.list()
    assert.has_error(function() l:append(nil) end)
    assert.has_error(function() l:append() end)
    assert.has_error(function() l:append(coroutine.create(print)) end)
    assert.has_error(function() l:extend("x") end)
    assert.has_error(function() shared.list(5) end)
    assert.has_error(function() l.append(queue(), 1) end)
    assert.equal(0, #l)
  end)

  it("shows the children's appends to the parent", function()
    local l = shared.list()
    local ps = {}
    for w = 1, 3 do
      ps[w] = process.spawn(function() for i = 1, 100 do l:append(w * 1000 + i) end end)
    end
    for _, p in ipairs(ps) do p:join(30) end
    assert.equal(300, #l)
  end)

  it("gives exactly 300,000 distinct items after 3 processes x 100,000 appends", function()
    local l = shared.list()
    local ps = {}
    for w = 1, 3 do
      ps[w] = process.spawn(function() for i = 1, 100000 do l:append(w * 1000000 + i) end end)
    end
    for _, p in ipairs(ps) do p:join(120) end
    assert.equal(300000, #l)
    local seen, n = {}, 0
    for _, v in ipairs(l:totable()) do
      if not seen[v] then seen[v], n = true, n + 1 end
    end
    assert.equal(300000, n)
  end)

  it("works across threads", function()
    local l = shared.list()
    local ts = {}
    for w = 1, 3 do ts[w] = thread.new(function(ll) for i = 1, 1000 do ll:append(i) end end, l) end
    for _, t in ipairs(ts) do t:join(30) end
    assert.equal(3000, #l)
  end)

  it("keeps every acknowledged append when an appender is killed", function()
    local l = shared.list()
    local acked = shared.list()
    local p = process.spawn(function()
      local i = 0
      while true do
        i = i + 1
        l:append(i)
        acked[1] = i
      end
    end)
    concur.sleep(0.1)
    p:kill(9)
    pcall(p.join, p, 10)
    local n = acked[1]
    assert.is_true(n > 0)
    assert.is_true(#l >= n)
    for i = 1, n do assert.equal(i, l[i]) end
    l:append("still works")
    assert.equal("still works", l[#l])
  end)

  it("stores shared objects by reference: nested lists and queues", function()
    local outer, inner, q = shared.list(), shared.list(), queue()
    outer:append(inner)
    outer:append(q)
    outer[1]:append("deep")
    assert.equal("deep", inner[1])
    local p = process.spawn(function() outer[2]:put("via list") end)
    p:join(10)
    assert.equal("via list", q:get(1))
    assert.equal(inner, outer[1])
  end)

  it("is usable after the thread that made it ended", function()
    local l = thread.new(function()
      local ll = require("concur").shared.list({"made in a thread"})
      return ll
    end):join(10)
    assert.equal("made in a thread", l[1])
  end)

  it("does not grow shared memory over 10k create/drop cycles", function()
    local function cycle()
      for i = 1, 10000 do
        local l = shared.list({i, "x", {i}})
        l:append(shared.dict({k = i}))
      end
      collectgarbage()
      collectgarbage()
    end
    cycle()
    local before = concur.memory()
    cycle()
    assert.is_true(concur.memory() - before < 64 * 1024)
  end)

  it("reports arena exhaustion and leaves the list as it was", function()
    if not io.open("build/concur") then pending("build/concur not built") return end
    local f = io.popen("CONCUR_SHM=1M build/concur -e 'local l = shared.list() local s = string.rep(\"x\", 50000) local ok, err = pcall(function() for i = 1, 1000 do l:append(s) end end) print(err) print(#l > 0, l[#l] == s)' 2>&1")
    local out = f:read("*a")
    f:close()
    assert.matches("list:append: shared memory exhausted %([%d.]+ MiB in use of 1.0 MiB; set CONCUR_SHM%)", out)
    assert.matches("true\ttrue", out)
  end)
end)

describe("shared.dict", function()
  it("gets, sets and deletes", function()
    local d = shared.dict({a = 1})
    d.b = {x = 2}
    d[3] = "three"
    assert.equal(1, d.a)
    assert.equal(2, d.b.x)
    assert.equal("three", d[3])
    assert.equal(3, #d)
    d.a = nil
    assert.is_nil(d.a)
    assert.equal(2, d:delete("b").x)
    assert.equal(1, #d)
    assert.equal("default", d:get("missing", "default"))
  end)

  it("treats 1.0 and 1 as one key", function()
    local d = shared.dict()
    d[1.0] = "float"
    assert.equal("float", d[1])
    d[true] = "yes"
    assert.equal("yes", d[true])
  end)

  it("lists keys, values, items and a table copy", function()
    local d = shared.dict({x = 1, y = 2})
    local keys = d:keys()
    table.sort(keys)
    assert.same({"x", "y"}, keys)
    local vals = d:values()
    table.sort(vals)
    assert.same({1, 2}, vals)
    assert.equal(2, #d:items())
    assert.same({x = 1, y = 2}, d:totable())
    local seen = {}
    for k, v in d:pairs() do seen[k] = v end
    assert.same({x = 1, y = 2}, seen)
    d:clear()
    assert.equal(0, #d)
  end)

  it("lets a method name be read as a key through get", function()
    local d = shared.dict()
    d:set("keys", "a value")
    assert.equal("a value", d:get("keys"))
    assert.equal("function", type(d.keys))
  end)

  it("refuses bad keys", function()
    local d = shared.dict()
    assert.has_error(function() d[{}] = 1 end)
    assert.has_error(function() d:set(0 / 0, 1) end)
    assert.has_error(function() d:get(print) end)
  end)

  it("takes concurrent sets from processes and threads", function()
    local d = shared.dict()
    local ws = {}
    for w = 1, 4 do
      local spawn = (w % 2 == 0) and thread.new or process.spawn
      ws[w] = spawn(function(dd, base) for i = 1, 2000 do dd[base + i] = i end end, d, w * 10000)
    end
    for _, w in ipairs(ws) do w:join(60) end
    assert.equal(8000, #d)
    assert.equal(2000, d[42000])
  end)

  it("grows past many keys and keeps them all", function()
    local d = shared.dict()
    for i = 1, 20000 do d["k" .. i] = i end
    for i = 1, 20000, 2 do d["k" .. i] = nil end
    assert.equal(10000, #d)
    for i = 2, 20000, 2 do assert.equal(i, d["k" .. i]) end
  end)
end)

describe("tostring of shared lists and dicts", function()
  it("shows nested tables readably, not as table: 0x...", function()
    local l = shared.list({{1, 2}, {a = {b = "c"}}, "s"})
    assert.equal('shared.list: {{1, 2}, {a = {b = "c"}}, "s"}', tostring(l))
    local d = shared.dict()
    d.k = {1, {x = true}}
    assert.equal('shared.dict: {k = {1, {x = true}}}', tostring(d))
    d[1] = "one"
    d.k = nil
    d["two words"] = 2.5
    local s = tostring(d)
    assert.truthy(s:find('[1] = "one"', 1, true), s)
    assert.truthy(s:find('["two words"] = 2.5', 1, true), s)
  end)

  it("shows shared lists and dicts nested in each other, and stops at a cycle", function()
    local inner = shared.list({1})
    local d = shared.dict()
    d.l = inner
    assert.equal("shared.dict: {l = shared.list{1}}", tostring(d))
    local l = shared.list()
    l:append(l)
    l:append(2)
    assert.equal("shared.list: {shared.list{...}, 2}", tostring(l))
  end)

  it("stays short and whole for long strings, many items and deep nesting", function()
    local t = {}
    for i = 1, 30 do t[i] = string.rep("x", 300) end
    local s = tostring(shared.list(t))
    assert.truthy(#s < 3000, #s)
    assert.matches("%.%.%. %(30 items%)}$", s)
    local deep = {}
    local cur = deep
    for _ = 1, 50 do cur[1] = {} cur = cur[1] end
    assert.matches("{{{{{%.%.%.}}}}}}$", tostring(shared.list({deep})))
    local wide = {}
    for i = 1, 30 do wide[i] = {} for j = 1, 30 do wide[i][j] = j end end
    assert.truthy(#tostring(shared.dict({w = wide})) < 3000)
  end)

  it("escapes control bytes in strings", function()
    assert.equal('shared.list: {"a\\nb\\0c\\"\\\\"}', tostring(shared.list({'a\nb\0c"\\'})))
    assert.equal('shared.list: {"\\0001"}', tostring(shared.list({"\0" .. "1"})))
  end)
end)
