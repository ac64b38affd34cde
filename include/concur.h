/*
 * concur.h -- embedding concur in a C program that has its own lua_State.
 *
 *     lua_State *L = luaL_newstate();
 *     luaL_openlibs(L);
 *     concur_openlibs(L);       // globals process, thread, shared, pipe,
 *                               // lock, queue, primes, concur; and
 *                               // package.loaded["concur"]
 *     ... run scripts ...
 *     lua_close(L);             // joins unjoined threads and processes
 *
 * A host whose script failed (an uncaught error, a signal) calls
 * concur_stop_on_close(1) before lua_close: the unjoined workers are then
 * stopped (threads cancelled, processes sent SIGTERM, then SIGKILL after a
 * second), not joined, and one line on stderr names them.
 *
 * Link with `pkg-config --libs concur` (libconcur.a or .so) and lua5.4.
 *
 * Threads started with thread.new run in fresh lua_States. Those states get
 * the standard libraries and concur; a host whose own libraries must be
 * present there too registers an initializer, called in every new thread
 * state before the thread's function is loaded (and not in the main state).
 */
#ifndef CONCUR_H
#define CONCUR_H

#ifdef __cplusplus
extern "C" {
#endif

#include <lua.h>

#define CONCUR_VERSION "0.1.0"

/* Open concur into L: sets the globals and package.loaded["concur"].
 * Returns 0, or raises a Lua error (e.g. the shared arena could not be
 * mapped). Call it before forking anything. */
int concur_openlibs(lua_State *L);

/* A lua_Alloc for a state that spawns processes, installed right after
 * luaL_newstate, before any block of 2 MiB or more is made:
 * lua_setallocf(L, concur_alloc, NULL). Blocks under 2 MiB come from
 * malloc (the ones luaL_newstate's allocator made are malloc's too);
 * bigger ones (a 10^6-element array) get 2 MiB-aligned mappings of their
 * own on transparent huge pages, so a fork copies one page-table entry per
 * 2 MiB of them instead of 512. The concur host uses it. */
void *concur_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* The module entry point: require "concur" returns the library table
 * without touching globals. */
int luaopen_concur(lua_State *L);

/* Per-thread state initializer: fn(L, ud) runs in each new thread's state
 * after the standard libraries and concur are opened. Process-wide; set it
 * before starting threads. Pass NULL to remove it. */
typedef void (*concur_state_init)(lua_State *L, void *ud);
void concur_set_thread_init(concur_state_init fn, void *ud);

/* on = 1: the program is ending abnormally; finalizers of unjoined
 * threads and processes stop them instead of joining them. Process-wide
 * (a forked child starts with it off). A failing os.exit sets it too. */
void concur_stop_on_close(int on);

/* Interrupting blocking waits, as the concur host does on Ctrl-C and
 * SIGTERM. concur_interrupt_here() makes the calling thread's blocking
 * waits (q:get(), p:join(), lock:acquire(), ...) watch the library's
 * interrupt flag: call it in the thread that runs the script, after
 * concur_openlibs. concur_interrupt(1) -- safe in a signal handler, one
 * atomic store -- makes those waits raise "<function>: interrupted" within
 * about 50 ms; concur_interrupt(0) clears the flag (do that before running
 * Lua code again, or the next wait is interrupted at once). Threads started
 * with thread.new have flags of their own (thread:cancel). */
void concur_interrupt_here(void);
void concur_interrupt(int on);

/* The workers stopped because the program was ending (see
 * concur_stop_on_close) are named in one line on stderr, printed by an
 * atexit handler. A host that prints its own last words calls this after
 * lua_close to have the line printed now, before them (it prints once). */
void concur_exit_report(void);
/* Ends any concur.progress line this process left open on the terminal
 * (drawn without its newline), so a message written next to stderr starts
 * on a line of its own; the progress redraws below it. */
void concur_progress_break(void);

#ifdef __cplusplus
}
#endif
#endif
