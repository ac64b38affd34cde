-- embed.lua NAME IN OUT: write IN as a C string constant NAME (a header),
-- so a Lua file can be compiled into the library (Makefile: $(B)/gen/).
local name, inp, out = arg[1], arg[2], arg[3]
local f = assert(io.open(inp, "rb"))
local src = f:read("a")
f:close()
local parts = {}
for line in (src .. "\n"):gmatch("(.-)\n") do
  parts[#parts + 1] = '"' .. line:gsub('[\\"\r\t%c]', function(c)
    return ("\\%03o"):format(c:byte())
  end) .. '\\n"'
end
local o = assert(io.open(out, "wb"))
o:write("/* generated from ", inp, " by scripts/embed.lua: do not edit */\n")
o:write("static const char ", name, "[] =\n", table.concat(parts, "\n"), ";\n")
o:close()
