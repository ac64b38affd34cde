-- Writes the seed corpus of tests/fuzz_encode.c: recipes (not messages) for
-- the values the encoder must get right. Plain Lua, no module needed.
-- usage: lua5.4 tests/make_encode_corpus.lua DIR        (make fuzz does it)
--
-- The recipe grammar, as fuzz_encode.c reads it (one byte picks, missing
-- bytes read as 0):
--   input  := count%6 value*
--   value  := kind%14 ...          (past depth 8 or 256 values: kind%7)
--     0 nil | 1 boolean (kind & 16) | 2 integer | 3 float | 4,5 string
--     6 an earlier table/closure: index%n | 7,8,9 table | 10,11 closure
--     12 C function: index%8 | 13 module table or _G: index%7
--   integer := b<128: special[b%12] | b>=128: 8 bytes big-endian
--   float   := b<64: special[b%10] | b<96: NaN (odd b: -NaN) | 8 raw bytes
--   string  := len (255: 255 + 16*next byte) bytes
--   table   := narr%8 nhash%8 value*narr (value value)*nhash m
--              (m%4 == 0: a metatable value follows)
--   closure := template%5 value-per-upvalue-after-the-first
--              (templates: 0 none, 1 one, 2 two, 3 one and _ENV, 4 itself)
local dir = assert(arg[1], "usage: make_encode_corpus.lua DIR")

local NIL, INT, FLOAT, STR, REF, TABLE, CLOSURE, CFUNC, MODULE = 0, 2, 3, 4, 6, 7, 10, 12, 13
local TRUE = 29 -- 29 % 14 == 1 (a boolean) and 29 & 16 ~= 0 (true)
local function str(s) return string.char(STR, #s) .. s end
local function int8(n) return string.char(INT, 200) .. string.pack(">i8", n) end
local function float8(x) return string.char(FLOAT, 200) .. string.pack(">d", x) end
local function tbl(arr, hash, meta) -- hash: list of {key, value}
  local out = {string.char(TABLE, #arr, #hash)}
  for _, v in ipairs(arr) do out[#out + 1] = v end
  for _, kv in ipairs(hash) do out[#out + 1] = kv[1] .. kv[2] end
  out[#out + 1] = meta and (string.char(0) .. meta) or string.char(1)
  return table.concat(out)
end
local function ref(i) return string.char(REF, i) end -- i: 0-based, in making order

local seeds = {
  -- scalars: integers at the edges, floats that are not what they seem
  string.char(5) .. string.char(INT, 3) .. string.char(INT, 4) .. int8(-1) .. int8(1 << 62)
    .. string.char(TRUE),
  string.char(5) .. string.char(FLOAT, 64) .. string.char(FLOAT, 65) .. string.char(FLOAT, 1)
    .. string.char(FLOAT, 2) .. float8(2 ^ 63),
  string.char(2) .. string.char(FLOAT, 200) .. "\x7f\xf8\x00\x00\x00\x00\x00\x01" .. float8(-0.0),
  -- strings of any bytes, empty, long
  string.char(3) .. str("") .. str("\0\1\2\255\254zero\0") .. string.char(STR, 255, 40),
  -- a table that contains itself, in its array and in its hash part
  string.char(1) .. tbl({ref(0)}, {{str("self"), ref(0)}}),
  -- one subtable twice, at the top level and inside another table
  string.char(3) .. tbl({}, {}) .. ref(0) .. tbl({ref(0), ref(0)}, {{str("again"), ref(0)}}),
  -- tables as keys, a metatable shared by two tables and holding one of them
  string.char(2) .. tbl({}, {{tbl({str("k")}, {}), string.char(TRUE)}})
    .. tbl({}, {}, tbl({}, {{str("__index"), ref(0)}})),
  -- closures: upvalues holding the closure itself, a table, another closure
  string.char(1) .. string.char(CLOSURE, 1) .. ref(0),
  string.char(2) .. string.char(CLOSURE, 2) .. tbl({ref(0)}, {}) .. string.char(CLOSURE, 4)
    .. ref(1),
  string.char(1) .. string.char(CLOSURE, 3) .. str("uses a global"),
  -- C functions and module tables, _G among them
  string.char(5) .. string.char(CFUNC, 0) .. string.char(CFUNC, 6) .. string.char(MODULE, 0)
    .. string.char(MODULE, 6) .. tbl({string.char(CFUNC, 2)}, {{string.char(MODULE, 1), str("m")}}),
  -- deep nesting, past the recipe's own depth limit
  string.char(1) .. string.rep(string.char(TABLE, 1, 0), 12) .. string.char(NIL),
  -- nils among the values
  string.char(4) .. string.char(NIL) .. str("x") .. string.char(NIL) .. string.char(NIL),
}

for i, s in ipairs(seeds) do
  local f = assert(io.open(string.format("%s/seed%02d", dir, i), "wb"))
  f:write(s)
  f:close()
end
print(string.format("wrote %d seeds to %s", #seeds, dir))
