-- A forked child keeps a valid count on every shared object it can reach,
-- not only on the spawn function's arguments and upvalues: objects it
-- reaches through globals (or any other handle in the spawning state) stay
-- alive until the child is reaped, even when the parent drops them.
local concur = require "concur"
local process, thread, shared, queue, pipe = concur.process, concur.thread, concur.shared,
  concur.queue, concur.pipe

-- Objects made right after the parent drops one reuse its memory: a child
-- still using a freed object would write into one of these.
local function fresh(make, n)
  local t = {}
  for i = 1, n or 50 do t[i] = make() end
  return t
end

-- (busted gives each spec file its own global environment: the globals
-- below are assigned directly, so they land in the one the children see)
local function collect()
  collectgarbage()
  collectgarbage()
end

describe("process.spawn and objects reached through globals", function()
  after_each(function() FORK_L, FORK_Q, FORK_E, FORK_M = nil, nil, nil, nil end)

  it("keeps a shared list held in a global alive while the child uses it", function()
    FORK_L = shared.list()
    local go = queue()
    local p = process.spawn(function()
      assert(go:get(10), "no go signal")
      for i = 1, 5 do FORK_L:append("child" .. i) end
      return #FORK_L, FORK_L[1]
    end)
    FORK_L = nil
    collect()
    local news = fresh(shared.list)
    go:put(true)
    local n, first = p:join(10)
    assert.equal(5, n)
    assert.equal("child1", first)
    for i, l in ipairs(news) do
      assert.equal(0, #l, "the child's appends landed in new list " .. i)
    end
  end)

  it("keeps a queue held in a global alive while the child uses it", function()
    FORK_Q = queue()
    local go = queue()
    local p = process.spawn(function()
      assert(go:get(10), "no go signal")
      FORK_Q:put("from the child")
      return FORK_Q:len()
    end)
    FORK_Q = nil
    collect()
    local news = fresh(queue)
    go:put(true)
    assert.equal(1, p:join(10))
    for i, q in ipairs(news) do
      assert.equal(0, q:len(), "the child's put landed in new queue " .. i)
    end
  end)

  it("keeps a pipe end held in a global alive while the child uses it", function()
    local b
    FORK_E, b = pipe()
    local go = queue()
    local p = process.spawn(function()
      assert(go:get(10), "no go signal")
      FORK_E:send("from the child")
      return true
    end)
    FORK_E = nil
    collect()
    local news = fresh(function() return {pipe()} end, 25)
    go:put(true)
    assert.is_true(p:join(10))
    assert.equal("from the child", b:recv(10))
    for i, ends in ipairs(news) do
      assert.is_false(ends[2]:poll(0), "the child's message landed in new pipe " .. i)
    end
  end)

  it("keeps what a grandchild reaches through its parent's globals alive", function()
    FORK_L = shared.list() -- the parent's, and one the child makes: both reach the grandchild
    local c = process.spawn(function()
      FORK_M = shared.list()
      local go = queue()
      local g = process.spawn(function()
        assert(go:get(10), "no go signal")
        for i = 1, 5 do FORK_L:append(i) FORK_M:append(i) end
        return #FORK_L, #FORK_M
      end)
      FORK_M = nil
      collect()
      local news = fresh(shared.list)
      go:put(true)
      local nl, nm = g:join(10)
      local hit = 0
      for _, l in ipairs(news) do hit = hit + #l end
      return nl, nm, hit
    end)
    FORK_L = nil
    collect()
    local mine = fresh(shared.list)
    local nl, nm, hit = c:join(20)
    assert.equal(5, nl)
    assert.equal(5, nm)
    assert.equal(0, hit, "the grandchild's appends landed in the child's new lists")
    for i, l in ipairs(mine) do
      assert.equal(0, #l, "the grandchild's appends landed in new list " .. i)
    end
  end)

  it("does not make a parent's join wait for a grandchild its child left running", function()
    local go, done = queue(), queue()
    local c = process.spawn(function()
      process.spawn(function() go:get(10) done:put(true) end)
      return true
    end)
    assert.is_true(c:join(5)) -- before the fix: "timeout", the grandchild held the result pipe
    go:put(true)
    assert.is_true(done:get(10))
  end)

  it("keeps what a child spawned from a thread reaches through that thread's globals", function()
    local t = thread.new(function(go)
      local process, shared = require("concur").process, require("concur").shared
      FORK_T = shared.list()
      local p = process.spawn(function()
        assert(go:get(10), "no go signal")
        for i = 1, 5 do FORK_T:append(i) end
        return #FORK_T
      end)
      FORK_T = nil
      collectgarbage()
      collectgarbage()
      local news = {}
      for i = 1, 50 do news[i] = shared.list() end
      go:put(true)
      local n = p:join(10)
      local hit = 0
      for i = 1, 50 do hit = hit + #news[i] end
      return n, hit
    end, queue())
    local n, hit = t:join(20)
    assert.equal(5, n)
    assert.equal(0, hit, "the child's appends landed in the thread's new lists")
  end)

  it("holds the objects until the child is reaped, then the parent's memory returns", function()
    local go = queue()
    go:put(false) -- the queue's storage is allocated by its first put
    go:get()
    collect()
    local base = concur.memory()
    FORK_L = shared.list{string.rep("x", 1024 * 1024)}
    local p = process.spawn(function()
      assert(go:get(10), "no go signal")
      return #FORK_L[1]
    end)
    FORK_L = nil
    collect()
    assert.is_true(concur.memory() > base + 1000 * 1000, "the list was freed under the child")
    go:put(true)
    assert.equal(1024 * 1024, p:join(10))
    collect()
    assert.is_true(concur.memory() < base + 64 * 1024, "the list was not freed after the join")
  end)

  it("gives the objects back when the child was killed", function()
    local go = queue()
    collect()
    local base = concur.memory()
    FORK_L = shared.list{string.rep("y", 1024 * 1024)}
    local p = process.spawn(function()
      go:get(30)
      return #FORK_L
    end)
    FORK_L = nil
    collect()
    assert.is_true(concur.memory() > base + 1000 * 1000, "the list was freed under the child")
    p:kill("KILL")
    local ok, err = pcall(p.join, p, 10)
    assert.is_false(ok)
    assert.matches("SIGKILL", err)
    collect()
    assert.is_true(concur.memory() < base + 64 * 1024, "the list was not freed after the kill")
  end)
end)

describe("process.spawn and objects reached only through what it is given", function()
  -- nothing given to spawn is encoded (it counted the arguments' objects
  -- once); the count spawn takes on every handle of the state covers them

  it("keeps a list passed only as an argument alive after the parent drops it", function()
    local go = queue()
    local p = process.spawn(function(l)
      assert(go:get(10), "no go signal")
      for i = 1, 5 do l:append(i) end
      return #l
    end, shared.list())
    collect()
    local news = fresh(shared.list)
    go:put(true)
    assert.equal(5, p:join(10))
    for i, l in ipairs(news) do assert.equal(0, #l, "the child's appends landed in new list " .. i) end
  end)

  it("keeps a list captured only in a suspended coroutine alive", function()
    local go = queue()
    local co = coroutine.create(function()
      local l = shared.list()
      coroutine.yield()
      for i = 1, 5 do l:append(i) end
      return #l
    end)
    coroutine.resume(co)
    local p = process.spawn(function(c)
      assert(go:get(10), "no go signal")
      return select(2, coroutine.resume(c))
    end, co)
    co = nil
    collect()
    local news = fresh(shared.list)
    go:put(true)
    assert.equal(5, p:join(10))
    for i, l in ipairs(news) do assert.equal(0, #l, "the child's appends landed in new list " .. i) end
  end)

  it("keeps a list in a table nested deeper than a message may be alive", function()
    local go = queue()
    local deep = {}
    local t = deep
    for _ = 1, 300 do t.next = {} t = t.next end
    t.list = shared.list()
    t = nil
    local p = process.spawn(function(d)
      assert(go:get(10), "no go signal")
      while d.next do d = d.next end
      for i = 1, 5 do d.list:append(i) end
      return #d.list
    end, deep)
    deep = nil
    collect()
    local news = fresh(shared.list)
    go:put(true)
    assert.equal(5, p:join(10))
    for i, l in ipairs(news) do assert.equal(0, #l, "the child's appends landed in new list " .. i) end
  end)
end)
