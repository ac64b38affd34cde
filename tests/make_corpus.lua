-- Writes the fuzz seed corpus: real messages from concur.encode.
-- usage: lua5.4 tests/make_corpus.lua tests/fuzz_corpus   (with the module on LUA_CPATH)
local concur = require "concur"
local dir = assert(arg[1], "usage: make_corpus.lua DIR")
local cyc = {1, 2, "three"}
cyc.self = cyc
local k = 7
local seeds = {
  {nil, true, false},
  {42, -1, 2^53, 3.25, -0.0, 1/0},
  {"", "hello", string.rep("x", 300), "\0\1\2\255"},
  {{1, 2, 3, x = {y = {z = "deep"}}}},
  {cyc},
  {setmetatable({}, {__index = {a = 1}})},
  {function(x) return x + k end},
  {function() return print end},
  {string.format, math.floor},
  {{[1.5] = "f", [true] = "b", [-3] = "n"}},
}
for i, vals in ipairs(seeds) do
  local f = assert(io.open(string.format("%s/seed%02d", dir, i), "wb"))
  f:write(concur.encode(table.unpack(vals, 1, 6)))
  f:close()
end
