/* mm-init: PID 1 of a MicroMachines guest. It mounts what a container expects, gets
 * its CONFIG over the host channel, sets up the network, mounts the volumes and shared
 * host directories, runs the workload, relays its output, exit and signals, serves exec
 * sessions, quiesces for a snapshot and takes a new identity after a restore
 * (docs/PROTOCOL.md, v1 to v5), and powers the machine off.
 *
 * main() reads like a script: options → signals → system → channel → CONFIG →
 * identity (clock, entropy, hostname, network) → volumes and shares → spawn →
 * loop { reap, forward, pump, serve sessions, quiesce } → EXIT → await POWEROFF →
 * power off.
 * Setup failures bail with a message; after that nothing exits without shutting down.
 *
 * When not PID 1 (getpid() != 1) it runs as an ordinary process for host tests: the
 * channel is $MM_INIT_CHANNEL, nothing is mounted, and "power off" is exit(). The
 * flag `host_mode` is checked only in main() and shut_down(); there mm-init makes
 * itself a child subreaper, so orphans come to it as they would to PID 1. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "disk.h"
#include "log.h"
#include "net.h"
#include "pid1.h"
#include "protocol.h"
#include "session.h"
#include "spawn.h"

#define POWEROFF_WAIT_MS 2000      /* wait for POWEROFF after EXIT (without STAY_UP) */
#define TERM_GRACE_MS 1000         /* SIGTERM to SIGKILL when shutting down */
#define CHANNEL_BACKOFF_MIN_MS 10  /* no host connected: retry reads after this... */
#define CHANNEL_BACKOFF_MAX_MS 1000 /* ...doubling up to this */
#define SHUTDOWN_POLL_MS 10        /* while ending processes, re-check at least this often */
#define SIGINFO_BATCH 16

#define CONFIG_ERROR_PREFIX "CONFIG: "
#define NET_ERROR_PREFIX "NET: "
/* signalfd, workload stdout and stderr, channel, then the sessions' fds */
#define POLL_FIXED 4
#define POLL_MAX (POLL_FIXED + SESSION_POLL_MAX)

/* Exit statuses in host-test mode (a guest powers off instead). */
#define HOST_EXIT_OK 0
#define HOST_EXIT_FAILED 1

struct supervisor {
	bool host_mode;
	int sfd;                       /* signalfd */
	struct mm_channel channel;
	int64_t channel_resume_at;     /* >0: channel paused after EOF until then */
	int channel_backoff_ms;
	struct spawned work;
	uint16_t version;              /* agreed in CONFIG */
	bool configured;               /* CONFIG and network accepted: v2 and v3 frames count */
	bool quiesced;                 /* v3: after QUIESCED, until RESUME or IDENTITY */
	bool running;                  /* workload started and not yet reaped */
	bool exited;                   /* workload reaped (or never started) */
	int wait_status;
	int64_t drain_from;            /* output is read for 500 ms from the exit (or resume) */
	bool exit_sent;
	bool stay_up;
	int64_t poweroff_at;           /* >0: shut down at this time */
	size_t volumes_mounted;        /* v4, v5: CONFIG's MOUNTs mounted (the first ones) */
};

static struct supervisor sup;
static struct mm_config config;
static struct mm_identity_msg identity_msg;
static uint8_t output_buf[MM_MAX_PAYLOAD];

/* Signals PID 1 reads from its signalfd; all but SIGCHLD and SIGPWR are forwarded. */
static const int handled_signals[] = {
	SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGPWR,
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	if (ms <= 0)
		return;
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Reaps every exited child, the one place that does: remembers the workload's
 * status and tells the sessions about theirs. */
static void reap(struct supervisor *s)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (s->running && pid == s->work.pid) {
			s->running = false;
			s->exited = true;
			s->wait_status = status;
			s->drain_from = now_ms();
			log_debug("workload %d exited: status 0x%x", (int)pid, status);
		} else if (!sessions_reaped(pid, status, now_ms())) {
			log_debug("reaped %d: status 0x%x", (int)pid, status);
		}
	}
}

/* True once every child has been reaped. PID 1 inherits every orphan; in a host
 * test mm-init is a child subreaper, so the same test holds. */
static bool all_gone(struct supervisor *s)
{
	reap(s);
	return waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD;
}

/* In a guest kill(-1) reaches every process but PID 1; a host test must only touch
 * the process groups of the workload and the sessions (each is a session leader).
 * True if some process was signalled. */
static bool signal_all(struct supervisor *s, int sig)
{
	bool any;

	if (!s->host_mode)
		return kill(-1, sig) == 0;
	any = s->work.pid > 0 && kill(-s->work.pid, sig) == 0;
	sessions_signal_all(sig);
	return any || !all_gone(s);
}

/* Ends every process and powers off; in host-test mode ends the workload's and the
 * sessions' process groups and exits with host_status. Never returns. */
__attribute__((noreturn))
static void shut_down(struct supervisor *s, int host_status)
{
	log_debug("shutting down");
	channel_close(&s->channel);
	if (signal_all(s, SIGTERM)) {
		int64_t deadline = now_ms() + TERM_GRACE_MS, left;

		while (!all_gone(s) && (left = deadline - now_ms()) > 0) {
			struct pollfd pfd = { s->sfd, POLLIN, 0 };
			struct signalfd_siginfo si[SIGINFO_BATCH];

			if (poll(&pfd, 1, left < SHUTDOWN_POLL_MS ? (int)left : SHUTDOWN_POLL_MS) > 0)
				while (read(s->sfd, si, sizeof si) > 0)
					;   /* only SIGCHLD matters now, and all_gone() reaps */
		}
		signal_all(s, SIGKILL);
		reap(s);
	}
	if (s->host_mode)
		exit(host_status);
	disk_unmount_volumes(&config.mounts, s->volumes_mounted);
	sync();
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) != 0)
		log_debug("remount / read-only: %s", strerror(errno));
	pid1_power_off();
}

/* Setup failed before the workload could run: nothing to end but ourselves. */
__attribute__((noreturn, format(printf, 2, 3)))
static void bail(struct supervisor *s, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_error("%s", msg);
	shut_down(s, HOST_EXIT_FAILED);
}

/* A frame the host must get; losing the channel here ends the machine. */
static void send_frame(struct supervisor *s, uint8_t type, uint32_t stream, const void *payload,
		       size_t len)
{
	if (channel_send(&s->channel, type, stream, payload, len) != 0)
		bail(s, "lost the channel to the host");
}

/* An ERROR (or IDENTITY_RESULT) message's length: at most MM_MAX_ERROR bytes, cut on a
 * UTF-8 boundary. */
static size_t message_len(const char *message)
{
	return mm_utf8_whole_len(message, strnlen(message, MM_MAX_ERROR));
}

static void send_error(struct supervisor *s, uint32_t stream, const char *message)
{
	log_debug("ERROR on stream %lu: %s", (unsigned long)stream, message);
	send_frame(s, MM_ERROR, stream, message, message_len(message));
}

static void send_exit_frame(struct supervisor *s, uint32_t stream, int32_t status, int32_t signal)
{
	uint8_t payload[8];

	mm_put_u32(payload, (uint32_t)status);
	mm_put_u32(payload + 4, (uint32_t)signal);
	log_debug("EXIT status %d signal %d (stream %lu)", (int)status, (int)signal,
		  (unsigned long)stream);
	send_frame(s, MM_EXIT, stream, payload, sizeof payload);
}

/* The workload's EXIT: from here on, without STAY_UP, the machine powers off. */
static void send_exit(struct supervisor *s, int32_t status, int32_t signal)
{
	send_exit_frame(s, MM_STREAM_CONTROL, status, signal);
	s->exit_sent = true;
	if (!s->stay_up)
		s->poweroff_at = now_ms() + POWEROFF_WAIT_MS;
}

/* EXIT's fields from a wait status: the exit code, or 128+signal as in a shell. */
static void exit_fields(int wait_status, int32_t *status, int32_t *signal)
{
	if (WIFSIGNALED(wait_status)) {
		*signal = WTERMSIG(wait_status);
		*status = 128 + *signal;
	} else {
		*signal = 0;
		*status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 0;
	}
}

static void send_ready(struct supervisor *s)
{
	uint8_t payload[4];

	mm_put_u32(payload, (uint32_t)s->work.pid);
	send_frame(s, MM_READY, MM_STREAM_CONTROL, payload, sizeof payload);
}

static void send_hello(struct supervisor *s)
{
	uint8_t payload[4 + MM_MAX_AGENT_NAME];
	size_t name_len = sizeof MM_AGENT_NAME - 1;

	_Static_assert(sizeof MM_AGENT_NAME - 1 <= MM_MAX_AGENT_NAME, "agent name too long");
	mm_put_u16(payload, MM_PROTOCOL_MIN);
	mm_put_u16(payload + 2, MM_PROTOCOL_MAX);
	memcpy(payload + 4, MM_AGENT_NAME, name_len);
	send_frame(s, MM_HELLO, MM_STREAM_CONTROL, payload, 4 + name_len);
}

/* The sessions' way to the channel (session.h). */
void supervisor_send(uint8_t type, uint32_t stream, const void *payload, size_t len)
{
	send_frame(&sup, type, stream, payload, len);
}

void supervisor_send_error(uint32_t stream, const char *message)
{
	send_error(&sup, stream, message);
}

void supervisor_send_exit(uint32_t stream, int wait_status)
{
	int32_t status, signal;

	exit_fields(wait_status, &status, &signal);
	send_exit_frame(&sup, stream, status, signal);
}

void supervisor_violation(const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	bail(&sup, "%s", msg);
}

static int setup_signals(struct supervisor *s)
{
	sigset_t set;

	sigemptyset(&set);
	for (size_t i = 0; i < sizeof handled_signals / sizeof handled_signals[0]; i++)
		sigaddset(&set, handled_signals[i]);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		return -1;
	/* A host that hangs up must show up as a write error, not kill us. */
	signal(SIGPIPE, SIG_IGN);
	s->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	return s->sfd < 0 ? -1 : 0;
}

/* The channel read EOF: no host connected. Pause reads (a virtio port would report
 * EOF at once again) or, if this EOF is final, give up. */
static void channel_eof(struct supervisor *s)
{
	if (s->channel.eof_is_final)
		bail(s, "the host closed the channel");
	s->channel_resume_at = now_ms() + s->channel_backoff_ms;
	log_debug("channel: no host connected; retrying in %d ms", s->channel_backoff_ms);
	s->channel_backoff_ms *= 2;
	if (s->channel_backoff_ms > CHANNEL_BACKOFF_MAX_MS)
		s->channel_backoff_ms = CHANNEL_BACKOFF_MAX_MS;
}

/* The next frame from the receive buffer: 1 got one, 0 need more bytes. A frame
 * with `len` out of range ends the channel and the machine. */
static int next_frame(struct supervisor *s, struct mm_frame *f)
{
	uint32_t bad_len = 0;
	int r = mm_rx_next(&s->channel.rx, f, &bad_len);

	if (r < 0)
		bail(s, "protocol error: frame length %lu out of range [%d, %d]",
		     (unsigned long)bad_len, MM_LEN_MIN, MM_LEN_MAX);
	return r;
}

/* Blocks until CONFIG arrives (handling POWEROFF, skipping anything else) and
 * leaves its payload in config; returns MM_PARSE_OK, or the kind of rule it breaks
 * with the reason in err. */
static int await_config(struct supervisor *s, char *err, size_t errlen)
{
	for (;;) {
		struct mm_frame f;
		ssize_t n;

		while (next_frame(s, &f) == 1) {
			if (f.stream != MM_STREAM_CONTROL)
				continue;
			if (f.type == MM_POWEROFF)
				shut_down(s, HOST_EXIT_OK);
			if (f.type != MM_CONFIG) {
				log_debug("frame type %u before CONFIG: ignored", f.type);
				continue;
			}
			return mm_config_parse(&config, f.payload, f.payload_len, err, errlen);
		}
		n = channel_fill(&s->channel);
		if (n > 0) {
			s->channel_backoff_ms = CHANNEL_BACKOFF_MIN_MS;
		} else if (n == 0) {
			channel_eof(s);
			sleep_ms(s->channel_resume_at - now_ms());
			s->channel_resume_at = 0;
		} else {
			bail(s, "channel: read: %s", strerror(errno));
		}
	}
}

/* Signals go to the workload's process only, as `docker kill` does. */
static void forward_signal(struct supervisor *s, int sig)
{
	if (!s->running)
		return;
	if (kill(s->work.pid, sig) != 0)
		log_debug("kill %d %d: %s", (int)s->work.pid, sig, strerror(errno));
	else
		log_debug("signal %d -> workload %d", sig, (int)s->work.pid);
}

static void handle_signals(struct supervisor *s)
{
	struct signalfd_siginfo si[SIGINFO_BATCH];
	ssize_t n;

	while ((n = read(s->sfd, si, sizeof si)) > 0) {
		for (size_t i = 0; i < (size_t)n / sizeof si[0]; i++) {
			int sig = (int)si[i].ssi_signo;

			if (sig == SIGCHLD)
				reap(s);
			else if (sig == SIGPWR)
				shut_down(s, HOST_EXIT_OK);
			else
				forward_signal(s, sig);
		}
	}
}

/* Reads once from a workload pipe and relays what it got; closes it at EOF. After
 * EXIT the host accepts no more output: what background processes still write is
 * read and dropped, so that they never block on a full pipe. */
static void pump_output(struct supervisor *s, int *fd, uint8_t type)
{
	ssize_t n = read(*fd, output_buf, sizeof output_buf);

	if (n > 0 && !s->exit_sent) {
		send_frame(s, type, MM_STREAM_CONTROL, output_buf, (size_t)n);
	} else if (n > 0) {
		log_debug("dropped %zd bytes of output written after EXIT", n);
	} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
		close(*fd);
		*fd = -1;
	}
}

/* True once CONFIG agreed on version v (or a later one) and it and the network were
 * accepted; until then, and on a machine going down, that version's frames are
 * unknown types. */
static bool speaks(const struct supervisor *s, uint16_t v)
{
	return s->configured && s->version >= v;
}

/* Applies an identity in PROTOCOL.md's order: clock, entropy, hostname, network (MAC,
 * address, route, then /etc/resolv.conf and /etc/hosts). Only the network can fail:
 * -1 with "NET: ..." in err. A host test only validates: it must not touch the host's
 * clock, RNG, hostname, eth0 or /etc. */
static int apply_identity(struct supervisor *s, const struct mm_identity *id, char *err,
			  size_t errlen)
{
	if (s->host_mode)
		return 0;
	if (id->has_clock)
		pid1_set_clock(id->clock_ns);
	if (id->seed_len > 0)
		pid1_add_entropy(id->seed, id->seed_len);
	if (id->hostname != NULL)
		pid1_set_hostname(id->hostname);
	return net_apply(&id->net, err, errlen);
}

/* Mounts CONFIG's volumes (v4) and shared host directories (v5) in the records' order:
 * -1 with "MOUNT: ..." in err if one fails. A host test only validates: it must not
 * mount anything on the host. */
static int mount_volumes(struct supervisor *s, char *err, size_t errlen)
{
	if (!s->host_mode)
		return disk_mount_volumes(&config.mounts, &s->volumes_mounted, err, errlen);
	for (size_t i = 0; i < config.mounts.count; i++) {
		const struct mm_mount *m = &config.mounts.list[i];

		log_debug("%s %s at %s%s: not mounted in host-test mode", disk_mount_what(m->kind),
			  m->name, m->path, m->read_only ? ", read-only" : "");
	}
	return 0;
}

/* QUIESCE: QUIESCED is the last frame until the guest leaves quiesce. Meanwhile no
 * output is read, no EXIT is sent and no wait runs out (see leave_quiesce). */
static void quiesce(struct supervisor *s)
{
	if (s->quiesced) {
		log_debug("QUIESCE while quiesced: ignored");
		return;
	}
	send_frame(s, MM_QUIESCED, MM_STREAM_CONTROL, NULL, 0);
	s->quiesced = true;
	log_debug("quiesced");
}

/* Carries on as before, except that the waits quiesce held start over: 500 ms for
 * the output of a process that ended (no output was read meanwhile), and 2 s for
 * POWEROFF after EXIT. */
static void leave_quiesce(struct supervisor *s)
{
	int64_t now = now_ms();

	if (!s->quiesced)
		return;
	s->quiesced = false;
	if (s->exited)
		s->drain_from = now;
	if (s->poweroff_at > 0)
		s->poweroff_at = now + POWEROFF_WAIT_MS;
	sessions_resume(now);
	log_debug("resumed");
}

/* IDENTITY: leave quiesce, end the exec sessions (their clients were on the host the
 * snapshot was taken from), apply the records, answer IDENTITY_RESULT. The machine
 * stays up whatever the result: the host decides. */
static void renew_identity(struct supervisor *s, const struct mm_frame *f)
{
	static char reason[MM_MAX_ERROR + 1], result[sizeof CONFIG_ERROR_PREFIX + MM_MAX_ERROR];
	int r = mm_identity_parse(&identity_msg, s->version, f->payload, f->payload_len, reason,
				  sizeof reason);

	leave_quiesce(s);
	sessions_end_all();
	result[0] = '\0';
	if (r != MM_PARSE_OK)
		snprintf(result, sizeof result, "%s%s",
			 r == MM_PARSE_NET ? NET_ERROR_PREFIX : CONFIG_ERROR_PREFIX, reason);
	else
		apply_identity(s, &identity_msg.id, result, sizeof result);   /* NET: ... if it fails */
	if (result[0] != '\0')
		log_error("IDENTITY: %s", result);
	else
		log_debug("IDENTITY applied");
	send_frame(s, MM_IDENTITY_RESULT, MM_STREAM_CONTROL, result, message_len(result));
}

/* A frame of version 3 (quiesce, identity): true if it was one and has been handled.
 * While quiesced, every frame but RESUME, IDENTITY and POWEROFF is dropped unread:
 * the host promised to send no other. */
static bool handle_v3_frame(struct supervisor *s, const struct mm_frame *f)
{
	if (!speaks(s, 3))
		return false;
	if (f->type >= MM_QUIESCE && f->type <= MM_IDENTITY_RESULT &&
	    f->stream != MM_STREAM_CONTROL)
		bail(s, "protocol error: frame type %u on stream %lu", f->type,
		     (unsigned long)f->stream);
	switch (f->type) {
	case MM_QUIESCE:
		quiesce(s);
		return true;
	case MM_RESUME:
		leave_quiesce(s);   /* when not quiesced: nothing to do */
		return true;
	case MM_IDENTITY:
		renew_identity(s, f);
		return true;
	case MM_POWEROFF:
		return false;       /* obeyed as always */
	default:
		if (s->quiesced)
			log_debug("frame type %u while quiesced: dropped", f->type);
		return s->quiesced;
	}
}

/* A frame of version 2 (sessions): true if it was one and has been handled. */
static bool handle_session_frame(struct supervisor *s, const struct mm_frame *f)
{
	if (!speaks(s, 2))
		return false;   /* v1, or the machine is going down: unknown types */
	if (f->type == MM_EXEC) {
		sessions_exec(f->stream, s->version, f->payload, f->payload_len);
		return true;
	}
	if (f->type != MM_STDIN && f->type != MM_SIGNAL && f->type != MM_RESIZE &&
	    f->type != MM_WINDOW)
		return false;
	if (f->stream != MM_STREAM_CONTROL) {
		sessions_frame(f, now_ms());
		return true;
	}
	if (f->type == MM_SIGNAL)
		return false;   /* the workload's, as in v1 */
	/* The workload reads /dev/null and its output has no credit: nothing to do. */
	if (f->type != MM_STDIN && f->payload_len < 4)
		bail(s, "protocol error: frame type %u with a payload of %zu bytes", f->type,
		     f->payload_len);
	return true;
}

static void handle_frame(struct supervisor *s, const struct mm_frame *f)
{
	if (handle_v3_frame(s, f) || handle_session_frame(s, f))
		return;
	if (f->stream != MM_STREAM_CONTROL) {
		log_debug("frame type %u on stream %lu: ignored", f->type, (unsigned long)f->stream);
		return;
	}
	switch (f->type) {
	case MM_SIGNAL: {
		uint32_t sig;

		if (f->payload_len < 4)
			bail(s, "protocol error: SIGNAL payload of %zu bytes", f->payload_len);
		sig = mm_get_u32(f->payload);
		if (sig == 0 || sig >= NSIG)
			log_debug("SIGNAL %lu: no such signal, ignored", (unsigned long)sig);
		else
			forward_signal(s, (int)sig);
		break;
	}
	case MM_POWEROFF:
		shut_down(s, HOST_EXIT_OK);
	case MM_CONFIG:
		log_debug("second CONFIG: ignored");
		break;
	default:
		break;   /* STDIN is reserved in v1; unknown types are ignored */
	}
}

/* Handles the whole frames in the receive buffer. */
static void handle_buffered_frames(struct supervisor *s)
{
	struct mm_frame f;

	while (next_frame(s, &f) == 1)
		handle_frame(s, &f);
}

static void read_channel(struct supervisor *s)
{
	ssize_t n = channel_fill(&s->channel);

	if (n == 0) {
		channel_eof(s);
		return;
	}
	if (n < 0) {
		if (errno == EAGAIN)
			return;
		bail(s, "channel: read: %s", strerror(errno));
	}
	s->channel_backoff_ms = CHANNEL_BACKOFF_MIN_MS;
	handle_buffered_frames(s);
}

static void report_exit(struct supervisor *s)
{
	int32_t status, signal;

	exit_fields(s->wait_status, &status, &signal);
	send_exit(s, status, signal);
}

static void consider(int64_t at, int64_t *next)
{
	if (at > 0 && (*next == 0 || at < *next))
		*next = at;
}

/* The main loop: reap, forward signals, pump output, serve the sessions and the
 * channel, report EXIT, wait for POWEROFF. While quiesced only the first and the
 * channel go on. Never returns. */
__attribute__((noreturn))
static void supervise(struct supervisor *s)
{
	handle_buffered_frames(s);   /* those that came in the same read as CONFIG */
	for (;;) {
		struct pollfd pfd[POLL_MAX];
		nfds_t n = 0, sess_i;
		int out_i = -1, err_i = -1, chan_i = -1;
		int64_t now, next = 0;
		int timeout = -1;

		/* First, as it frees the slots of sessions that are done. */
		if (!s->quiesced)
			sessions_tick(now_ms(), &next);

		pfd[n++] = (struct pollfd){ s->sfd, POLLIN, 0 };
		if (s->work.out_fd >= 0 && !s->quiesced) {
			out_i = (int)n;
			pfd[n++] = (struct pollfd){ s->work.out_fd, POLLIN, 0 };
		}
		if (s->work.err_fd >= 0 && !s->quiesced) {
			err_i = (int)n;
			pfd[n++] = (struct pollfd){ s->work.err_fd, POLLIN, 0 };
		}
		if (s->channel_resume_at == 0) {
			chan_i = (int)n;
			pfd[n++] = (struct pollfd){ s->channel.fd, POLLIN, 0 };
		}
		sess_i = n;
		if (!s->quiesced) {
			n += sessions_poll_add(pfd + n, POLL_MAX - n);
			if (s->exited && !s->exit_sent)
				consider(s->drain_from + MM_DRAIN_AFTER_EXIT_MS, &next);
			consider(s->poweroff_at, &next);
		}
		consider(s->channel_resume_at, &next);
		if (next > 0) {
			now = now_ms();
			timeout = next > now ? (int)(next - now) : 0;
		}

		if (poll(pfd, n, timeout) < 0 && errno != EINTR)
			bail(s, "poll: %s", strerror(errno));

		if (pfd[0].revents != 0)
			handle_signals(s);
		if (out_i >= 0 && pfd[out_i].revents != 0)
			pump_output(s, &s->work.out_fd, MM_STDOUT);
		if (err_i >= 0 && pfd[err_i].revents != 0)
			pump_output(s, &s->work.err_fd, MM_STDERR);
		sessions_poll_handle(pfd + sess_i);
		if (chan_i >= 0 && pfd[chan_i].revents != 0)
			read_channel(s);

		now = now_ms();
		if (s->channel_resume_at > 0 && now >= s->channel_resume_at)
			s->channel_resume_at = 0;
		if (s->quiesced)
			continue;
		if (s->exited && !s->exit_sent &&
		    ((s->work.out_fd < 0 && s->work.err_fd < 0) ||
		     now >= s->drain_from + MM_DRAIN_AFTER_EXIT_MS))
			report_exit(s);
		if (s->poweroff_at > 0 && now >= s->poweroff_at) {
			log_debug("no POWEROFF within %d ms of EXIT", POWEROFF_WAIT_MS);
			shut_down(s, HOST_EXIT_OK);
		}
	}
}

/* The workload could not start: ERROR and EXIT with status, then serve the channel
 * until power-off. STAY_UP counts only once CONFIG and the network were accepted. */
__attribute__((noreturn))
static void fail_start(struct supervisor *s, const char *message, int status)
{
	send_error(s, MM_STREAM_CONTROL, message);
	s->exited = true;
	send_exit(s, status, 0);
	supervise(s);
}

/* Host-test mode may start with 0-2 closed; the workload's pipes must not land there. */
static void keep_stdio_open(void)
{
	for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
			return;
}

int main(void)
{
	struct supervisor *s = &sup;
	struct boot_options opts;
	/* send_error() cuts at MM_MAX_ERROR bytes, on a UTF-8 boundary */
	static char err[sizeof CONFIG_ERROR_PREFIX + MM_MAX_ERROR], reason[MM_MAX_ERROR + 1];
	int status;

	s->host_mode = getpid() != 1;
	s->sfd = -1;
	s->channel.fd = -1;
	s->channel_backoff_ms = CHANNEL_BACKOFF_MIN_MS;
	s->work.out_fd = s->work.err_fd = s->work.in_fd = -1;

	if (s->host_mode) {
		keep_stdio_open();
		prctl(PR_SET_CHILD_SUBREAPER, 1);   /* orphans come to us, as to PID 1 */
	} else {
		pid1_setup_early();
	}
	boot_options_read(s->host_mode, &opts);
	log_verbose = opts.debug;
	if (opts.probe) {
		static const char probe_ok[] = "mm-init: probe ok\n";

		ssize_t written = write(STDERR_FILENO, probe_ok, sizeof probe_ok - 1);

		(void)written;   /* if the console is gone there is nowhere else to say it */
		if (s->host_mode)
			return HOST_EXIT_OK;
		pid1_power_off();
	}
	log_debug("starting (%s)", s->host_mode ? "host-test mode" : "PID 1");

	if (setup_signals(s) != 0)
		bail(s, "signals: %s", strerror(errno));
	if (!s->host_mode) {
		pid1_setup();
		if (opts.growfs)
			pid1_grow_root();
	}
	if (channel_open(&s->channel, s->host_mode) != 0)
		bail(s, "no channel to the host");
	send_hello(s);

	/* CONFIG: a record breaking a rule is ERROR CONFIG (or NET) and EXIT 127. */
	status = await_config(s, reason, sizeof reason);
	if (status != MM_PARSE_OK) {
		snprintf(err, sizeof err, "%s%s",
			 status == MM_PARSE_NET ? NET_ERROR_PREFIX : CONFIG_ERROR_PREFIX, reason);
		fail_start(s, err, MM_STATUS_NOT_FOUND);
	}
	s->version = config.version;
	/* The identity, network included, is set before the workload, which may need it
	 * at once. */
	if (apply_identity(s, &config.id, err, sizeof err) != 0)
		fail_start(s, err, MM_STATUS_NOT_FOUND);
	/* Then the volumes (v4) and shares (v5), which the workload may need at once as well. */
	if (mount_volumes(s, err, sizeof err) != 0)
		fail_start(s, err, MM_STATUS_NOT_FOUND);

	s->stay_up = (config.flags & MM_FLAG_STAY_UP) != 0;
	s->configured = true;
	status = spawn_process(&config.proc, &s->work, err, sizeof err);
	if (status != 0)
		fail_start(s, err, status);
	log_debug("workload %s: pid %d", config.proc.argv[0], (int)s->work.pid);
	s->running = true;
	send_ready(s);
	supervise(s);
}
