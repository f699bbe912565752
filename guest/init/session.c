/* Exec sessions: a table of at most MM_MAX_SESSIONS processes, their stdio relayed as
 * frames on their own stream under per-direction credit (docs/PROTOCOL.md, v2).
 *
 * Output is read only while the host has granted credit for it, so a host that stops
 * reading one session blocks that session's process on its pipe and nothing else.
 * Stdin the host sends is buffered (at most MM_INITIAL_WINDOW bytes: the host may not
 * send more than its credit) and written without blocking; each byte the process
 * takes is credited back with WINDOW. */
#include "session.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

#include "log.h"
#include "spawn.h"

#define STDIN_BUF_SIZE MM_INITIAL_WINDOW      /* the host's credit bounds what we hold */
#define MAX_CREDIT ((uint64_t)1 << 48)        /* output credit saturates here */
#define CONFIG_ERROR_PREFIX "CONFIG: "

enum poll_role { ROLE_OUT, ROLE_ERR, ROLE_IN, ROLE_TTY };

struct session {
	uint32_t stream;          /* 0: the slot is free */
	pid_t pid;
	bool reaped;
	int wait_status;
	int64_t drain_until;      /* after the process ended: send EXIT by then */
	bool tty;
	int out_fd;               /* stdout pipe, or the pty master */
	bool tty_eof;             /* the pty master read EIO: no slave left open */
	int err_fd;               /* stderr pipe (-1 for a TTY) */
	int in_fd;                /* stdin pipe (-1 for a TTY: input goes to the master) */
	uint64_t tx_credit;       /* output bytes we may still send */
	uint32_t rx_credit;       /* stdin bytes the host may still send */
	uint32_t to_grant;        /* stdin bytes consumed, not yet credited with WINDOW */
	bool takes_input;         /* STDIN record given, input not yet closed */
	bool input_eof;           /* the host ended input: close once the buffer drains */
	uint8_t *in_buf;          /* ring of STDIN_BUF_SIZE bytes (mmap), or NULL */
	size_t in_head;
	size_t in_len;
};

static struct session sessions[MM_MAX_SESSIONS];
static struct mm_exec exec_request;          /* kept off PID 1's stack */
static uint8_t output_buf[MM_MAX_PAYLOAD];
static char error_buf[MM_MAX_ERROR + 1];

/* Which session and fd each entry of the last sessions_poll_add() serves. */
static uint8_t poll_slot[SESSION_POLL_MAX];
static uint8_t poll_role[SESSION_POLL_MAX];
static size_t poll_count;

static struct session *find(uint32_t stream)
{
	if (stream == MM_STREAM_CONTROL)
		return NULL;
	for (size_t i = 0; i < MM_MAX_SESSIONS; i++)
		if (sessions[i].stream == stream)
			return &sessions[i];
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void free_session(struct session *s)
{
	close_fd(&s->out_fd);
	close_fd(&s->err_fd);
	close_fd(&s->in_fd);
	if (s->in_buf != NULL)
		munmap(s->in_buf, STDIN_BUF_SIZE);
	memset(s, 0, sizeof *s);
	s->out_fd = s->err_fd = s->in_fd = -1;
}

/* Reports consumed stdin to the host, which may then send that much more. */
static void grant(struct session *s)
{
	uint8_t payload[4];

	if (s->to_grant == 0)
		return;
	mm_put_u32(payload, s->to_grant);
	supervisor_send(MM_WINDOW, s->stream, payload, sizeof payload);
	s->rx_credit += s->to_grant;
	s->to_grant = 0;
}

/* The process takes no more input: what is buffered is dropped (and credited, so a
 * host streaming into a process that stopped reading is never stuck). */
static void close_input(struct session *s)
{
	s->to_grant += (uint32_t)s->in_len;
	s->in_len = 0;
	s->in_head = 0;
	s->takes_input = false;
	close_fd(&s->in_fd);
}

/* A TTY has no write end to close: end of input is the terminal's EOF character
 * (VEOF, ^D unless changed), as if typed. 1 written or nothing to do, 0 try later. */
static int write_tty_eof(struct session *s)
{
	struct termios t;
	ssize_t n;

	if (tcgetattr(s->out_fd, &t) != 0 || t.c_cc[VEOF] == _POSIX_VDISABLE)
		return 1;
	n = write(s->out_fd, &t.c_cc[VEOF], 1);
	return n == 1 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

/* Writes buffered stdin without blocking. Returns false if no byte could be written
 * (the fd would block or failed). */
static bool flush_input(struct session *s)
{
	int fd = s->tty ? s->out_fd : s->in_fd;
	bool progress = false;

	while (s->takes_input && s->in_len > 0) {
		size_t chunk = STDIN_BUF_SIZE - s->in_head;
		ssize_t n;

		if (chunk > s->in_len)
			chunk = s->in_len;
		n = write(fd, s->in_buf + s->in_head, chunk);
		if (n > 0) {
			s->in_head = (s->in_head + (size_t)n) % STDIN_BUF_SIZE;
			s->in_len -= (size_t)n;
			s->to_grant += (uint32_t)n;
			progress = true;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && errno == EAGAIN) {
			break;
		} else {
			log_debug("session %lu: stdin: %s", (unsigned long)s->stream,
				  n < 0 ? strerror(errno) : "no progress");
			close_input(s);   /* EPIPE: the process closed its stdin */
		}
	}
	if (s->takes_input && s->in_len == 0 && s->input_eof) {
		if (!s->tty) {
			close_input(s);
			progress = true;
		} else if (write_tty_eof(s)) {
			s->takes_input = false;
			progress = true;
		}
	}
	grant(s);
	return progress;
}

static void on_stdin(struct session *s, const uint8_t *data, size_t len)
{
	if (len > s->rx_credit)
		supervisor_violation("protocol error: STDIN of %zu bytes on stream %lu exceeds its "
				     "credit of %lu", len, (unsigned long)s->stream,
				     (unsigned long)s->rx_credit);
	s->rx_credit -= (uint32_t)len;
	if (len == 0) {
		s->input_eof = true;
	} else if (!s->takes_input || s->input_eof) {
		s->to_grant += (uint32_t)len;   /* nobody to take it: dropped */
	} else {
		size_t tail = (s->in_head + s->in_len) % STDIN_BUF_SIZE;
		size_t first = STDIN_BUF_SIZE - tail;

		/* rx_credit + in_len + to_grant == STDIN_BUF_SIZE, so this always fits. */
		if (len > STDIN_BUF_SIZE - s->in_len)
			supervisor_violation("session %lu: stdin buffer overrun", (unsigned long)s->stream);
		if (first > len)
			first = len;
		memcpy(s->in_buf + tail, data, first);
		memcpy(s->in_buf, data + first, len - first);
		s->in_len += len;
	}
	flush_input(s);
}

/* Reads once from an output fd within the session's credit and relays it. */
static void pump_output(struct session *s, int *fd, uint8_t type)
{
	size_t want = s->tx_credit < sizeof output_buf ? (size_t)s->tx_credit : sizeof output_buf;
	ssize_t n;

	if (want == 0)
		return;
	n = read(*fd, output_buf, want);
	if (n > 0) {
		supervisor_send(type, s->stream, output_buf, (size_t)n);
		s->tx_credit -= (uint64_t)n;
	} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
		/* EOF, or EIO: a pty master whose slave side is all closed. The master
		 * stays open until the session ends: closing it would hang the terminal
		 * up, and SIGHUP a process that closed its stdio but has not exited. */
		if (s->tty) {
			s->tty_eof = true;
			close_input(s);
		} else {
			close_fd(fd);
		}
	}
}

static void send_spawn_failure(uint32_t stream, const char *message, int status)
{
	supervisor_send_error(stream, message);
	supervisor_send_exit(stream, status << 8);   /* a wait status that exited with status */
}

void sessions_exec(uint32_t stream, uint16_t version, const uint8_t *payload, size_t len)
{
	const size_t prefix = sizeof CONFIG_ERROR_PREFIX - 1;
	struct session *s = NULL;
	struct spawned sp;
	uint8_t *in_buf = NULL;
	uint8_t ready[4];
	int status;

	if (stream == MM_STREAM_CONTROL)
		supervisor_violation("protocol error: EXEC on stream 0");
	if (find(stream) != NULL)
		supervisor_violation("protocol error: EXEC on stream %lu, which is in use",
				     (unsigned long)stream);
	for (size_t i = 0; i < MM_MAX_SESSIONS && s == NULL; i++)
		if (sessions[i].stream == 0)
			s = &sessions[i];
	if (s == NULL) {
		snprintf(error_buf, sizeof error_buf, "LIMIT: more than %d exec sessions",
			 MM_MAX_SESSIONS);
		send_spawn_failure(stream, error_buf, MM_STATUS_DENIED);
		return;
	}
	memcpy(error_buf, CONFIG_ERROR_PREFIX, prefix);
	if (mm_exec_parse(&exec_request, version, payload, len, error_buf + prefix,
			  sizeof error_buf - prefix) != MM_PARSE_OK) {
		send_spawn_failure(stream, error_buf, MM_STATUS_NOT_FOUND);
		return;
	}
	if (exec_request.proc.stdin_open) {
		in_buf = mmap(NULL, STDIN_BUF_SIZE, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (in_buf == MAP_FAILED) {
			snprintf(error_buf, sizeof error_buf, "SPAWN: stdin buffer: %s", strerror(errno));
			send_spawn_failure(stream, error_buf, MM_STATUS_NOT_FOUND);
			return;
		}
	}
	status = spawn_process(&exec_request.proc, &sp, error_buf, sizeof error_buf);
	if (status != 0) {
		if (in_buf != NULL)
			munmap(in_buf, STDIN_BUF_SIZE);
		send_spawn_failure(stream, error_buf, status);
		return;
	}
	*s = (struct session){
		.stream = stream,
		.pid = sp.pid,
		.tty = exec_request.proc.tty,
		.out_fd = sp.out_fd,
		.err_fd = sp.err_fd,
		.in_fd = sp.in_fd,
		.tx_credit = MM_INITIAL_WINDOW,
		.rx_credit = MM_INITIAL_WINDOW,
		.takes_input = exec_request.proc.stdin_open,
		.in_buf = in_buf,
	};
	log_debug("session %lu: %s: pid %d", (unsigned long)stream, exec_request.proc.argv[0],
		  (int)sp.pid);
	mm_put_u32(ready, (uint32_t)sp.pid);
	supervisor_send(MM_READY, stream, ready, sizeof ready);
}

void sessions_frame(const struct mm_frame *f, int64_t now)
{
	struct session *s;
	uint32_t v;

	if ((f->type == MM_SIGNAL || f->type == MM_RESIZE || f->type == MM_WINDOW) &&
	    f->payload_len < 4)
		supervisor_violation("protocol error: frame type %u with a payload of %zu bytes",
				     f->type, f->payload_len);
	/* A frame for a session that already sent EXIT crossed it on the way: ignored. */
	if ((s = find(f->stream)) == NULL) {
		log_debug("frame type %u on stream %lu: no such session", f->type,
			  (unsigned long)f->stream);
		return;
	}
	switch (f->type) {
	case MM_STDIN:
		on_stdin(s, f->payload, f->payload_len);
		break;
	case MM_SIGNAL:
		v = mm_get_u32(f->payload);
		if (v == 0 || v >= NSIG || s->reaped)
			log_debug("session %lu: SIGNAL %lu ignored", (unsigned long)s->stream,
				  (unsigned long)v);
		else if (kill(-s->pid, (int)v) != 0)
			log_debug("kill -%d %lu: %s", (int)s->pid, (unsigned long)v, strerror(errno));
		break;
	case MM_RESIZE:
		if (s->tty) {
			struct winsize ws = { .ws_row = mm_get_u16(f->payload),
					      .ws_col = mm_get_u16(f->payload + 2) };

			/* The kernel sends SIGWINCH to the terminal's foreground group. */
			if (ioctl(s->out_fd, TIOCSWINSZ, &ws) != 0)
				log_debug("session %lu: TIOCSWINSZ: %s", (unsigned long)s->stream,
					  strerror(errno));
		}
		break;
	case MM_WINDOW:
		v = mm_get_u32(f->payload);
		/* Credit after none: the wait for the output of an ended process restarts
		 * now, so the output still in its pipe is read before EXIT. */
		if (s->tx_credit == 0 && v > 0 && s->reaped)
			s->drain_until = now + MM_DRAIN_AFTER_EXIT_MS;
		s->tx_credit = s->tx_credit > MAX_CREDIT - v ? MAX_CREDIT : s->tx_credit + v;
		break;
	default:
		break;   /* other types mean nothing on a session's stream */
	}
}

static size_t add(struct pollfd *pfd, size_t n, size_t cap, size_t slot, enum poll_role role,
		  int fd, short events)
{
	if (n == cap || events == 0)
		return n;
	pfd[n] = (struct pollfd){ fd, events, 0 };
	poll_slot[n] = (uint8_t)slot;
	poll_role[n] = (uint8_t)role;
	return n + 1;
}

size_t sessions_poll_add(struct pollfd *pfd, size_t cap)
{
	size_t n = 0;

	if (cap > SESSION_POLL_MAX)
		cap = SESSION_POLL_MAX;
	for (size_t i = 0; i < MM_MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		short reading = s->tx_credit > 0 ? POLLIN : 0;
		short writing = s->takes_input && (s->in_len > 0 || s->input_eof) ? POLLOUT : 0;

		if (s->stream == 0)
			continue;
		if (s->tty) {
			if (!s->tty_eof)
				n = add(pfd, n, cap, i, ROLE_TTY, s->out_fd, (short)(reading | writing));
			continue;
		}
		if (s->out_fd >= 0)
			n = add(pfd, n, cap, i, ROLE_OUT, s->out_fd, reading);
		if (s->err_fd >= 0)
			n = add(pfd, n, cap, i, ROLE_ERR, s->err_fd, reading);
		if (s->in_fd >= 0)
			n = add(pfd, n, cap, i, ROLE_IN, s->in_fd, writing);
	}
	poll_count = n;
	return n;
}

void sessions_poll_handle(const struct pollfd *pfd)
{
	const short any = POLLIN | POLLOUT | POLLHUP | POLLERR | POLLNVAL;

	for (size_t k = 0; k < poll_count; k++) {
		struct session *s = &sessions[poll_slot[k]];

		if ((pfd[k].revents & any) == 0)
			continue;
		switch (poll_role[k]) {
		case ROLE_OUT:
			pump_output(s, &s->out_fd, MM_STDOUT);
			break;
		case ROLE_ERR:
			pump_output(s, &s->err_fd, MM_STDERR);
			break;
		case ROLE_IN:
			flush_input(s);
			break;
		case ROLE_TTY:
			if (pfd[k].events & POLLIN)
				pump_output(s, &s->out_fd, MM_STDOUT);
			/* A hung-up terminal that takes no more bytes must not make us spin. */
			if (!s->tty_eof && (pfd[k].events & POLLOUT) && !flush_input(s) &&
			    (pfd[k].revents & (POLLHUP | POLLERR)) != 0)
				close_input(s);
			break;
		}
	}
	poll_count = 0;
}

bool sessions_reaped(pid_t pid, int wait_status, int64_t now)
{
	for (size_t i = 0; i < MM_MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];

		if (s->stream != 0 && !s->reaped && s->pid == pid) {
			s->reaped = true;
			s->wait_status = wait_status;
			s->drain_until = now + MM_DRAIN_AFTER_EXIT_MS;
			log_debug("session %lu: pid %d exited: status 0x%x", (unsigned long)s->stream,
				  (int)pid, wait_status);
			return true;
		}
	}
	return false;
}

void sessions_tick(int64_t now, int64_t *next)
{
	for (size_t i = 0; i < MM_MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		bool output_open = s->tty ? !s->tty_eof : s->out_fd >= 0 || s->err_fd >= 0;

		if (s->stream == 0 || !s->reaped)
			continue;
		/* No wait runs out while the host grants no credit (WINDOW restarts it): a
		 * slow reader must not lose the end of the output. */
		if (output_open && s->tx_credit == 0)
			continue;
		if (output_open && now < s->drain_until) {
			if (*next == 0 || s->drain_until < *next)
				*next = s->drain_until;
			continue;
		}
		supervisor_send_exit(s->stream, s->wait_status);
		free_session(s);
	}
}

void sessions_signal_all(int sig)
{
	for (size_t i = 0; i < MM_MAX_SESSIONS; i++)
		if (sessions[i].stream != 0 && !sessions[i].reaped)
			kill(-sessions[i].pid, sig);
}

void sessions_end_all(void)
{
	sessions_signal_all(SIGKILL);
	for (size_t i = 0; i < MM_MAX_SESSIONS; i++) {
		if (sessions[i].stream == 0)
			continue;
		log_debug("session %lu: ended without EXIT", (unsigned long)sessions[i].stream);
		free_session(&sessions[i]);
	}
}

void sessions_resume(int64_t now)
{
	for (size_t i = 0; i < MM_MAX_SESSIONS; i++)
		if (sessions[i].stream != 0 && sessions[i].reaped)
			sessions[i].drain_until = now + MM_DRAIN_AFTER_EXIT_MS;
}
