/* Starting a process (the workload or an exec session) from a validated record set:
 * user, groups, env, cwd, PATH lookup, pipes or a pseudo-terminal, with exec
 * failures carried back to the parent over a close-on-exec pipe. */
#ifndef MM_SPAWN_H
#define MM_SPAWN_H

#include <stddef.h>
#include <sys/types.h>

#include "protocol.h"

#define MM_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MM_DEFAULT_TERM "xterm"    /* TERM for a TTY session without one, as Docker */
#define MM_STATUS_NOT_FOUND 127
#define MM_STATUS_DENIED 126

/* The parent's ends of a started process's stdio; all non-blocking, close-on-exec. */
struct spawned {
	pid_t pid;
	int out_fd;   /* stdout pipe, or the pty master (a TTY session's only fd) */
	int err_fd;   /* stderr pipe; -1 for a TTY */
	int in_fd;    /* stdin pipe when proc->stdin_open and not a TTY; else -1 */
};

/* 0 when the process has been exec'd (a session leader: its pgid is its pid).
 * Otherwise the exit status to report (126 or 127) with an ERROR payload
 * ("CODE: message", at most MM_MAX_ERROR bytes) in err. */
int spawn_process(const struct mm_process *proc, struct spawned *sp, char *err, size_t errlen);

#endif
