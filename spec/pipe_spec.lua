-- pipe: framed messages between threads and processes
local concur = require "concur"
local pipe, process, thread, queue = concur.pipe, concur.process, concur.thread, concur.queue

describe("pipe", function()
  it("gives two duplex ends", function()
    local a, b = pipe()
    a:send("ping")
    assert.equal("ping", b:recv(1))
    b:send("pong")
    assert.equal("pong", a:recv(1))
    assert.is_true(a.readable and a.writable)
  end)

  it("gives a one-way reader and writer with duplex = false", function()
    local r, w = pipe{duplex = false}
    assert.is_true(r.readable)
    assert.is_false(r.writable)
    assert.is_false(w.readable)
    w:send(1)
    assert.equal(1, r:recv(1))
    assert.has_error(function() r:send(1) end)
    assert.has_error(function() w:recv(0.01) end)
    local r2 = pipe.new{duplex = false}
    assert.is_false(r2.writable)
  end)

  it("carries every codec value", function()
    local a, b = pipe()
    local t = {1, "two", {three = 3}, true}
    t.self = t
    a:send(t)
    local got = b:recv(1)
    assert.equal(got, got.self)
    assert.equal(3, got[3].three)
    a:send(false)
    assert.is_false(b:recv(1))
    a:send(2.5)
    assert.equal(2.5, b:recv(1))
  end)

  it("carries a 64 MiB message intact", function()
    local a, b = pipe()
    local big = string.rep("0123456789abcdef", 4 * 1024 * 1024)
    local t = thread.new(function(e, s) e:send(s) return true end, a, big)
    local got = b:recv(30)
    assert.is_true(t:join(30))
    assert.equal(#big, #got)
    assert.is_true(got == big)
  end)

  it("times out a recv with nothing to read", function()
    local _, b = pipe()
    local v, why = b:recv(0.01)
    assert.is_nil(v)
    assert.equal("timeout", why)
    assert.is_false(b:poll(0.01))
  end)

  it("reports EOF as nil, 'closed' once the other end is closed", function()
    local a, b = pipe()
    a:send("last")
    a:close()
    assert.is_true(a:closed())
    assert.equal("last", b:recv(1))
    local v, why = b:recv(1)
    assert.is_nil(v)
    assert.equal("closed", why)
    assert.is_true(b:poll(0))
  end)

  it("raises on send into a pipe whose other end is closed, without SIGPIPE", function()
    local a, b = pipe()
    b:close()
    local ok, err = pcall(a.send, a, "into the void")
    assert.is_false(ok)
    assert.matches("the other end is closed", err)
    assert.has_error(function() b:send(1) end)
    assert.has_error(function() b:recv(0) end)
  end)

  it("connects a sender process and a receiver with an END sentinel", function()
    local r, w = pipe{duplex = false}
    local sender = process.spawn(function()
      for i = 1, 100 do w:send("message " .. i) end
      w:send("END")
    end)
    local got = {}
    while true do
      local v = r:recv(10)
      if v == "END" then break end
      got[#got + 1] = v
    end
    sender:join(10)
    assert.equal(100, #got)
    assert.equal("message 100", got[100])
  end)

  it("never interleaves two senders' messages", function()
    local r, w = pipe{duplex = false}
    local blob = {}
    for i = 1, 2 do blob[i] = string.rep(tostring(i), 100000) end
    local ps = {}
    for i = 1, 2 do
      ps[i] = process.spawn(function() for _ = 1, 50 do w:send(blob[i]) end end)
    end
    local counts = {0, 0}
    for _ = 1, 100 do
      local v = r:recv(30)
      local who = tonumber(v:sub(1, 1))
      assert.equal(blob[who], v)
      counts[who] = counts[who] + 1
    end
    for _, p in ipairs(ps) do p:join(30) end
    assert.same({50, 50}, counts)
  end)

  it("never interleaves or reorders two sender processes' small messages", function()
    local r, w = pipe{duplex = false}
    local N = 20000
    local ps = {}
    for k = 1, 2 do
      ps[k] = process.spawn(function() for i = 1, N do w:send(k * 1000000 + i) end end)
    end
    local last = {0, 0}
    for _ = 1, 2 * N do
      local v = r:recv(30)
      local k = math.floor(v / 1000000)
      local i = v - k * 1000000
      assert.equal(last[k] + 1, i)
      last[k] = i
    end
    for _, p in ipairs(ps) do p:join(30) end
    assert.same({N, N}, last)
  end)

  it("delivers the small messages a sender process sent before it exited", function()
    local a, b = pipe()
    local p = process.spawn(function() for i = 1, 5 do a:send(i) end end)
    p:join(10)
    for i = 1, 5 do assert.equal(i, b:recv(5)) end
    assert.equal("timeout", select(2, b:recv(0.01)))
  end)

  it("delivers small messages sent just before close, then reports closed", function()
    local a, b = pipe()
    for i = 1, 100 do a:send(i) end
    a:close()
    for i = 1, 100 do assert.equal(i, b:recv(1)) end
    assert.equal("closed", select(2, b:recv(1)))
  end)

  it("lets poll and concur.wait see a small message at once", function()
    local a, b = pipe()
    a:send(1)
    assert.is_true(b:poll())
    assert.same({b}, concur.wait({b}, 1))
    assert.equal(1, b:recv(0))
  end)

  it("wakes a receiver sleeping in recv or in concur.wait for one small message", function()
    local a, b = pipe()
    local t = thread.new(function(e) concur.sleep(0.05) e:send("one") concur.sleep(0.05) e:send("two") end, a)
    assert.equal("one", b:recv(10))
    assert.same({b}, concur.wait({b}, 10))
    assert.equal("two", b:recv(0))
    t:join(10)
  end)

  it("passes an end to a thread through a queue", function()
    local a, b = pipe()
    local q = queue()
    q:put(b)
    local t = thread.new(function(qq)
      local e = qq:get(5)
      e:send("from thread")
    end, q)
    assert.equal("from thread", a:recv(5))
    t:join(10)
  end)

  it("passes an end through another pipe", function()
    local a, b = pipe()
    local c, d = pipe()
    a:send(c)
    local c2 = b:recv(1)
    c2:send("via the inner pipe")
    assert.equal("via the inner pipe", d:recv(1))
  end)

  it("refuses an end in a process started before it was made", function()
    local q = queue()
    local p = process.spawn(function()
      local e = q:get(10)
      local ok, err = pcall(e.send, e, 1)
      return err
    end)
    local a = pipe()
    q:put(a)
    assert.matches("cannot be used in a process started before it was made", p:join(10))
  end)

  it("rejects bad input", function()
    local a = pipe()
    assert.has_error(function() a:send() end)
    assert.has_error(function() a:send(coroutine.create(print)) end)
    assert.has_error(function() a:recv(-1) end)
    assert.has_error(function() a.recv(queue()) end)
    assert.has_error(function() pipe(5) end)
  end)

  it("does not leak descriptors or memory over many pipes", function()
    local before = concur.memory()
    for _ = 1, 2000 do
      local a, b = pipe()
      a:send(1)
      b:recv(1)
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(concur.memory() - before < 256 * 1024)
    local a, b = pipe() -- still possible: no EMFILE
    a:send("ok")
    assert.equal("ok", b:recv(1))
  end)
end)
