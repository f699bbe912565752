/* Exec sessions (protocol v2, streams >= 1): processes the host starts with EXEC while
 * the machine runs, each with its own stdio relay and flow-control credit. */
#ifndef MM_SESSION_H
#define MM_SESSION_H

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol.h"

/* Poll entries the sessions may add: stdout, stderr and stdin of each (a TTY uses one). */
#define SESSION_POLL_MAX (3 * MM_MAX_SESSIONS)

/* Provided by the supervisor (mm-init.c). Sending never fails: a lost channel shuts
 * the machine down. A violation ends the channel and the machine. */
void supervisor_send(uint8_t type, uint32_t stream, const void *payload, size_t len);
void supervisor_send_error(uint32_t stream, const char *message);
void supervisor_send_exit(uint32_t stream, int wait_status);
__attribute__((noreturn, format(printf, 1, 2))) void supervisor_violation(const char *fmt, ...);

/* EXEC on stream: starts a session (READY) or answers ERROR + EXIT on that stream. */
void sessions_exec(uint32_t stream, uint16_t version, const uint8_t *payload, size_t len);
/* STDIN, SIGNAL, RESIZE or WINDOW on a stream >= 1, arriving at time now. */
void sessions_frame(const struct mm_frame *f, int64_t now);

/* Adds the fds the sessions want polled; returns how many (at most cap). */
size_t sessions_poll_add(struct pollfd *pfd, size_t cap);
/* Serves the entries sessions_poll_add() added, after poll(). */
void sessions_poll_handle(const struct pollfd *pfd);

/* A reaped child: true if it was a session's process. */
bool sessions_reaped(pid_t pid, int wait_status, int64_t now);
/* Sends EXIT for sessions whose process ended and whose output is drained, and
 * lowers *next to the earliest time this must run again (0: no deadline). */
void sessions_tick(int64_t now, int64_t *next);
/* Signals every live session's process group (host-test mode's shutdown). */
void sessions_signal_all(int sig);
/* IDENTITY (v3): ends every session without EXIT: SIGKILL to the process group of
 * each whose process is still running, then its fds and slot are freed. */
void sessions_end_all(void);
/* Leaving quiesce (v3) at time now: the waits for the output of ended processes,
 * during which none was read, start over. */
void sessions_resume(int64_t now);

#endif
