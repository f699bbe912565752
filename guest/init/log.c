/* Console logging for mm-init. Lines longer than LOG_LINE_MAX are cut, never
 * split, so a hostile string in a message cannot flood the console. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define LOG_LINE_MAX 512
#define LOG_PREFIX "mm-init: "

bool log_verbose = false;

static void log_line(const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX];
	size_t used = sizeof LOG_PREFIX - 1;
	size_t room = sizeof line - used - 1;   /* keep one byte for '\n' */
	int n;
	size_t off = 0;
	int saved = errno;

	memcpy(line, LOG_PREFIX, used);
	n = vsnprintf(line + used, room, fmt, ap);
	if (n > 0)
		used += (size_t)n < room ? (size_t)n : room - 1;
	line[used++] = '\n';
	while (off < used) {
		ssize_t w = write(STDERR_FILENO, line + off, used - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	errno = saved;
}

void log_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
}

void log_debug(const char *fmt, ...)
{
	va_list ap;

	if (!log_verbose)
		return;
	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
}
