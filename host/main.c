/*
 * main.c -- the concur command: a Lua 5.4 interpreter with concur's
 * primitives as globals.
 *
 * It behaves like Debian's lua5.4 for every flag and convention (script and
 * `arg` table, -e -l -i -v -E -W, `-`, `--`, LUA_INIT / LUA_INIT_5_4, exit
 * codes, "concur: msg" plus a traceback on stderr), so tools that drive
 * lua5.4 -- busted --lua=build/concur among them -- drive concur too. The
 * structure follows lua.c's (argument scan first, then the libraries, then
 * LUA_INIT, then the actions in order) because that order is observable.
 *
 * Ctrl-C and SIGTERM: as in lua.c, the handler sets a hook that raises
 * "interrupted!" ("terminated!" for SIGTERM) at the next Lua instruction; it
 * also sets the main thread's concur interruption flag, so a blocking wait
 * (q:get(), p:join()) returns too. A second signal while the first is
 * pending kills the process, as the default action would.
 *
 * The state is always closed, also after an error: that is when unjoined
 * threads and processes are joined -- or, when the script failed or was
 * signalled, stopped (concur_stop_on_close: threads cancelled, processes
 * sent SIGTERM then SIGKILL), with one line on stderr naming them. While
 * the state closes, Ctrl-C or SIGTERM stops what it still waits for (after
 * the REPL, so does a second Ctrl-D). After
 * a signal the host ends by that signal (status 130 or 143 in a shell).
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "../include/concur.h"
#include "host.h"

static const char *progname = "concur";
static lua_State *globalL;

/* ---- Ctrl-C and SIGTERM ---- */

enum { IDLE, RUNNING, CLOSING };
static volatile sig_atomic_t phase, got_signal;

static void stop_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, got_signal == SIGTERM ? "terminated!" : "interrupted!");
}

static void on_signal(int sig) {
    signal(sig, SIG_DFL); /* a second one kills, as by default */
    if (phase == IDLE) { /* no Lua running, nothing to wait for: default */
        raise(sig);
        return;
    }
    got_signal = sig;
    concur_interrupt(1);
    if (phase == RUNNING)
        lua_sethook(globalL, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* After the REPL's Ctrl-D the state closes and may wait for workers: a
 * second Ctrl-D (end of input on the terminal) stops them, like Ctrl-C. */
static int repl_ran;

static void *watch_eof(void *arg) {
    (void)arg;
    char buf[256];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR)) break;
    }
    concur_interrupt(1);
    return NULL;
}

static void watch_second_eof(void) {
    if (!repl_ran || !isatty(0)) return;
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, watch_eof, NULL) != 0) { /* Ctrl-C still works */ }
    pthread_attr_destroy(&a);
}

void host_interrupt_reset(void) {
    concur_interrupt(0);
    if (got_signal != SIGTERM) got_signal = 0;
}

int host_terminated(void) { return got_signal == SIGTERM; }

/* ---- messages ---- */

static void print_usage(const char *badoption) {
    fprintf(stderr, "%s: ", progname);
    if (badoption[1] == 'e' || badoption[1] == 'l')
        fprintf(stderr, "'%s' needs argument\n", badoption);
    else
        fprintf(stderr, "unrecognized option '%s'\n", badoption);
    fprintf(stderr,
            "usage: %s [options] [script [args]]\n"
            "Available options are:\n"
            "  -e stat   execute string 'stat'\n"
            "  -i        enter interactive mode after executing 'script'\n"
            "  -l mod    require library 'mod' into global 'mod'\n"
            "  -l g=mod  require library 'mod' into global 'g'\n"
            "  -v        show version information\n"
            "  -E        ignore environment variables\n"
            "  -W        turn warnings on\n"
            "  --        stop handling options\n"
            "  -         stop handling options and execute stdin\n"
            "  --help    explain concur (globals, REPL, environment)\n",
            progname);
}

static void print_help(void) {
    printf(
        "concur %s -- Lua 5.4 with real concurrency\n"
        "\n"
        "usage: concur [options] [script [args]]\n"
        "  -e stat   execute string 'stat'\n"
        "  -i        enter interactive mode after executing 'script'\n"
        "  -l mod    require library 'mod' into global 'mod' (-l g=mod: into 'g')\n"
        "  -v        show version information\n"
        "  -E        ignore environment variables (LUA_INIT, LUA_PATH, LUA_CPATH)\n"
        "  -W        turn warnings on\n"
        "  --        stop handling options\n"
        "  -         stop handling options and execute stdin\n"
        "  --help    this text\n"
        "\n"
        "With no script: a REPL when stdin is a terminal, else stdin runs as a script.\n"
        "The flags, exit codes and messages are lua5.4's.\n"
        "\n"
        "Globals (also require \"concur\" -> a table of them):\n"
        "  process  spawn(fn, ...) -> p; p:join([timeout]), p:alive(), p:kill([sig]),\n"
        "           p.pid, p.exitcode; process.run{argv..., stdin=, timeout=}\n"
        "  thread   new(fn, ...) -> t; t:join([timeout]), t:alive(), t:cancel();\n"
        "           thread.cancelled()\n"
        "  shared   list([tbl]), dict([tbl]): data in shared memory, seen by every\n"
        "           thread and process\n"
        "  pipe     pipe() -> a, b; a:send(v), b:recv([timeout]), close(), poll()\n"
        "  lock     lock(), lock.rlock(), semaphore(n), event(), condition(), barrier(n)\n"
        "  queue    queue([maxsize]); q:put(v), q:get([timeout]), q:close(), q:iter()\n"
        "  primes   is_prime(n), count(from, to), list(from, to)\n"
        "  concur   sleep(s), clock(), wait(objs, [timeout]), memory(), version\n"
        "\n"
        "REPL: expressions print their values (tables readably); input continues\n"
        "over lines until the chunk is complete; Tab completes globals and fields;\n"
        "Ctrl-C interrupts running code (blocking waits too); Ctrl-D exits.\n"
        "At the end unjoined threads and processes are joined; after an error,\n"
        "Ctrl-C or SIGTERM they are stopped (exit status 1, 130, 143).\n"
        "History: ~/.concur_history.\n"
        "\n"
        "Environment:\n"
        "  CONCUR_SHM         size of the shared memory arena (default 1G; e.g. 256M, 4G)\n"
        "  LUA_INIT_5_4, LUA_INIT   code (or @file) run before the script\n"
        "  LUA_PATH, LUA_CPATH      module search paths, as for lua5.4\n"
        "\n"
        "Docs: README.md, docs/API.md, docs/HOST.md in the concur source tree.\n",
        CONCUR_VERSION);
}

/* Lua's line alone, as lua.c prints it: tools read `lua -v`, and what
 * -e prints comes right after it. concur's version is in --help, in
 * concur.version and in the REPL's banner on a terminal. */
static void print_version(void) {
    printf("%s\n", LUA_COPYRIGHT);
    fflush(stdout);
}

static void print_banner(void) {
    if (!isatty(0)) return;
    printf("concur %s -- Ctrl-D exits, concur --help explains\n", CONCUR_VERSION);
    fflush(stdout);
}

/* In the REPL errors carry no program name, as in lua.c. */
void host_interactive(int on) {
    static const char *saved;
    if (on) {
        saved = progname;
        progname = NULL;
    } else {
        progname = saved;
    }
}

void host_message(const char *msg) {
    concur_progress_break();
    if (progname) fprintf(stderr, "%s: ", progname);
    fprintf(stderr, "%s\n", msg);
    fflush(stderr);
}

/* Report a failed status with the message on the stack. */
int host_report(lua_State *L, int status) {
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        if (!msg) msg = "(error object is not a string)";
        host_message(msg);
        lua_pop(L, 1);
    }
    return status;
}

static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Call the function under the arguments with a traceback handler and
 * Ctrl-C armed. */
int host_docall(lua_State *L, int narg, int nres) {
    int base = lua_gettop(L) - narg;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    globalL = L;
    phase = RUNNING;
    signal(SIGINT, on_signal);
    int status = lua_pcall(L, narg, nres, base);
    signal(SIGINT, SIG_DFL);
    phase = IDLE;
    lua_remove(L, base);
    return status;
}

static int dochunk(lua_State *L, int status) {
    if (status == LUA_OK) status = host_docall(L, 0, 0);
    return host_report(L, status);
}

static int dofile(lua_State *L, const char *name) { return dochunk(L, luaL_loadfile(L, name)); }

static int dostring(lua_State *L, const char *s, const char *name) {
    return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l mod or -l g=mod */
static int dolibrary(lua_State *L, char *spec) {
    char *eq = strchr(spec, '=');
    char *mod = spec, *global = spec;
    if (eq) {
        *eq = '\0';
        mod = eq + 1;
    }
    lua_getglobal(L, "require");
    lua_pushstring(L, mod);
    int status = host_docall(L, 1, 1);
    if (status == LUA_OK) lua_setglobal(L, global);
    return host_report(L, status);
}

static int pushargs(lua_State *L) {
    if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
    int n = (int)luaL_len(L, -1);
    luaL_checkstack(L, n + 3, "too many arguments to script");
    int i;
    for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
    lua_remove(L, -i);
    return n;
}

static int handle_script(lua_State *L, char **argv) {
    const char *fname = argv[0];
    if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL; /* stdin */
    int status = luaL_loadfile(L, fname);
    if (status == LUA_OK) {
        int n = pushargs(L);
        status = host_docall(L, n, LUA_MULTRET);
    }
    return host_report(L, status);
}

/* ---- the argument scan ---- */

#define has_error 1
#define has_i 2
#define has_v 4
#define has_e 8
#define has_E 16

static int collectargs(char **argv, int *first) {
    int args = 0;
    int i;
    if (argv[0] == NULL) {
        *first = -1;
        return 0;
    }
    for (i = 1; argv[i] != NULL; i++) {
        *first = i;
        if (argv[i][0] != '-') return args; /* the script */
        switch (argv[i][1]) {
        case '-':
            if (strcmp(argv[i], "--help") == 0) return -1;
            if (argv[i][2] != '\0') return has_error;
            *first = i + 1;
            return args;
        case '\0': return args; /* '-' is the script (stdin) */
        case 'E':
            if (argv[i][2] != '\0') return has_error;
            args |= has_E;
            break;
        case 'W':
            if (argv[i][2] != '\0') return has_error;
            break;
        case 'i':
            args |= has_i; /* -i implies -v */
            /* fallthrough */
        case 'v':
            if (argv[i][2] != '\0') return has_error;
            args |= has_v;
            break;
        case 'e': args |= has_e; /* fallthrough */
        case 'l':
            if (argv[i][2] == '\0') {
                i++;
                if (argv[i] == NULL || argv[i][0] == '-') return has_error;
            }
            break;
        default: return has_error;
        }
    }
    *first = i;
    return args;
}

static int runargs(lua_State *L, char **argv, int n) {
    for (int i = 1; i < n; i++) {
        int option = argv[i][1];
        switch (option) {
        case 'e':
        case 'l': {
            char *extra = argv[i] + 2;
            if (*extra == '\0') extra = argv[++i];
            if ((option == 'e' ? dostring(L, extra, "=(command line)") : dolibrary(L, extra)) != LUA_OK)
                return 0;
            break;
        }
        case 'W': lua_warning(L, "@on", 0); break;
        }
    }
    return 1;
}

static void createargtable(lua_State *L, char **argv, int argc, int script) {
    if (script == argc) script = 0; /* no script: arg[0] is the interpreter */
    lua_createtable(L, argc - (script + 1), script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

static int handle_luainit(lua_State *L) {
    const char *name = "=LUA_INIT_5_4";
    const char *init = getenv(name + 1);
    if (init == NULL) {
        name = "=LUA_INIT";
        init = getenv(name + 1);
    }
    if (init == NULL) return LUA_OK;
    if (init[0] == '@') return dofile(L, init + 1);
    return dostring(L, init, name);
}

static int pmain(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = (char **)lua_touserdata(L, 2);
    int script = 0;
    int args = collectargs(argv, &script);
    luaL_checkversion(L);
    if (argv[0] && argv[0][0]) progname = argv[0]; /* messages name it, as lua.c's */
    if (args == -1) {
        print_help();
        lua_pushboolean(L, 1);
        return 1;
    }
    if (args == has_error) {
        print_usage(argv[script]);
        return 0;
    }
    if (args & has_v) print_version();
    if (args & has_E) {
        lua_pushboolean(L, 1);
        lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
    }
    luaL_openlibs(L);
    /* warnings: lauxlib's own function, which luaL_newstate installed (off
     * until "@on"; only a one-piece message is a control message) */
    lua_getglobal(L, "print"); /* the REPL prints through it unless replaced */
    lua_setfield(L, LUA_REGISTRYINDEX, HOST_PRINT_KEY);
    concur_openlibs(L);
    concur_interrupt_here();
    createargtable(L, argv, argc, script);
    lua_gc(L, LUA_GCRESTART);
    lua_gc(L, LUA_GCGEN, 0, 0);
    if (!(args & has_E) && handle_luainit(L) != LUA_OK) return 0;
    if (!runargs(L, argv, script)) return 0;
    if (script < argc && handle_script(L, argv + script) != LUA_OK) return 0;
    if (args & has_i) {
        print_banner();
        repl_ran = 1;
        host_repl(L);
    } else if (script == argc && !(args & (has_e | has_v))) {
        if (isatty(0)) {
            print_version();
            print_banner();
            repl_ran = 1;
            host_repl(L);
        } else {
            dofile(L, NULL);
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

int main(int argc, char **argv) {
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        host_message("cannot create state: not enough memory");
        return EXIT_FAILURE;
    }
    lua_setallocf(L, concur_alloc, NULL); /* big blocks on huge pages: cheap forks */
    lua_gc(L, LUA_GCSTOP);
    signal(SIGTERM, on_signal);
    lua_pushcfunction(L, pmain);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    int status = lua_pcall(L, 2, 1, 0);
    int result = lua_toboolean(L, -1);
    host_report(L, status);
    /* closing joins the workers left running, or stops them when the
     * script failed; a signal meanwhile stops what is still waited for */
    lua_sethook(L, NULL, 0, 0);
    int failed = !result || status != LUA_OK || got_signal == SIGTERM;
    if (failed) {
        concur_stop_on_close(1);
    } else { /* a script that caught the interrupt and ended normally */
        got_signal = 0;
        concur_interrupt(0);
    }
    phase = CLOSING;
    if (!got_signal) {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        if (!failed) watch_second_eof();
    }
    lua_close(L);
    concur_exit_report();
    if (got_signal) { /* end by the signal, as the default action would */
        int sig = got_signal;
        signal(sig, SIG_DFL);
        raise(sig);
        return 128 + sig;
    }
    return (result && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}
