/* Starting the workload from a validated CONFIG: user, groups, env, cwd, PATH lookup,
 * with exec failures carried back to the parent over a close-on-exec pipe. */
#ifndef MM_SPAWN_H
#define MM_SPAWN_H

#include <stddef.h>
#include <sys/types.h>

#include "protocol.h"

#define MM_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MM_STATUS_NOT_FOUND 127
#define MM_STATUS_DENIED 126

struct workload {
	pid_t pid;
	int out_fd;   /* read ends of the workload's stdout and stderr, non-blocking */
	int err_fd;
};

/* 0 when the workload has been exec'd. Otherwise the exit status to report (126 or
 * 127) with an ERROR payload ("CODE: message", at most MM_MAX_ERROR bytes) in err. */
int spawn_workload(const struct mm_config *cfg, struct workload *w, char *err, size_t errlen);

#endif
