/*
 * unload.c -- the module loaded and unloaded by a host that goes on: a
 * lua_State requires concur (build/lua5.4/concur.so, given as argv[1]'s
 * directory pattern), starts and joins threads, and is closed, which
 * dlcloses the module. The OS threads that ran those threads wait parked
 * for more work; they must all have ended by then, or one would wake in
 * code that is gone. Exits 0 when only this thread is left and the module
 * is unloaded. Built and run by `make test`.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

static int threads(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: unload build/lua5.4/concur.so\n");
        return 2;
    }
    char cpath[4096];
    snprintf(cpath, sizeof cpath, "package.cpath = '%.*s?.so'", (int)(strrchr(argv[1], '/') + 1 - argv[1]), argv[1]);
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, cpath) != LUA_OK ||
        luaL_dostring(L, "local thread = require('concur').thread\n"
                         "for i = 1, 20 do assert(thread.new(function(x) return x end, i):join(10) == i) end\n"
                         "local ts = {}\n"
                         "for i = 1, 6 do ts[i] = thread.new(function() require('concur').sleep(0.02) end) end\n"
                         "for i = 1, 6 do ts[i]:join(10) end") != LUA_OK) {
        fprintf(stderr, "unload: %s\n", lua_tostring(L, -1));
        return 1;
    }
    int before = threads();
    lua_close(L); /* the package library dlcloses concur.so */
    int after = threads();
    if (dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD)) {
        fprintf(stderr, "unload: %s is still loaded after lua_close\n", argv[1]);
        return 1;
    }
    if (after != 1) {
        fprintf(stderr, "unload: %d threads left after the module was unloaded (%d before)\n", after, before);
        return 1;
    }
    puts("unload: ok");
    return 0;
}
