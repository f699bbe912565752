/* Unit tests for net.c's file writing: /etc/resolv.conf and /etc/hosts replaced under a
 * temporary root, never through a symlink. Built and run by `make check`. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net.h"

#define ROOT_CAP 256
#define PATH_CAP 512
#define FILE_CAP 4096

static int failures;
static char err[MM_MAX_ERROR + 1];
static char root[ROOT_CAP];

#define CHECK(cond) do { \
	if (!(cond)) { failures++; fprintf(stderr, "%s:%d: %s (err: %s)\n", __FILE__, __LINE__, #cond, err); } \
} while (0)

static const char *at(const char *rel)
{
	static char path[4][PATH_CAP];
	static int next;
	char *p = path[next++ % 4];

	snprintf(p, PATH_CAP, "%s/%s", root, rel);
	return p;
}

static const char *slurp(const char *rel)
{
	static char buf[FILE_CAP];
	int fd = open(at(rel), O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);

	if (fd >= 0)
		close(fd);
	buf[n < 0 ? 0 : n] = '\0';
	return n < 0 ? NULL : buf;
}

static void put(const char *rel, const char *content)
{
	int fd = open(at(rel), O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || write(fd, content, strlen(content)) < 0)
		failures++;
	if (fd >= 0)
		close(fd);
}

static bool is_regular(const char *rel)
{
	struct stat st;

	return lstat(at(rel), &st) == 0 && S_ISREG(st.st_mode);
}

static void fresh_root(void)
{
	char cmd[ROOT_CAP + 16];

	if (root[0] != '\0') {
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
		if (system(cmd) != 0)
			failures++;
	}
	snprintf(root, sizeof root, "%s/mm-net-test-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(root) == NULL) {
		perror("mkdtemp");
		exit(1);
	}
}

int main(void)
{
	struct mm_net net;
	struct stat st;

	memset(&net, 0, sizeof net);
	net.dns_count = 2;
	net.dns[0] = "10.88.0.1";
	net.dns[1] = "2001:db8::53";
	net.hosts_count = 1;
	net.hosts[0] = "10.88.0.5 web";

	/* No /etc yet: created, both files written. */
	fresh_root();
	CHECK(net_write_files(&net, root, err, sizeof err) == 0);
	CHECK(stat(at("etc"), &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0755);
	CHECK(slurp("etc/resolv.conf") != NULL &&
	      strcmp(slurp("etc/resolv.conf"), "nameserver 10.88.0.1\nnameserver 2001:db8::53\n") == 0);
	CHECK(slurp("etc/hosts") != NULL &&
	      strcmp(slurp("etc/hosts"), "127.0.0.1\tlocalhost\n::1\tlocalhost\n10.88.0.5 web\n") == 0);
	CHECK(stat(at("etc/hosts"), &st) == 0 && (st.st_mode & 07777) == 0644);
	CHECK(access(at("etc/.hosts.mm-init"), F_OK) != 0);

	/* Symlinks in /etc (also a stale temporary name) are replaced, not followed. */
	fresh_root();
	CHECK(mkdir(at("etc"), 0755) == 0);
	put("outside", "keep\n");
	CHECK(symlink("../outside", at("etc/resolv.conf")) == 0);
	CHECK(symlink("/nonexistent/target", at("etc/hosts")) == 0);
	CHECK(symlink("../outside", at("etc/.hosts.mm-init")) == 0);
	CHECK(net_write_files(&net, root, err, sizeof err) == 0);
	CHECK(is_regular("etc/resolv.conf") && is_regular("etc/hosts"));
	CHECK(strcmp(slurp("outside"), "keep\n") == 0);
	CHECK(strncmp(slurp("etc/resolv.conf"), "nameserver ", 11) == 0);

	/* /etc itself a symlink: refused, nothing written where it points. */
	fresh_root();
	CHECK(mkdir(at("elsewhere"), 0755) == 0);
	CHECK(symlink("elsewhere", at("etc")) == 0);
	CHECK(net_write_files(&net, root, err, sizeof err) != 0);
	CHECK(strncmp(err, "NET: /etc is not a directory", 28) == 0);
	CHECK(access(at("elsewhere/resolv.conf"), F_OK) != 0 && access(at("elsewhere/hosts"), F_OK) != 0);

	/* /etc a file: refused too. */
	fresh_root();
	put("etc", "not a directory\n");
	CHECK(net_write_files(&net, root, err, sizeof err) != 0 && strncmp(err, "NET: ", 5) == 0);

	/* Only the files whose records are present are written. */
	fresh_root();
	net.dns_count = 0;
	CHECK(net_write_files(&net, root, err, sizeof err) == 0);
	CHECK(access(at("etc/resolv.conf"), F_OK) != 0 && is_regular("etc/hosts"));
	net.hosts_count = 0;
	fresh_root();
	CHECK(net_write_files(&net, root, err, sizeof err) == 0 && access(at("etc"), F_OK) != 0);

	/* A directory in the way of a file: an error, not a crash. */
	fresh_root();
	net.dns_count = 1;
	CHECK(mkdir(at("etc"), 0755) == 0 && mkdir(at("etc/resolv.conf"), 0755) == 0);
	CHECK(net_write_files(&net, root, err, sizeof err) != 0 && strstr(err, "resolv.conf") != NULL);
	CHECK(access(at("etc/.resolv.conf.mm-init"), F_OK) != 0);

	fresh_root();   /* removes the last one */
	rmdir(root);
	if (failures != 0) {
		fprintf(stderr, "net-test: %d failure(s)\n", failures);
		return 1;
	}
	printf("net-test: ok\n");
	return 0;
}
