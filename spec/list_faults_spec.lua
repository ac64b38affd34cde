-- shared.list under SIGKILL: a process killed inside any mutation leaves the
-- list as it was before or after that operation (a leaked block at most).
local concur = require "concur"
local shared, process, lock = concur.shared, concur.process, concur.lock

local N, ROUNDS = 20000, 20

-- long enough that every item lives in its own arena block (not inline)
local function item(i) return string.format("item-%06d-%s", i, string.rep("x", 20)) end

local function fresh()
  local t = {}
  for i = 1, N do t[i] = item(i) end
  local l = shared.list()
  l:extend(t)
  return l
end

-- the kill lands 5..50 ms into the mutator's loop, a different point each round
local function delay(round) return (5 + (round - 1) * 45 / (ROUNDS - 1)) / 1000 end

-- Start mutate(l) in a child, let it run for the round's delay, SIGKILL it.
local function kill_during(l, round, mutate)
  local started = lock.event()
  local p = process.spawn(function()
    started:set()
    mutate(l)
  end)
  assert.is_true(started:wait(10), "the mutator did not start")
  concur.sleep(delay(round))
  p:kill(9)
  local ok, err = pcall(p.join, p, 10)
  assert.is_false(ok)
  assert.matches("killed by SIGKILL", err)
end

-- Inspect the list in a child, so that a torn list (a wild pointer, a
-- double free) fails the assertion instead of crashing the spec runner.
-- extra(v) says whether a value that is not an original item is allowed.
local function probe(l, round, extra)
  local p = process.spawn(function()
    local n = #l
    local ok, t = pcall(l.totable, l)
    if not ok then return {err = "totable: " .. tostring(t)} end
    local seen, extras, dups = {}, {}, 0
    for _, v in ipairs(t) do
      if seen[v] then dups = dups + 1 end
      seen[v] = true
    end
    local missing = 0
    for i = 1, N do if not seen[item(i)] then missing = missing + 1 end end
    for v in pairs(seen) do
      if type(v) ~= "string" or not v:match("^item%-%d%d%d%d%d%d%-x+$") then extras[#extras + 1] = v end
    end
    for _, v in ipairs(extras) do
      if not extra(v) then return {err = "unexpected item " .. tostring(v)} end
    end
    return {len = n, items = #t, dups = dups, missing = missing, extras = #extras}
  end)
  local ok, r = pcall(p.join, p, 30)
  -- clear frees every block: in a child too, so that a double free shows as
  -- a failed assertion (SIGABRT) rather than taking the runner down; and
  -- before any assertion, so that a torn list is not freed again by the
  -- runner's garbage collector (clear commits the empty list first)
  local c = process.spawn(function() l:clear() return #l end)
  local cok, cr = pcall(c.join, c, 30)
  assert.is_true(ok, "round " .. round .. ": probe: " .. tostring(r))
  assert.is_nil(r.err, "round " .. round .. ": " .. tostring(r.err))
  assert.is_true(cok, "round " .. round .. ": clear: " .. tostring(cr))
  assert.equal(0, cr)
  assert.equal(0, #l)
  return r
end

describe("shared.list under SIGKILL", function()
  it("keeps every item exactly once when an insert/remove loop is killed", function()
    for round = 1, ROUNDS do
      local l = fresh()
      kill_during(l, round, function(ll)
        local s = "inserted-" .. string.rep("y", 20)
        while true do
          ll:insert(1, s)
          ll:remove(1)
        end
      end)
      local r = probe(l, round, function(v) return v == "inserted-" .. string.rep("y", 20) end)
      assert.is_true(r.len == N or r.len == N + 1, "round " .. round .. ": #l = " .. r.len)
      assert.equal(r.len, r.items, "round " .. round .. ": #l = " .. r.len .. ", totable has " .. r.items)
      assert.equal(0, r.dups, "round " .. round .. ": duplicated items")
      assert.equal(0, r.missing, "round " .. round .. ": lost items")
      assert.equal(r.len - N, r.extras)
    end
  end)

  it("keeps every item exactly once when a remove/insert in the middle is killed", function()
    for round = 1, ROUNDS do
      local l = fresh()
      kill_during(l, round, function(ll)
        local k = 0
        while true do
          local i = 1 + (k * 7919) % N
          k = k + 1
          local v = ll:remove(i) -- the list is N-1 long until the insert commits
          ll:insert(i, v)
        end
      end)
      local r = probe(l, round, function() return false end)
      assert.is_true(r.len == N or r.len == N - 1, "round " .. round .. ": #l = " .. r.len)
      assert.equal(r.len, r.items, "round " .. round .. ": #l = " .. r.len .. ", totable has " .. r.items)
      assert.equal(0, r.dups, "round " .. round .. ": duplicated items")
      -- killed between the remove and the insert: that one item is with the dead process
      assert.equal(N - r.len, r.missing, "round " .. round .. ": lost items")
    end
  end)

  it("never shows a torn item when l[i] = v in a loop is killed", function()
    -- the values alternate between kinds stored differently: a block, an inline
    -- short string, an integer, a table
    local values = {"replacement-" .. string.rep("z", 30), "short", 42, {k = "v"}}
    for round = 1, ROUNDS do
      local l = fresh()
      kill_during(l, round, function(ll)
        local k = 0
        while true do
          local i = 1 + (k * 7919) % N
          ll[i] = values[1 + k % #values]
          k = k + 1
        end
      end)
      local r = probe(l, round, function(v)
        return v == values[1] or v == "short" or v == 42 or (type(v) == "table" and v.k == "v")
      end)
      assert.equal(N, r.len)
      assert.equal(N, r.items)
    end
  end)

  it("keeps an append/pop loop whole when it is killed", function()
    for round = 1, ROUNDS, 4 do
      local l = fresh()
      kill_during(l, round, function(ll)
        local s = "inserted-" .. string.rep("y", 20)
        while true do
          ll:append(s)
          ll:extend({s, s})
          ll:pop()
          ll:pop()
          ll:pop()
        end
      end)
      local r = probe(l, round, function(v) return v == "inserted-" .. string.rep("y", 20) end)
      assert.is_true(r.len >= N and r.len <= N + 3, "round " .. round .. ": #l = " .. r.len)
      assert.equal(0, r.missing)
    end
  end)
end)
