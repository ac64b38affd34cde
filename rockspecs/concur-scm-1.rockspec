-- concur-scm-1.rockspec -- the concur module for the Lua that LuaRocks
-- builds for, from this checkout: build type make, so the Makefile's
-- `rock` and `rock-install` targets do the work with LuaRocks' standard
-- variables (CFLAGS, LUA_INCDIR; LIBDIR). Offline, from the source tree:
--   luarocks --lua-version=5.4 --tree=DIR make rockspecs/concur-scm-1.rockspec
rockspec_format = "3.0"
package = "concur"
version = "scm-1"
source = {
   url = "git+file://.",
}
description = {
   summary = "Real concurrency for Lua 5.4: processes, threads, shared lists and dicts, pipes, locks, queues",
   detailed = [[
concur gives Lua scripts forked processes and OS threads that run Lua in
parallel, with shared lists and dicts, queues, pipes and a family of locks
that work across both, in one shared memory arena.]],
}
supported_platforms = { "linux" }
dependencies = {
   "lua >= 5.4",
}
build = {
   type = "make",
   build_target = "rock",
   build_variables = {
      B = "build/rock",
      CFLAGS = "$(CFLAGS)",
      LUA_INCDIR = "$(LUA_INCDIR)",
   },
   install_target = "rock-install",
   install_variables = {
      B = "build/rock",
      LIBDIR = "$(LIBDIR)",
   },
}
