-- concur.wait: which pipes and queues are ready
local concur = require "concur"
local pipe, queue, process, thread = concur.pipe, concur.queue, concur.process, concur.thread

describe("concur.wait", function()
  it("returns an empty table on timeout", function()
    local _, b = pipe()
    assert.same({}, concur.wait({b, queue()}, 0.02))
  end)

  it("returns the pipes with data", function()
    local a1, b1 = pipe()
    local _, b2 = pipe()
    a1:send(1)
    local ready = concur.wait({b1, b2}, 1)
    assert.equal(1, #ready)
    assert.equal(b1, ready[1])
  end)

  it("returns non-empty and closed queues", function()
    local q1, q2, q3 = queue(), queue(), queue()
    q1:put(1)
    q3:close()
    local ready = concur.wait({q1, q2, q3}, 1)
    assert.equal(2, #ready)
  end)

  it("wakes when another process writes", function()
    local a, b = pipe()
    local q = queue()
    local p = process.spawn(function() concur.sleep(0.05) a:send("x") end)
    local ready = concur.wait({q, b}, 10)
    assert.equal(b, ready[1])
    p:join(10)
  end)

  it("wakes on a single queue put from a thread", function()
    local q = queue()
    local t = thread.new(function(qq) concur.sleep(0.05) qq:put(1) end, q)
    local ready = concur.wait({q}, 10)
    assert.equal(q, ready[1])
    t:join(10)
  end)

  it("reports a pipe at EOF as ready", function()
    local a, b = pipe()
    a:close()
    assert.equal(b, concur.wait({b}, 1)[1])
  end)

  it("rejects bad input", function()
    assert.has_error(function() concur.wait("x") end)
    assert.has_error(function() concur.wait({1}) end)
    assert.has_error(function() concur.wait({concur.lock()}) end)
    assert.has_error(function() concur.wait({queue()}, -1) end)
  end)
end)

describe("concur.wait on workers", function()
  it("returns the process that ended, not the one still running", function()
    local gate = queue()
    local fast = process.spawn(function() return 1 end)
    local slow = process.spawn(function() return gate:get(20) end)
    local ready = concur.wait({slow, fast}, 10)
    assert.equal(1, #ready)
    assert.equal(fast, ready[1])
    assert.equal(1, fast:join(10))
    gate:put(2)
    assert.equal(slow, concur.wait({slow}, 10)[1])
    assert.equal(2, slow:join(10))
  end)

  it("treats a joined process as ready and does not reap it behind join's back", function()
    local p = process.spawn(function() return "r" end)
    assert.equal(p, concur.wait({p}, 10)[1])
    assert.equal(p, concur.wait({p}, 0)[1]) -- still ready, still joinable
    assert.equal("r", p:join(10))
    assert.equal(p, concur.wait({p}, 0)[1])
  end)

  it("returns a killed process as ended", function()
    local p = process.spawn(function() concur.sleep(30) end)
    p:kill("KILL")
    assert.equal(p, concur.wait({p}, 10)[1])
    assert.has_error(function() p:join(10) end)
  end)

  it("returns threads once done", function()
    local gate = queue()
    local t1 = thread.new(function() return 1 end)
    local t2 = thread.new(function(g) return g:get(20) end, gate)
    local ready = concur.wait({t2, t1}, 10)
    assert.equal(1, #ready)
    assert.equal(t1, ready[1])
    gate:put(2)
    assert.equal(t2, concur.wait({t2}, 10)[1])
    assert.equal(1, t1:join(10))
    assert.equal(2, t2:join(10))
  end)

  it("waits on a mix of a thread, a process, a queue and a pipe", function()
    local q, r, w = queue(), pipe()
    local gt, gp = queue(), queue()
    local t = thread.new(function(g) return g:get(20) end, gt)
    local p = process.spawn(function() return gp:get(20) end)
    local all = {t, p, q, r}
    assert.same({}, concur.wait(all, 0.02))
    -- each becomes ready in turn; the ones already seen leave the set
    local waiting = {t, p, q, r}
    local function expect(obj)
      local ready = concur.wait(waiting, 10)
      assert.same({obj}, ready)
      for i, o in ipairs(waiting) do if o == obj then table.remove(waiting, i) end end
    end
    gp:put(1)
    expect(p)
    w:send("x")
    expect(r)
    gt:put(1)
    expect(t)
    q:put(1)
    expect(q)
    local objs = all
    assert.equal(4, #concur.wait(objs, 10))
    assert.equal(1, p:join(10))
    assert.equal(1, t:join(10))
  end)

  it("gives whichever of four workers finishes first", function()
    local gates, ws = {}, {}
    for k = 1, 4 do
      gates[k] = queue()
      ws[k] = process.spawn(function() return gates[k]:get(20) end)
    end
    gates[3]:put(3)
    local ready = concur.wait(ws, 10)
    assert.equal(ws[3], ready[1])
    for k = 1, 4 do if k ~= 3 then gates[k]:put(k) end end
    for k = 1, 4 do assert.equal(k, ws[k]:join(10)) end
  end)

  it("refuses other values by position", function()
    local ok, err = pcall(concur.wait, {queue(), {}})
    assert.is_false(ok)
    assert.matches("bad object at %[2%] %(pipe end, queue, process or thread expected", err)
  end)
end)
