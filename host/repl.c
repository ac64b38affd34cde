/*
 * repl.c -- the interactive loop: readline with history, multi-line input,
 * values printed readably, Tab completion of globals and fields.
 *
 * A line is first tried as `return <line>` (so `1 + 2` prints 3), then as a
 * statement; a chunk whose error ends in "<eof>" is incomplete and reading
 * continues with the `>>` prompt, as lua.c does. Results print through a
 * small Lua function (REPR below): tables as `{1, 2, x = 3}`, nested to a
 * few levels, cycles marked, long tables cut with `...`.
 *
 * Ctrl-C at the prompt discards the line being typed (readline's own signal
 * handling is off: ours redraws an empty prompt); while code runs, main.c's
 * handler interrupts it.
 */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "host.h"

#define HISTORY_FILE ".concur_history"
#define HISTORY_MAX 1000

static lua_State *replL;
static char history_path[4096];

static const char REPR[] =
    "local maxdepth, maxitems = 3, 40\n"
    "local function key(k)\n"
    "  if type(k) == 'string' and k:match('^[%a_][%w_]*$') then return k end\n"
    "  return '[' .. (type(k) == 'string' and string.format('%q', k) or tostring(k)) .. ']'\n"
    "end\n"
    "local function repr(v, depth, seen)\n"
    "  local t = type(v)\n"
    "  if t == 'string' then return depth > 0 and string.format('%q', v) or v end\n"
    "  if t ~= 'table' then return tostring(v) end\n"
    "  local mt = getmetatable(v)\n"
    "  if mt and mt.__tostring then return tostring(v) end\n"
    "  if seen[v] then return '<cycle>' end\n"
    "  if depth >= maxdepth then return '{...}' end\n"
    "  seen[v] = true\n"
    "  local parts, n = {}, 0\n"
    "  local len = #v\n"
    "  for i = 1, len do\n"
    "    n = n + 1\n"
    "    if n > maxitems then parts[#parts + 1] = '...' break end\n"
    "    parts[#parts + 1] = repr(v[i], depth + 1, seen)\n"
    "  end\n"
    "  local keys = {}\n"
    "  for k in next, v do\n"
    "    if not (math.type(k) == 'integer' and k >= 1 and k <= len) then keys[#keys + 1] = k end\n"
    "  end\n"
    "  table.sort(keys, function(a, b)\n"
    "    local ta, tb = type(a), type(b)\n"
    "    if ta ~= tb then return ta < tb end\n"
    "    if ta == 'number' or ta == 'string' then return a < b end\n"
    "    return tostring(a) < tostring(b)\n"
    "  end)\n"
    "  for _, k in ipairs(keys) do\n"
    "    n = n + 1\n"
    "    if n > maxitems then parts[#parts + 1] = '...' break end\n"
    "    parts[#parts + 1] = key(k) .. ' = ' .. repr(v[k], depth + 1, seen)\n"
    "  end\n"
    "  seen[v] = nil\n"
    "  return '{' .. table.concat(parts, ', ') .. '}'\n"
    "end\n"
    "return function(...)\n"
    "  local out = {}\n"
    "  for i = 1, select('#', ...) do out[i] = repr((select(i, ...)), 0, {}) end\n"
    "  return table.concat(out, '\\t')\n"
    "end\n";

static const char REPR_KEY = 'r';

/* ---- history ---- */

static void history_open(void) {
    const char *home = getenv("HOME");
    if (!home || !*home) return;
    snprintf(history_path, sizeof history_path, "%s/%s", home, HISTORY_FILE);
    int fd = open(history_path, O_CREAT | O_RDWR, 0600);
    if (fd < 0) {
        history_path[0] = '\0';
        return;
    }
    fchmod(fd, 0600); /* it may hold secrets typed at the prompt */
    close(fd);
    read_history(history_path);
}

static void history_add(const char *line) {
    if (!*line) return;
    add_history(line);
    if (history_path[0]) {
        append_history(1, history_path);
        history_truncate_file(history_path, HISTORY_MAX);
    }
}

/* ---- completion ---- */

/* Fields that concur handles compute in their __index function, so no
 * table lists them (a.readable is a property of the pipe end, p.pid of the
 * process). Keyed by the metatable's name. */
static const struct { const char *type; const char *fields[5]; } HANDLE_FIELDS[] = {
    {"concur.process", {"pid", "name", "daemon", "exitcode", NULL}},
    {"concur.pipe", {"readable", "writable", NULL}},
};

/* Copy the string keys of the table at idx into the table at out. */
static void merge_keys(lua_State *L, int idx, int out) {
    if (!lua_istable(L, idx)) return;
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) continue;
        lua_pushvalue(L, -1);
        lua_pushboolean(L, 1);
        lua_rawset(L, out);
    }
}

/* Replace the value on top with a table of what completes after ':' (its
 * methods) or, with fields, after '.': wherever its metatable keeps them.
 * __index may be a table (strings, queues, locks), a C function whose first
 * upvalue is the methods table (shared lists and dicts, pipe ends), or a
 * function beside a `methods` table (process handles). 0 if there is none. */
static int push_members(lua_State *L, int fields) {
    if (!lua_getmetatable(L, -1)) return 0;
    int mt = lua_gettop(L);
    lua_newtable(L);
    int out = lua_gettop(L);
    lua_pushliteral(L, "__index"); /* raw: nothing here may raise */
    lua_rawget(L, mt);
    if (lua_istable(L, -1)) merge_keys(L, -1, out);
    else if (lua_iscfunction(L, -1) && lua_getupvalue(L, -1, 1)) {
        merge_keys(L, -1, out);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "methods");
    lua_rawget(L, mt);
    merge_keys(L, -1, out);
    lua_pop(L, 1);
    lua_pushliteral(L, "__name");
    lua_rawget(L, mt);
    const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    for (size_t i = 0; fields && name && i < sizeof HANDLE_FIELDS / sizeof HANDLE_FIELDS[0]; i++) {
        if (strcmp(name, HANDLE_FIELDS[i].type) != 0) continue;
        for (const char *const *f = HANDLE_FIELDS[i].fields; *f; f++) {
            lua_pushstring(L, *f);
            lua_pushboolean(L, 1);
            lua_rawset(L, out);
        }
    }
    lua_pop(L, 1);
    lua_replace(L, mt - 1); /* the table takes the value's place */
    lua_settop(L, mt - 1);
    return 1;
}

/* Push the table to complete in for the text before the last '.' or ':'
 * (globals when there is none); with ':' the value's methods. 0 if none. */
static int push_scope(lua_State *L, const char *text, size_t plen, int method) {
    lua_pushglobaltable(L);
    const char *p = text, *end = text + plen;
    while (p < end) {
        const char *dot = p;
        while (dot < end && *dot != '.' && *dot != ':') dot++;
        if (!lua_istable(L, -1) && !lua_isuserdata(L, -1)) return 0;
        lua_pushlstring(L, p, (size_t)(dot - p));
        if (lua_istable(L, -2)) lua_rawget(L, -2);
        else {
            lua_pop(L, 1);
            return 0;
        }
        lua_remove(L, -2);
        p = dot < end ? dot + 1 : end;
    }
    if (method || lua_isuserdata(L, -1)) return push_members(L, !method);
    return lua_istable(L, -1);
}

static char **matches;
static size_t nmatches;

static void collect(lua_State *L, const char *prefix, size_t plen, const char *partial, char sep) {
    size_t n = strlen(partial);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) continue;
        const char *k = lua_tostring(L, -1);
        if (strncmp(k, partial, n) != 0) continue;
        char **grown = realloc(matches, (nmatches + 2) * sizeof *matches);
        if (!grown) continue;
        matches = grown;
        size_t len = plen + 1 + strlen(k) + 1;
        char *m = malloc(len);
        if (!m) continue;
        if (plen) snprintf(m, len, "%.*s%c%s", (int)plen, prefix, sep, k);
        else snprintf(m, len, "%s", k);
        matches[nmatches++] = m;
    }
}

static char *generator(const char *text, int state) {
    static size_t next;
    if (state == 0) {
        for (size_t i = next; i < nmatches; i++) free(matches[i]);
        free(matches);
        matches = NULL;
        nmatches = next = 0;
        lua_State *L = replL;
        int top = lua_gettop(L);
        const char *cut = NULL;
        for (const char *c = text; *c; c++)
            if (*c == '.' || *c == ':') cut = c;
        size_t plen = cut ? (size_t)(cut - text) : 0;
        char sep = cut ? *cut : '.';
        if (push_scope(L, text, plen, sep == ':' && cut)) collect(L, text, plen, cut ? cut + 1 : text, sep);
        /* fields of a userdata's methods table after '.' too (p.pid, q.put) */
        lua_settop(L, top);
    }
    return next < nmatches ? matches[next++] : NULL;
}

static char **complete(const char *text, int start, int end) {
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1; /* no filename completion */
    return rl_completion_matches(text, generator);
}

/* ---- reading ---- */

static void on_sigint_prompt(int sig) {
    (void)sig;
    /* discard the line being typed and show a fresh prompt */
    fputs("\n", stdout);
    rl_on_new_line();
    rl_replace_line("", 0);
    rl_redisplay();
}

static int tostring_prompt(lua_State *L) {
    luaL_tolstring(L, 1, NULL);
    return 1;
}

/* _PROMPT / _PROMPT2 through tostring, as lua.c (so __tostring runs once
 * per line); an error in it is reported and the default prompt used. */
static void prompt(lua_State *L, int first, char *buf, size_t size) {
    const char *def = first ? "> " : ">> ";
    const char *name = first ? "_PROMPT" : "_PROMPT2";
    if (lua_getglobal(L, name) == LUA_TNIL) {
        lua_pop(L, 1);
        snprintf(buf, size, "%s", def);
        return;
    }
    lua_pushcfunction(L, tostring_prompt);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        host_message(lua_pushfstring(L, "error converting %s to a string (%s)", name, lua_tostring(L, -1)));
        lua_pop(L, 2);
        snprintf(buf, size, "%s", def);
        return;
    }
    snprintf(buf, size, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
}

static char *read_line(lua_State *L, int first) {
    char buf[256];
    prompt(L, first, buf, sizeof buf);
    signal(SIGINT, on_sigint_prompt);
    char *line = readline(buf);
    signal(SIGINT, SIG_DFL);
    return line;
}

static int incomplete(lua_State *L, int status) {
    if (status != LUA_ERRSYNTAX) return 0;
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    const char *eof = "<eof>";
    size_t el = strlen(eof);
    if (len >= el && strcmp(msg + len - el, eof) == 0) {
        lua_pop(L, 1);
        return 1;
    }
    return 0;
}

/* Compile the input as an expression to print, else as statements, reading
 * more lines while the chunk is incomplete. Leaves the chunk (or an error)
 * on the stack; -1 at end of input. */
static int load_input(lua_State *L) {
    char *line = read_line(L, 1);
    if (!line) return -1;
    size_t n = strlen(line);
    if (n > 0 && line[0] == '=') { /* Lua 5.1 style "=expr" */
        memmove(line, line + 1, n);
        n--;
    }
    lua_pushfstring(L, "return %s;", line);
    int status = luaL_loadbuffer(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=stdin");
    if (status == LUA_OK) {
        lua_remove(L, -2);
        history_add(line);
        free(line);
        return LUA_OK;
    }
    lua_pop(L, 2);
    lua_pushstring(L, line);
    free(line);
    for (;;) {
        size_t len;
        const char *code = lua_tolstring(L, -1, &len);
        status = luaL_loadbuffer(L, code, len, "=stdin");
        if (!incomplete(L, status)) break;
        char *more = read_line(L, 0);
        if (!more) break; /* end of input inside a chunk: report it */
        lua_pushliteral(L, "\n");
        lua_pushstring(L, more);
        lua_concat(L, 3);
        free(more);
    }
    history_add(lua_tostring(L, -2) ? lua_tostring(L, -2) : "");
    lua_remove(L, -2);
    return status;
}

/* A print the user put in place gets the results, as in lua.c. */
static int print_replaced(lua_State *L, int base, int n) {
    lua_getglobal(L, "print");
    lua_getfield(L, LUA_REGISTRYINDEX, HOST_PRINT_KEY);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
    if (same) {
        lua_pop(L, 1);
        return 0;
    }
    lua_insert(L, base + 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
        host_message(lua_pushfstring(L, "error calling 'print' (%s)", lua_tostring(L, -1)));
    lua_settop(L, base);
    return 1;
}

static void print_results(lua_State *L, int base) {
    int n = lua_gettop(L) - base;
    if (n <= 0) return;
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    if (print_replaced(L, base, n)) return;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &REPR_KEY);
    lua_insert(L, base + 1);
    if (lua_pcall(L, n, 1, 0) != LUA_OK) {
        host_message(lua_pushfstring(L, "error printing results (%s)", lua_tostring(L, -1)));
        lua_settop(L, base);
        return;
    }
    puts(lua_tostring(L, -1));
    fflush(stdout);
    lua_settop(L, base);
}

void host_repl(lua_State *L) {
    replL = L;
    if (luaL_loadstring(L, REPR) == LUA_OK && lua_pcall(L, 0, 1, 0) == LUA_OK)
        lua_rawsetp(L, LUA_REGISTRYINDEX, &REPR_KEY);
    else
        lua_pop(L, 1);
    rl_readline_name = "concur";
    rl_catch_signals = 0;
    rl_attempted_completion_function = complete;
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[]";
    rl_completion_append_character = '\0';
    history_open();
    host_interactive(1);
    int status;
    while ((status = load_input(L)) != -1) {
        int base = lua_gettop(L) - 1;
        if (status == LUA_OK) {
            host_interrupt_reset();
            status = host_docall(L, 0, LUA_MULTRET);
        }
        if (status == LUA_OK) print_results(L, base);
        else host_report(L, status);
        lua_settop(L, base);
        if (host_terminated()) break; /* SIGTERM ends the session */
    }
    lua_settop(L, 0);
    host_interactive(0);
    if (!host_terminated()) host_interrupt_reset(); /* an old Ctrl-C must not stop workers at exit */
    fputs("\n", stdout);
    fflush(stdout);
}
