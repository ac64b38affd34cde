-- Lesson 6: a pipe between a sender and a receiver, ended by an "END" sentinel.
-- usage: concur examples/06_pipe.lua [messages=10]
local concur = require "concur"
local process, pipe = concur.process, concur.pipe
local n = tonumber(arg[1]) or 10

local reader, writer = pipe{duplex = false}
local sender = process.spawn(function()
  for i = 1, n do writer:send("message " .. i) end
  writer:send("END")
end)
local receiver = process.spawn(function()
  local got = 0
  while true do
    local msg = reader:recv()
    if msg == "END" then break end
    got = got + 1
    print("received: " .. msg)
  end
  return got
end)
sender:join()
print(string.format("receiver stopped at END after %d messages", receiver:join()))
