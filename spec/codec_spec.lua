-- the codec, seen through thread.new (values out and back)
local concur = require "concur"
local thread = concur.thread
local luajit = type(jit) == "table"

local function roundtrip(...)
  return thread.new(function(...) return ... end, ...):join(10)
end

describe("codec", function()
  it("carries nil, booleans, numbers and strings with any bytes", function()
    local a, b, c, d, e, f = roundtrip(nil, true, false, 1.5, "a\0b\255", -0.0)
    assert.is_nil(a)
    assert.is_true(b)
    assert.is_false(c)
    assert.equal(1.5, d)
    assert.equal("a\0b\255", e)
    assert.equal(0, f)
  end)

  it("keeps integers integers (Lua 5.4)", function()
    if luajit then pending("LuaJIT has one number type") return end
    local i, big, neg = roundtrip(3, math.maxinteger, math.mininteger)
    assert.equal("integer", math.type(i))
    assert.equal(math.maxinteger, big)
    assert.equal(math.mininteger, neg)
    assert.equal("float", math.type((roundtrip(3.0))))
  end)

  it("carries huge, tiny and special floats", function()
    local a, b, c = roundtrip(1e308, 5e-324, 1 / 0)
    assert.equal(1e308, a)
    assert.equal(5e-324, b)
    assert.equal(1 / 0, c)
    local nan = roundtrip(0 / 0)
    assert.is_true(nan ~= nan)
  end)

  it("carries nested tables with cycles and shared subtables", function()
    local shared = {"s"}
    local t = {a = shared, b = shared, list = {1, 2, 3}, [10] = "ten", [2.5] = "x"}
    t.me = t
    local r = roundtrip(t)
    assert.equal(r, r.me)
    assert.equal(r.a, r.b)
    assert.same({1, 2, 3}, r.list)
    assert.equal("ten", r[10])
    assert.equal("x", r[2.5])
  end)

  it("keeps metatables", function()
    local mt = {__index = {hello = function() return "hi" end}}
    local r = roundtrip(setmetatable({}, mt))
    assert.equal("hi", r.hello())
  end)

  it("carries Lua functions with their upvalues", function()
    local k = 10
    local add = function(x) return x + k end
    local f = roundtrip(add)
    assert.equal(15, f(5))
  end)

  it("carries a function whose upvalues are a table then a module", function()
    -- regression: helper tables made mid-encode shifted the upvalue stack
    local data, process = {1}, concur.process
    local f = roundtrip(function() return data[1], type(process.pid) end)
    local a, b = f()
    assert.equal(1, a)
    assert.equal("function", b)
  end)

  it("sends globals as the receiver's globals", function()
    local f = roundtrip(function() return type(print) end)
    assert.equal("function", f())
  end)

  it("carries C functions of loaded modules and refuses others", function()
    local f = roundtrip(string.upper)
    assert.equal(string.upper, f)
    local ok, err = pcall(thread.new, function() end, coroutine.create(print))
    assert.is_false(ok)
    assert.matches("cannot send a coroutine", err)
  end)

  it("refuses userdata that is not concur's, naming where it was", function()
    local ok, err = pcall(thread.new, function() end, "x", {conn = {sock = io.stdout}})
    assert.is_false(ok)
    assert.matches('cannot send a userdata that is not concur\'s %(argument 3, field "conn.sock"%)', err)
  end)

  it("names numeric keys in refusal paths", function()
    local ok, err = pcall(thread.new, function() end, {{}, {io.stdout}})
    assert.is_false(ok)
    assert.matches('field "%[2%]%.%[1%]"', err)
  end)

  it("carries a large table", function()
    local t = {}
    for i = 1, 100000 do t[i] = i end
    local r = roundtrip(t)
    assert.equal(100000, #r)
    assert.equal(54321, r[54321])
  end)

  it("refuses nesting deeper than its limit without crashing", function()
    local t = {}
    local cur = t
    for _ = 1, 500 do cur.next = {} cur = cur.next end
    local ok, err = pcall(thread.new, function() end, t)
    assert.is_false(ok)
    assert.matches("nested too deeply", err)
  end)
end)

describe("concur.encode / concur.decode", function()
  it("round-trips values through a string", function()
    local s = concur.encode(1, "two", {3, x = {4}})
    assert.equal("string", type(s))
    local a, b, c = concur.decode(s)
    assert.equal(1, a)
    assert.equal("two", b)
    assert.same({3, x = {4}}, c)
  end)

  it("rejects every truncation of a message with an error, never a crash", function()
    local k = 3
    local s = concur.encode({1, 2.5, "str", {nested = true}}, function() return k end, string.rep)
    for len = 0, #s - 1 do
      local ok, err = pcall(concur.decode, s:sub(1, len), {trust = true})
      assert.is_false(ok)
      assert.matches("corrupt message", err)
    end
  end)

  it("survives random corruption of messages", function()
    local s = concur.encode({1, 2, {3, {4, "five"}}, k = "v"}, function(x) return x end)
    math.randomseed(1234)
    for _ = 1, 2000 do
      local i = math.random(1, #s)
      local bad = s:sub(1, i - 1) .. string.char(math.random(0, 255)) .. s:sub(i + 1)
      pcall(concur.decode, bad, {trust = true}) -- must return or raise; a crash fails the run
      pcall(concur.decode, bad)
    end
  end)

  it("refuses shared objects in a string", function()
    if not concur.queue then pending("queue not built") return end
    assert.has_error(function() concur.encode(concur.queue()) end)
  end)

  it("rejects a non-string", function()
    assert.has_error(function() concur.decode(nil) end)
  end)

  it("refuses a message of an older or newer format, naming both versions", function()
    local s = concur.encode({1, "two"})
    -- the header's second 32-bit word (little-endian) holds the format number
    for _, forged in ipairs({0, 99}) do
      local bad = s:sub(1, 4) .. string.char(forged, 0, 0, 0) .. s:sub(9)
      for _, opts in ipairs({{}, {trust = true}}) do
        local ok, err = pcall(concur.decode, bad, opts)
        assert.is_false(ok)
        assert.matches("^concur.decode: message format " .. forged .. ", this build reads %d+$", err)
      end
    end
  end)
end)

describe("codec refusals of concur's own handles", function()
  it("says a process handle cannot be sent, and why", function()
    local p = concur.process.spawn(function() end)
    local ok, err = pcall(thread.new, function() end, p)
    p:join(10)
    assert.is_false(ok)
    assert.matches("cannot send a process handle %(it belongs to the process that spawned it; " ..
      "send its pid, or results through a queue%)", err)
    assert.matches("argument 2", err)
  end)

  it("says a thread handle cannot be sent, and why", function()
    local t = thread.new(function() end)
    local ok, err = pcall(concur.encode, {t = t})
    t:join(10)
    assert.is_false(ok)
    assert.matches("cannot send a userdata that is a thread handle %(only the state that started it can join it; " ..
      "send results through a queue%)", err)
  end)

end)
