/* Opening the host channel and moving whole frames over it. Writes block until the
 * host reads (a virtio port blocks until a host connects); reads are one read(2). */
#include "channel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define VPORT_CLASS_DIR "/sys/class/virtio-ports"
#define VPORT_PATH_MAX 512
#define VPORT_NAME_MAX 64
/* The port's name arrives from the host after the device probes: allow it time. */
#define VPORT_WAIT_MS 5000
#define VPORT_RETRY_MS 20

static uint8_t tx_frame[MM_FRAME_MAX];

/* Reads the port's name file into name (NUL-terminated, newline dropped). */
static int read_port_name(const char *port, char *name, size_t cap)
{
	char path[VPORT_PATH_MAX];
	ssize_t n;
	int fd;

	if ((size_t)snprintf(path, sizeof path, VPORT_CLASS_DIR "/%s/name", port) >= sizeof path)
		return -1;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	do
		n = read(fd, name, cap - 1);
	while (n < 0 && errno == EINTR);
	close(fd);
	if (n < 0)
		return -1;
	while (n > 0 && (name[n - 1] == '\n' || name[n - 1] == '\0'))
		n--;
	name[n] = '\0';
	return 0;
}

/* Opens /dev/<port> for the port named MM_PORT_NAME; -1 if not (yet) there. */
static int open_virtio_port(void)
{
	DIR *dir = opendir(VPORT_CLASS_DIR);
	struct dirent *de;
	int fd = -1;

	if (dir == NULL)
		return -1;
	errno = ENOENT;
	while ((de = readdir(dir)) != NULL) {
		char name[VPORT_NAME_MAX];
		char dev[VPORT_PATH_MAX];

		if (de->d_name[0] == '.')
			continue;
		if (read_port_name(de->d_name, name, sizeof name) != 0 ||
		    strcmp(name, MM_PORT_NAME) != 0)
			continue;
		if ((size_t)snprintf(dev, sizeof dev, "/dev/%s", de->d_name) >= sizeof dev)
			continue;
		fd = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC);
		log_debug("channel: port %s is %s: %s", MM_PORT_NAME, dev,
			  fd < 0 ? strerror(errno) : "open");
		break;
	}
	closedir(dir);
	return fd;
}

static int open_guest_channel(struct mm_channel *ch)
{
	struct timespec pause = { 0, VPORT_RETRY_MS * 1000000L };
	int waited = 0;

	for (;;) {
		if ((ch->fd = open_virtio_port()) >= 0)
			break;
		if (waited >= VPORT_WAIT_MS) {
			log_error("no virtio-serial port named %s under %s", MM_PORT_NAME,
				  VPORT_CLASS_DIR);
			return -1;
		}
		nanosleep(&pause, NULL);
		waited += VPORT_RETRY_MS;
	}
	ch->eof_is_final = false;
	return 0;
}

static int open_host_channel(struct mm_channel *ch)
{
	const char *path = getenv("MM_INIT_CHANNEL");
	struct sockaddr_un addr;
	struct stat st;

	if (path == NULL || path[0] == '\0') {
		log_error("not PID 1 and MM_INIT_CHANNEL is not set: no channel to the host");
		return -1;
	}
	if (stat(path, &st) != 0) {
		log_error("channel %s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		if ((ch->fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
			log_error("channel %s: %s", path, strerror(errno));
			return -1;
		}
		ch->eof_is_final = !S_ISCHR(st.st_mode);
		return 0;
	}
	memset(&addr, 0, sizeof addr);
	addr.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof addr.sun_path) {
		log_error("channel %s: socket path longer than %zu bytes", path,
			  sizeof addr.sun_path - 1);
		return -1;
	}
	memcpy(addr.sun_path, path, strlen(path) + 1);
	if ((ch->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    connect(ch->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
		log_error("channel %s: %s", path, strerror(errno));
		return -1;
	}
	ch->eof_is_final = true;
	return 0;
}

int channel_open(struct mm_channel *ch, bool host_mode)
{
	ch->fd = -1;
	ch->rx.used = 0;
	ch->rx.consumed = 0;
	return host_mode ? open_host_channel(ch) : open_guest_channel(ch);
}

int channel_send(struct mm_channel *ch, uint8_t type, uint32_t stream, const void *payload,
		 size_t len)
{
	size_t total = mm_frame_encode(tx_frame, sizeof tx_frame, type, stream, payload, len);
	size_t off = 0;

	if (total == 0) {
		log_error("channel: frame type %u with %zu bytes is too large", type, len);
		return -1;
	}
	if (ch->fd < 0)
		return -1;
	while (off < total) {
		ssize_t n = write(ch->fd, tx_frame + off, total - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_error("channel: write: %s", n < 0 ? strerror(errno) : "no progress");
			return -1;
		}
		off += (size_t)n;
	}
	return 0;
}

ssize_t channel_fill(struct mm_channel *ch)
{
	size_t avail;
	uint8_t *space = mm_rx_space(&ch->rx, &avail);
	ssize_t n;

	do
		n = read(ch->fd, space, avail);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		mm_rx_commit(&ch->rx, (size_t)n);
	} else if (n == 0 && ch->rx.used > 0) {
		/* The host went away inside a frame, which will never be finished: the next
		 * host (a virtio port's EOF is not final) starts with a whole frame. */
		log_debug("channel: EOF inside a frame: %zu bytes dropped", ch->rx.used);
		ch->rx.used = 0;
	}
	return n;
}

void channel_close(struct mm_channel *ch)
{
	if (ch->fd >= 0)
		close(ch->fd);
	ch->fd = -1;
}
