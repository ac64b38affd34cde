-- Lesson 12: HTTP requests one by one, then concurrently in threads
-- (LuaSocket in each thread). With no URLs given, it starts lesson 13's
-- pre-forked server on 127.0.0.1 with a per-request delay and fetches from it.
-- usage: concur examples/12_http_threads.lua [url ...]
--        URLS=6 DELAY=0.5 concur examples/12_http_threads.lua
package.path = "examples/?.lua;" .. package.path
local concur = require "concur"
local thread = concur.thread

local urls, server = {}, nil
for i = 1, #arg do urls[i] = arg[i] end
if #urls == 0 then
  server = require("prefork").start{workers = 3, delay = tonumber(os.getenv("DELAY")) or 0.5}
  for i = 1, tonumber(os.getenv("URLS")) or 6 do
    urls[i] = string.format("http://127.0.0.1:%d/page%d", server.port, i)
  end
end

local function fetch(url)
  local http = require "socket.http"
  local body, code = http.request(url)
  return code, body and #body or 0, body
end

local t0 = concur.clock()
for _, u in ipairs(urls) do fetch(u) end
local seq = concur.clock() - t0

t0 = concur.clock()
local ts = {}
for i, u in ipairs(urls) do ts[i] = thread.new(fetch, u) end
local ok = 0
for i, t in ipairs(ts) do
  local code, bytes, body = t:join(30)
  if code == 200 then ok = ok + 1 end
  print(string.format("%s -> %s, %d bytes%s", urls[i], tostring(code), bytes,
    body and (": " .. body:gsub("\n$", "")) or ""))
end
local par = concur.clock() - t0
print(string.format("one by one: %d requests in %.2fs", #urls, seq))
print(string.format("in threads: %d requests in %.2fs (%d ok)", #urls, par, ok))
if server then server.stop() end
