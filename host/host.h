/* host.h -- what main.c and repl.c share. */
#ifndef CONCUR_HOST_H
#define CONCUR_HOST_H
#include <lua.h>

int host_docall(lua_State *L, int narg, int nres);   /* traceback + Ctrl-C armed */
int host_report(lua_State *L, int status);           /* print the error, if any */
void host_message(const char *msg);
void host_interrupt_reset(void);
void host_repl(lua_State *L);
#endif
