/* Process start-up for the workload and exec sessions. Names in USER are resolved
 * from the rootfs's /etc/passwd and /etc/group by hand, with Docker's (runc's) rules,
 * so any image libc works. */
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "log.h"

#define PASSWD_PATH "/etc/passwd"
#define GROUP_PATH "/etc/group"
#define DB_LINE_MAX 4096      /* longer passwd/group lines are skipped */
#define DB_FIELDS_MAX 7       /* passwd has 7 fields, group 4 */
#define MAX_GROUPS 64         /* supplementary groups beyond this are dropped */
#define HOME_ENV_MAX (sizeof "HOME=" + DB_LINE_MAX)
#define PTS_PATH_MAX 64       /* "/dev/pts/N" */
#define ENV_DEFAULTS 3        /* PATH, HOME, TERM */

enum spawn_stage { STAGE_SETUP = 1, STAGE_USER, STAGE_CWD, STAGE_EXEC };

/* What the child writes to the parent when it cannot exec. */
struct spawn_failure {
	int32_t stage;
	int32_t err;
	char what[16];   /* the failing call, for the message */
};

struct credentials {
	bool change;                 /* USER given: set groups, gid, uid */
	uid_t uid;
	gid_t gid;
	size_t ngroups;
	gid_t groups[MAX_GROUPS];
	char home[DB_LINE_MAX];      /* from /etc/passwd, "/" if not found */
};

struct passwd_entry {
	char name[DB_LINE_MAX];
	uid_t uid;
	gid_t gid;
	char home[DB_LINE_MAX];
};

/* Spawn inputs prepared in the parent, so the child only makes system calls. */
struct spawn_plan {
	struct credentials cred;
	const char *cwd;
	char *const *argv;
	const char *path;            /* the workload's PATH, for the argv[0] lookup */
	char home_env[HOME_ENV_MAX];
	char *envp[MM_MAX_ENV + ENV_DEFAULTS + 1];  /* ENV records, defaults, NULL */
};

/* The child's stdio, set up by the parent: fds the child dups to 0-2. */
struct child_stdio {
	int in;       /* -1: /dev/null */
	int out;
	int err;
	int ctty;     /* the pty slave to make the controlling terminal, or -1 */
};

static struct spawn_plan plan;          /* kept off PID 1's stack */
static struct passwd_entry passwd_found;
static char db_line[DB_LINE_MAX];
static char default_path_env[] = "PATH=" MM_DEFAULT_PATH;
static char default_term_env[] = "TERM=" MM_DEFAULT_TERM;

/* Formats an ERROR payload ("CODE: message") and returns status. */
__attribute__((format(printf, 4, 5)))
static int say(int status, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return status;
}

/* A decimal id: digits only, below (uint32)-1, which means "no id" to the kernel. */
static bool parse_id(const char *s, uint32_t *out)
{
	uint64_t v = 0;

	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
		if (v >= UINT32_MAX)
			return false;
	}
	*out = (uint32_t)v;
	return true;
}

/* Splits a ':'-separated line in place; returns the number of fields. */
static size_t split_fields(char *line, char **fields, size_t max)
{
	size_t n = 0;

	line[strcspn(line, "\n")] = '\0';
	while (n < max) {
		char *colon = strchr(line, ':');

		fields[n++] = line;
		if (colon == NULL)
			break;
		*colon = '\0';
		line = colon + 1;
	}
	return n;
}

/* Reads the next line; lines that do not fit in cap are skipped whole. */
static bool next_line(FILE *f, char *line, size_t cap)
{
	while (fgets(line, (int)cap, f) != NULL) {
		size_t len = strlen(line);

		if (len > 0 && line[len - 1] != '\n' && !feof(f)) {
			int c;

			while ((c = getc(f)) != EOF && c != '\n')
				;
			continue;
		}
		return true;
	}
	return false;
}

/* Finds a passwd entry by name (name != NULL) or else by uid. */
static bool find_passwd(const char *name, uid_t uid, struct passwd_entry *out)
{
	FILE *f = fopen(PASSWD_PATH, "re");
	bool found = false;

	if (f == NULL)
		return false;
	while (!found && next_line(f, db_line, sizeof db_line)) {
		char *fld[DB_FIELDS_MAX];
		size_t n = split_fields(db_line, fld, DB_FIELDS_MAX);
		uint32_t id, gid;

		if (n < 4 || !parse_id(fld[2], &id) || !parse_id(fld[3], &gid))
			continue;
		if (name != NULL ? strcmp(fld[0], name) != 0 : id != uid)
			continue;
		snprintf(out->name, sizeof out->name, "%s", fld[0]);
		out->uid = id;
		out->gid = gid;
		snprintf(out->home, sizeof out->home, "%s", n > 5 ? fld[5] : "");
		found = true;
	}
	fclose(f);
	return found;
}

static bool find_group_id(const char *name, gid_t *gid)
{
	FILE *f = fopen(GROUP_PATH, "re");
	bool found = false;

	if (f == NULL)
		return false;
	while (!found && next_line(f, db_line, sizeof db_line)) {
		char *fld[DB_FIELDS_MAX];
		uint32_t id;

		if (split_fields(db_line, fld, DB_FIELDS_MAX) >= 3 && strcmp(fld[0], name) == 0 &&
		    parse_id(fld[2], &id)) {
			*gid = id;
			found = true;
		}
	}
	fclose(f);
	return found;
}

static void add_group(struct credentials *cred, gid_t gid)
{
	for (size_t i = 0; i < cred->ngroups; i++)
		if (cred->groups[i] == gid)
			return;
	if (cred->ngroups == MAX_GROUPS) {
		log_debug("user is in more than %d groups: dropping gid %u", MAX_GROUPS,
			  (unsigned)gid);
		return;
	}
	cred->groups[cred->ngroups++] = gid;
}

/* Adds every group of /etc/group that lists user as a member. */
static void add_member_groups(struct credentials *cred, const char *user)
{
	FILE *f = fopen(GROUP_PATH, "re");

	if (f == NULL)
		return;
	while (next_line(f, db_line, sizeof db_line)) {
		char *fld[DB_FIELDS_MAX];
		uint32_t id;
		char *member, *rest;

		if (split_fields(db_line, fld, DB_FIELDS_MAX) < 4 || !parse_id(fld[2], &id))
			continue;
		for (member = fld[3]; member != NULL; member = rest) {
			rest = strchr(member, ',');
			if (rest != NULL)
				*rest++ = '\0';
			if (strcmp(member, user) == 0) {
				add_group(cred, id);
				break;
			}
		}
	}
	fclose(f);
}

/* USER is uid, uid:gid, name or name:group (either side numeric or a name).
 * As in Docker: a uid missing from /etc/passwd gets gid 0; without an explicit
 * group the user's /etc/group memberships are its supplementary groups. */
static int resolve_user(const char *spec, struct credentials *cred, char *err, size_t errlen)
{
	char user[MM_MAX_STRING + 1];
	char *group;
	uint32_t id;
	bool known;

	snprintf(user, sizeof user, "%s", spec);
	group = strchr(user, ':');
	if (group != NULL)
		*group++ = '\0';
	if (parse_id(user, &id)) {
		known = find_passwd(NULL, id, &passwd_found);
		cred->uid = id;
	} else {
		known = find_passwd(user, 0, &passwd_found);
		if (!known)
			return say(MM_STATUS_NOT_FOUND, err, errlen,
				   "USER: unknown user \"%s\" (not in " PASSWD_PATH ")", user);
		cred->uid = passwd_found.uid;
	}
	cred->gid = known ? passwd_found.gid : 0;
	snprintf(cred->home, sizeof cred->home, "%s",
		 known && passwd_found.home[0] != '\0' ? passwd_found.home : "/");
	cred->ngroups = 0;
	if (group != NULL) {
		if (parse_id(group, &id))
			cred->gid = id;
		else if (!find_group_id(group, &cred->gid))
			return say(MM_STATUS_NOT_FOUND, err, errlen,
				   "USER: unknown group \"%s\" (not in " GROUP_PATH ")", group);
		add_group(cred, cred->gid);
	} else {
		add_group(cred, cred->gid);
		if (known)
			add_member_groups(cred, passwd_found.name);
	}
	cred->change = true;
	log_debug("user %s: uid %u gid %u, %zu groups", spec, (unsigned)cred->uid,
		  (unsigned)cred->gid, cred->ngroups);
	return 0;
}

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The environment is exactly the ENV records, plus PATH and HOME when they are
 * missing, and TERM on a TTY (as Docker adds them). */
static void build_env(const struct mm_process *proc)
{
	size_t n = 0;
	bool has_home = false, has_term = false;

	plan.path = NULL;
	for (size_t i = 0; i < proc->envc; i++) {
		plan.envp[n++] = proc->envp[i];
		if (plan.path == NULL && has_prefix(proc->envp[i], "PATH="))
			plan.path = proc->envp[i] + sizeof "PATH=" - 1;
		if (has_prefix(proc->envp[i], "HOME="))
			has_home = true;
		if (has_prefix(proc->envp[i], "TERM="))
			has_term = true;
	}
	if (plan.path == NULL) {
		plan.envp[n++] = default_path_env;
		plan.path = MM_DEFAULT_PATH;
	}
	if (!has_home) {
		snprintf(plan.home_env, sizeof plan.home_env, "HOME=%s", plan.cred.home);
		plan.envp[n++] = plan.home_env;
	}
	if (proc->tty && !has_term)
		plan.envp[n++] = default_term_env;
	plan.envp[n] = NULL;
}

static int prepare_plan(const struct mm_process *proc, char *err, size_t errlen)
{
	memset(&plan.cred, 0, sizeof plan.cred);
	if (proc->user != NULL) {
		int status = resolve_user(proc->user, &plan.cred, err, errlen);

		if (status != 0)
			return status;
	} else {
		bool known = find_passwd(NULL, getuid(), &passwd_found);

		snprintf(plan.cred.home, sizeof plan.cred.home, "%s",
			 known && passwd_found.home[0] != '\0' ? passwd_found.home : "/");
	}
	plan.cwd = proc->cwd != NULL ? proc->cwd : "/";
	plan.argv = proc->argv;
	build_env(proc);
	return 0;
}

__attribute__((noreturn))
static void child_fail(int report_fd, enum spawn_stage stage, const char *what, int err)
{
	struct spawn_failure f;
	ssize_t n;

	memset(&f, 0, sizeof f);
	f.stage = stage;
	f.err = err;
	snprintf(f.what, sizeof f.what, "%s", what);
	do
		n = write(report_fd, &f, sizeof f);
	while (n < 0 && errno == EINTR);
	_exit(MM_STATUS_NOT_FOUND);
}

static void reset_signals(void)
{
	struct sigaction sa;
	sigset_t none;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			sigaction(sig, &sa, NULL);   /* fails harmlessly for libc-reserved signals */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

/* execve through PATH as execvp does (but without its /bin/sh fallback on ENOEXEC,
 * as runc): returns the errno that explains the failure. */
static int exec_in_path(const char *file, char *const argv[], char *const envp[],
			const char *path)
{
	char candidate[PATH_MAX];
	size_t flen = strlen(file);
	bool seen_eacces = false;

	if (flen == 0)
		return ENOENT;
	if (strchr(file, '/') != NULL) {
		execve(file, argv, envp);
		return errno;
	}
	if (flen > NAME_MAX)
		return ENAMETOOLONG;
	for (const char *dir = path;;) {
		const char *end = strchr(dir, ':');
		size_t dlen = end != NULL ? (size_t)(end - dir) : strlen(dir);

		if (dlen + 1 + flen + 1 <= sizeof candidate) {
			size_t off = 0;

			if (dlen > 0) {   /* an empty entry means the working directory */
				memcpy(candidate, dir, dlen);
				candidate[dlen] = '/';
				off = dlen + 1;
			}
			memcpy(candidate + off, file, flen + 1);
			execve(candidate, argv, envp);
			switch (errno) {
			case EACCES:
				seen_eacces = true;
				break;
			case ENOENT:
			case ENOTDIR:
				break;
			default:
				return errno;
			}
		}
		if (end == NULL)
			break;
		dir = end + 1;
	}
	return seen_eacces ? EACCES : ENOENT;
}

/* In the child: session, stdio, credentials, cwd, signals, exec. Every fd except
 * 0-2 is close-on-exec, and main() keeps 0-2 open, so the fds here are >= 3. */
__attribute__((noreturn))
static void run_child(const struct child_stdio *io, int report_fd)
{
	int in = io->in;

	if (setsid() < 0)
		child_fail(report_fd, STAGE_SETUP, "setsid", errno);
	/* A new session has no controlling terminal: make the pty slave ours, so that
	 * the line discipline sends SIGINT, SIGWINCH, SIGHUP to our process group. */
	if (io->ctty >= 0 && ioctl(io->ctty, TIOCSCTTY, 0) != 0)
		child_fail(report_fd, STAGE_SETUP, "TIOCSCTTY", errno);
	if (in < 0 && (in = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
		child_fail(report_fd, STAGE_SETUP, "open /dev/null", errno);
	if (dup2(in, STDIN_FILENO) < 0 || dup2(io->out, STDOUT_FILENO) < 0 ||
	    dup2(io->err, STDERR_FILENO) < 0)
		child_fail(report_fd, STAGE_SETUP, "dup2", errno);
	if (plan.cred.change) {
		/* Groups and gid first: after setuid() we may no longer change them. */
		if (setgroups(plan.cred.ngroups, plan.cred.groups) != 0)
			child_fail(report_fd, STAGE_USER, "setgroups", errno);
		if (setgid(plan.cred.gid) != 0)
			child_fail(report_fd, STAGE_USER, "setgid", errno);
		if (setuid(plan.cred.uid) != 0)
			child_fail(report_fd, STAGE_USER, "setuid", errno);
	}
	if (chdir(plan.cwd) != 0)
		child_fail(report_fd, STAGE_CWD, "chdir", errno);
	reset_signals();
	child_fail(report_fd, STAGE_EXEC, "execve",
		   exec_in_path(plan.argv[0], plan.argv, plan.envp, plan.path));
}

static int describe_failure(const struct spawn_failure *f, const struct mm_process *proc,
			    char *err, size_t errlen)
{
	const char *argv0 = proc->argv[0];
	int denied = f->err == EACCES || f->err == EPERM ? MM_STATUS_DENIED : MM_STATUS_NOT_FOUND;

	switch (f->stage) {
	case STAGE_EXEC:
		if (f->err == ENOENT && strchr(argv0, '/') == NULL)
			return say(MM_STATUS_NOT_FOUND, err, errlen,
				   "EXEC_NOT_FOUND: %s: executable file not found in $PATH", argv0);
		if (f->err == ENOENT)
			return say(MM_STATUS_NOT_FOUND, err, errlen, "EXEC_NOT_FOUND: %s: %s", argv0,
				   strerror(f->err));
		return say(MM_STATUS_DENIED, err, errlen, "EXEC_DENIED: %s: %s", argv0,
			   strerror(f->err));
	case STAGE_CWD:
		return say(denied, err, errlen, "CWD: %s: %s", plan.cwd, strerror(f->err));
	case STAGE_USER:
		return say(denied, err, errlen, "USER: %s: %s: %s", proc->user, f->what,
			   strerror(f->err));
	default:
		return say(MM_STATUS_NOT_FOUND, err, errlen, "SPAWN: %s: %s", f->what,
			   strerror(f->err));
	}
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* A new pseudo-terminal of the requested size: master and slave, both close-on-exec.
 * The slave belongs to the session's user, so that it may reopen its terminal. */
static int open_pty(const struct mm_process *proc, int *master, int *slave)
{
	struct winsize ws = { .ws_row = proc->winsize.rows, .ws_col = proc->winsize.cols };
	char name[PTS_PATH_MAX];

	*master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*master < 0 || grantpt(*master) != 0 || unlockpt(*master) != 0 ||
	    ptsname_r(*master, name, sizeof name) != 0)
		return -1;
	if ((*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0)
		return -1;
	if (ioctl(*master, TIOCSWINSZ, &ws) != 0)
		return -1;
	if (plan.cred.change && fchown(*slave, plan.cred.uid, (gid_t)-1) != 0)
		log_debug("chown %s to uid %u: %s", name, (unsigned)plan.cred.uid, strerror(errno));
	return 0;
}

int spawn_process(const struct mm_process *proc, struct spawned *sp, char *err, size_t errlen)
{
	/* [0] read end, [1] write end; for a TTY, out[0] is the master, out[1] the slave. */
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, errp[2] = { -1, -1 }, report[2] = { -1, -1 };
	struct child_stdio io;
	struct spawn_failure failure;
	ssize_t n;
	pid_t pid;
	int status;

	sp->pid = 0;
	sp->out_fd = sp->err_fd = sp->in_fd = -1;
	if ((status = prepare_plan(proc, err, errlen)) != 0)
		return status;
	if (proc->tty) {
		if (open_pty(proc, &out[0], &out[1]) != 0) {
			status = say(MM_STATUS_NOT_FOUND, err, errlen, "SPAWN: pty: %s", strerror(errno));
			goto fail;
		}
		io = (struct child_stdio){ out[1], out[1], out[1], out[1] };
	} else {
		if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 ||
		    (proc->stdin_open && pipe2(in, O_CLOEXEC) != 0)) {
			status = say(MM_STATUS_NOT_FOUND, err, errlen, "SPAWN: pipe: %s", strerror(errno));
			goto fail;
		}
		io = (struct child_stdio){ in[0], out[1], errp[1], -1 };
	}
	if (pipe2(report, O_CLOEXEC) != 0) {
		status = say(MM_STATUS_NOT_FOUND, err, errlen, "SPAWN: pipe: %s", strerror(errno));
		goto fail;
	}
	if ((pid = fork()) < 0) {
		status = say(MM_STATUS_NOT_FOUND, err, errlen, "SPAWN: fork: %s", strerror(errno));
		goto fail;
	}
	if (pid == 0)
		run_child(&io, report[1]);
	close_fd(&in[0]);
	close_fd(&out[1]);
	close_fd(&errp[1]);
	close_fd(&report[1]);
	/* EOF: execve closed the pipe. A record: the child failed and _exit()ed; the
	 * main loop reaps it like any other child. */
	do
		n = read(report[0], &failure, sizeof failure);
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)sizeof failure) {
		failure.what[sizeof failure.what - 1] = '\0';
		status = describe_failure(&failure, proc, err, errlen);
		goto fail;
	}
	close_fd(&report[0]);
	sp->pid = pid;
	sp->out_fd = out[0];
	sp->err_fd = errp[0];
	sp->in_fd = in[1];
	fcntl(sp->out_fd, F_SETFL, O_NONBLOCK);
	if (sp->err_fd >= 0)
		fcntl(sp->err_fd, F_SETFL, O_NONBLOCK);
	if (sp->in_fd >= 0)
		fcntl(sp->in_fd, F_SETFL, O_NONBLOCK);
	log_debug("spawned %s%s: pid %d", proc->argv[0], proc->tty ? " on a pty" : "", (int)pid);
	return 0;
fail:
	for (int i = 0; i < 2; i++) {
		close_fd(&in[i]);
		close_fd(&out[i]);
		close_fd(&errp[i]);
		close_fd(&report[i]);
	}
	return status;
}
