-- A pre-forked HTTP server (used by lessons 12 and 13): the listening socket
-- is bound once, then several processes accept on it. A LuaSocket object
-- cannot be sent to another process (the codec refuses userdata), but a
-- forked child is a copy of its parent: it finds the socket in the globals
-- it inherited, with the same file descriptor, and the kernel hands each
-- connection to one of the processes waiting in accept().
local concur = require "concur"
local socket = require "socket"
local process, lock = concur.process, concur.lock

local M = {}

local function answer(client, delay)
  client:settimeout(5)
  local line = client:receive("*l")
  repeat local h = client:receive("*l") until not h or h == ""
  if delay > 0 then concur.sleep(delay) end
  local body = string.format("served by pid %d: %s\n", process.pid(), line or "?")
  client:send("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #body ..
    "\r\nConnection: close\r\n\r\n" .. body)
  client:close()
end

-- start{workers=, delay=, port=} -> {port=, stop=function}
function M.start(opts)
  PREFORK_SERVER = assert(socket.bind("127.0.0.1", opts.port or 0)) -- a global: children inherit it
  PREFORK_SERVER:settimeout(0.1)
  local _, port = PREFORK_SERVER:getsockname()
  local stop = lock.event()
  local workers = {}
  for i = 1, opts.workers or 3 do
    workers[i] = process.spawn(function(done, delay)
      local served = 0
      while not done:is_set() do
        local client = PREFORK_SERVER:accept()
        if client then
          answer(client, delay)
          served = served + 1
        end
      end
      return served
    end, stop, opts.delay or 0)
  end
  return {
    port = tonumber(port),
    pids = (function() local t = {} for i, w in ipairs(workers) do t[i] = w.pid end return t end)(),
    stop = function()
      stop:set()
      local counts = {}
      for i, w in ipairs(workers) do counts[i] = w:join(10) end
      PREFORK_SERVER:close()
      return counts
    end,
  }
end

return M
