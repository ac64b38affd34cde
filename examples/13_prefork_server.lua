-- Lesson 13: a pre-forked web server: one listening socket, several processes
-- accepting on it, each answering real HTTP. Serves for a while, then stops.
-- usage: concur examples/13_prefork_server.lua [seconds=10] [workers=3] [port=8080]
package.path = "examples/?.lua;" .. package.path
local prefork = require "prefork"
local seconds = tonumber(arg[1]) or 10
local server = prefork.start{workers = tonumber(arg[2]) or 3, port = tonumber(arg[3]) or 8080}
print(string.format("listening on http://127.0.0.1:%d/ with worker pids %s for %gs",
  server.port, table.concat(server.pids, ", "), seconds))
require("concur").sleep(seconds)
local counts = server.stop()
for i, n in ipairs(counts) do print(string.format("worker %d served %d requests", server.pids[i], n)) end
