/* Workload start-up. Names in USER are resolved from the rootfs's /etc/passwd and
 * /etc/group by hand, with Docker's (runc's) rules, so any image libc works. */
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
#include <unistd.h>

#include "log.h"

#define PASSWD_PATH "/etc/passwd"
#define GROUP_PATH "/etc/group"
#define DB_LINE_MAX 4096      /* longer passwd/group lines are skipped */
#define DB_FIELDS_MAX 7       /* passwd has 7 fields, group 4 */
#define MAX_GROUPS 64         /* supplementary groups beyond this are dropped */
#define HOME_ENV_MAX (sizeof "HOME=" + DB_LINE_MAX)

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
	char *envp[MM_MAX_ENV + 3];  /* ENV records, PATH and HOME defaults, NULL */
};

static struct spawn_plan plan;          /* kept off PID 1's stack */
static struct passwd_entry passwd_found;
static char db_line[DB_LINE_MAX];
static char default_path_env[] = "PATH=" MM_DEFAULT_PATH;

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

/* The workload's environment is exactly the ENV records, plus PATH and HOME when
 * they are missing (as Docker adds them). */
static void build_env(const struct mm_config *cfg)
{
	size_t n = 0;
	bool has_home = false;

	plan.path = NULL;
	for (size_t i = 0; i < cfg->envc; i++) {
		plan.envp[n++] = cfg->envp[i];
		if (plan.path == NULL && has_prefix(cfg->envp[i], "PATH="))
			plan.path = cfg->envp[i] + sizeof "PATH=" - 1;
		if (has_prefix(cfg->envp[i], "HOME="))
			has_home = true;
	}
	if (plan.path == NULL) {
		plan.envp[n++] = default_path_env;
		plan.path = MM_DEFAULT_PATH;
	}
	if (!has_home) {
		snprintf(plan.home_env, sizeof plan.home_env, "HOME=%s", plan.cred.home);
		plan.envp[n++] = plan.home_env;
	}
	plan.envp[n] = NULL;
}

static int prepare_plan(const struct mm_config *cfg, char *err, size_t errlen)
{
	memset(&plan.cred, 0, sizeof plan.cred);
	if (cfg->user != NULL) {
		int status = resolve_user(cfg->user, &plan.cred, err, errlen);

		if (status != 0)
			return status;
	} else {
		bool known = find_passwd(NULL, getuid(), &passwd_found);

		snprintf(plan.cred.home, sizeof plan.cred.home, "%s",
			 known && passwd_found.home[0] != '\0' ? passwd_found.home : "/");
	}
	plan.cwd = cfg->cwd != NULL ? cfg->cwd : "/";
	plan.argv = cfg->argv;
	build_env(cfg);
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

/* In the child: stdio, session, credentials, cwd, signals, exec. Every fd except
 * 0-2 is close-on-exec, and main() keeps 0-2 open, so the pipes here are >= 3. */
__attribute__((noreturn))
static void run_child(int out_w, int err_w, int report_fd)
{
	int null_fd;

	if (setsid() < 0)
		child_fail(report_fd, STAGE_SETUP, "setsid", errno);
	if ((null_fd = open("/dev/null", O_RDONLY)) < 0)
		child_fail(report_fd, STAGE_SETUP, "open /dev/null", errno);
	if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(out_w, STDOUT_FILENO) < 0 ||
	    dup2(err_w, STDERR_FILENO) < 0)
		child_fail(report_fd, STAGE_SETUP, "dup2", errno);
	if (null_fd > STDERR_FILENO)
		close(null_fd);
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

static int describe_failure(const struct spawn_failure *f, const struct mm_config *cfg,
			    char *err, size_t errlen)
{
	const char *argv0 = cfg->argv[0];
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
		return say(denied, err, errlen, "USER: %s: %s: %s", cfg->user, f->what,
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

int spawn_workload(const struct mm_config *cfg, struct workload *w, char *err, size_t errlen)
{
	int out[2] = { -1, -1 }, errp[2] = { -1, -1 }, report[2] = { -1, -1 };
	struct spawn_failure failure;
	ssize_t n;
	pid_t pid;
	int status;

	w->pid = 0;
	w->out_fd = w->err_fd = -1;
	if ((status = prepare_plan(cfg, err, errlen)) != 0)
		return status;
	if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 ||
	    pipe2(report, O_CLOEXEC) != 0) {
		status = say(MM_STATUS_NOT_FOUND, err, errlen, "SPAWN: pipe: %s", strerror(errno));
		goto fail;
	}
	if ((pid = fork()) < 0) {
		status = say(MM_STATUS_NOT_FOUND, err, errlen, "SPAWN: fork: %s", strerror(errno));
		goto fail;
	}
	if (pid == 0)
		run_child(out[1], errp[1], report[1]);
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
		status = describe_failure(&failure, cfg, err, errlen);
		goto fail;
	}
	close_fd(&report[0]);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(errp[0], F_SETFL, O_NONBLOCK);
	w->pid = pid;
	w->out_fd = out[0];
	w->err_fd = errp[0];
	log_debug("workload %s: pid %d", cfg->argv[0], (int)pid);
	return 0;
fail:
	for (int i = 0; i < 2; i++) {
		close_fd(&out[i]);
		close_fd(&errp[i]);
		close_fd(&report[i]);
	}
	return status;
}
