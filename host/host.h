/* host.h -- what main.c and repl.c share. */
#ifndef CONCUR_HOST_H
#define CONCUR_HOST_H
#include <lua.h>

int host_docall(lua_State *L, int narg, int nres);   /* traceback + Ctrl-C armed */
int host_report(lua_State *L, int status);           /* print the error, if any */
void host_message(const char *msg);
void host_interrupt_reset(void);
void host_repl(lua_State *L);
void host_interactive(int on);                       /* 1: errors without progname */
int host_terminated(void);                           /* a SIGTERM arrived */

/* registry field: the print of the standard library, saved before any
 * user code runs; the REPL formats results itself only while the global
 * print is still this one */
#define HOST_PRINT_KEY "concur.host.print"
#endif
