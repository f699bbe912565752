/* Network identity for the guest: the ioctls ifconfig and route use (no netlink, no
 * tools in the image needed) and the two files every libc reads for names. Nothing
 * here follows a symlink the image put in /etc: a hostile image cannot make PID 1
 * write anywhere else. */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define ETC_DIR "etc"
#define ETC_MODE 0755
#define ETC_FILE_MODE 0644
#define TMP_NAME_MAX 64
#define HOSTS_HEADER "127.0.0.1\tlocalhost\n::1\tlocalhost\n"
#define NAMESERVER "nameserver "
/* The largest file: the header and MM_MAX_HOSTS lines of MM_MAX_STRING bytes. */
#define ETC_FILE_MAX (sizeof HOSTS_HEADER + MM_MAX_HOSTS * (MM_MAX_STRING + 1))

_Static_assert(MM_MAX_DNS * (sizeof NAMESERVER + MM_IPV6_TEXT_MAX) < ETC_FILE_MAX,
	       "resolv.conf fits the file buffer");

static char file_buf[ETC_FILE_MAX];
static char iface_name[] = NET_IFACE;   /* rtentry.rt_dev is not const */

__attribute__((format(printf, 3, 4)))
static int net_fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(err, errlen, "NET: ");

	va_start(ap, fmt);
	if (n > 0 && (size_t)n < errlen)
		vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

static void set_inet(struct sockaddr *sa, uint32_t addr)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(addr);
	memcpy(sa, &sin, sizeof sin);
}

static int iface_ioctl(int fd, int request, const char *what, struct ifreq *ifr, char *err,
		       size_t errlen)
{
	if (ioctl(fd, request, ifr) == 0)
		return 0;
	return net_fail(err, errlen, NET_IFACE ": %s: %s", what, strerror(errno));
}

/* Takes eth0 down (a no-op at boot): its MAC can change only while it is down, and
 * the routes through it go with it, so none of a previous identity is left. */
static int link_down(int fd, struct ifreq *ifr, char *err, size_t errlen)
{
	if (iface_ioctl(fd, SIOCGIFFLAGS, "SIOCGIFFLAGS", ifr, err, errlen) != 0)
		return -1;
	ifr->ifr_flags &= ~IFF_UP;
	return iface_ioctl(fd, SIOCSIFFLAGS, "SIOCSIFFLAGS", ifr, err, errlen);
}

static int set_mac(int fd, struct ifreq *ifr, const uint8_t mac[MM_MAC_LEN], char *err,
		   size_t errlen)
{
	ifr->ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr->ifr_hwaddr.sa_data, mac, MM_MAC_LEN);
	if (iface_ioctl(fd, SIOCSIFHWADDR, "SIOCSIFHWADDR", ifr, err, errlen) != 0)
		return -1;
	log_debug(NET_IFACE ": MAC %02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3],
		  mac[4], mac[5]);
	return 0;
}

/* Down, MAC, address, netmask, up, default route: what `ifconfig eth0 down hw ether M`,
 * `ifconfig eth0 A netmask M up` and `route add default gw G` do. The same steps set
 * the identity at boot (CONFIG) and replace it after a restore (IDENTITY): the new
 * address replaces the old one, and the default route, gone with the link, is added
 * again. */
static int configure_interface(const struct mm_net *net, char *err, size_t errlen)
{
	struct ifreq ifr;
	struct rtentry rt;
	uint32_t mask = UINT32_MAX << (32 - net->prefix);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int r = -1;

	if (fd < 0)
		return net_fail(err, errlen, "socket: %s", strerror(errno));
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, NET_IFACE, sizeof NET_IFACE);
	if (link_down(fd, &ifr, err, errlen) != 0 ||
	    (net->has_mac && set_mac(fd, &ifr, net->mac, err, errlen) != 0))
		goto out;
	set_inet(&ifr.ifr_addr, net->addr);
	if (iface_ioctl(fd, SIOCSIFADDR, "SIOCSIFADDR", &ifr, err, errlen) != 0)
		goto out;
	set_inet(&ifr.ifr_netmask, mask);
	if (iface_ioctl(fd, SIOCSIFNETMASK, "SIOCSIFNETMASK", &ifr, err, errlen) != 0 ||
	    iface_ioctl(fd, SIOCGIFFLAGS, "SIOCGIFFLAGS", &ifr, err, errlen) != 0)
		goto out;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (iface_ioctl(fd, SIOCSIFFLAGS, "SIOCSIFFLAGS", &ifr, err, errlen) != 0)
		goto out;
	if (net->has_gateway) {
		memset(&rt, 0, sizeof rt);
		set_inet(&rt.rt_dst, 0);
		set_inet(&rt.rt_genmask, 0);
		set_inet(&rt.rt_gateway, net->gateway);
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = iface_name;
		if (ioctl(fd, SIOCADDRT, &rt) != 0 && errno != EEXIST) {
			net_fail(err, errlen, "default route: SIOCADDRT: %s", strerror(errno));
			goto out;
		}
	}
	log_debug(NET_IFACE ": %u.%u.%u.%u/%u up", net->addr >> 24, (net->addr >> 16) & 255,
		  (net->addr >> 8) & 255, net->addr & 255, net->prefix);
	r = 0;
out:
	close(fd);
	return r;
}

/* The directory root/etc, which must not be a symlink; created if missing. */
static int open_etc(const char *root, char *err, size_t errlen)
{
	int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC), etc_fd;

	if (root_fd < 0)
		return net_fail(err, errlen, "%s: %s", root, strerror(errno));
	etc_fd = openat(root_fd, ETC_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (etc_fd < 0 && errno == ENOENT) {
		if (mkdirat(root_fd, ETC_DIR, ETC_MODE) != 0 && errno != EEXIST)
			log_debug("mkdir /" ETC_DIR ": %s", strerror(errno));
		etc_fd = openat(root_fd, ETC_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	if (etc_fd < 0) {
		int e = errno;

		close(root_fd);
		if (e == ELOOP || e == ENOTDIR)
			return net_fail(err, errlen, "/" ETC_DIR " is not a directory (a symlink?)");
		return net_fail(err, errlen, "/" ETC_DIR ": %s", strerror(e));
	}
	close(root_fd);
	return etc_fd;
}

/* Writes a new file beside the old one and renames it over it: a symlink there is
 * replaced, never followed, and readers see the old file or the new one. */
static int replace_file(int etc_fd, const char *name, const char *data, size_t len,
			char *err, size_t errlen)
{
	char tmp[TMP_NAME_MAX];
	size_t off = 0;
	int fd;

	if ((size_t)snprintf(tmp, sizeof tmp, ".%s.mm-init", name) >= sizeof tmp)
		return net_fail(err, errlen, "/" ETC_DIR "/%s: name too long", name);
	if (unlinkat(etc_fd, tmp, 0) != 0 && errno != ENOENT)
		return net_fail(err, errlen, "/" ETC_DIR "/%s: %s", tmp, strerror(errno));
	fd = openat(etc_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, ETC_FILE_MODE);
	if (fd < 0)
		return net_fail(err, errlen, "/" ETC_DIR "/%s: %s", tmp, strerror(errno));
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			net_fail(err, errlen, "/" ETC_DIR "/%s: write: %s", name,
				 n < 0 ? strerror(errno) : "no progress");
			close(fd);
			unlinkat(etc_fd, tmp, 0);
			return -1;
		}
		off += (size_t)n;
	}
	if (fchmod(fd, ETC_FILE_MODE) != 0 || close(fd) != 0 ||
	    renameat(etc_fd, tmp, etc_fd, name) != 0) {
		net_fail(err, errlen, "/" ETC_DIR "/%s: %s", name, strerror(errno));
		unlinkat(etc_fd, tmp, 0);
		return -1;
	}
	log_debug("wrote /" ETC_DIR "/%s (%zu bytes)", name, len);
	return 0;
}

/* Appends to file_buf; false if it would not fit (cannot happen within the limits). */
static bool append(size_t *used, const char *a, const char *b)
{
	int n = snprintf(file_buf + *used, sizeof file_buf - *used, "%s%s\n", a, b);

	if (n < 0 || (size_t)n >= sizeof file_buf - *used)
		return false;
	*used += (size_t)n;
	return true;
}

int net_write_files(const struct mm_net *net, const char *root, char *err, size_t errlen)
{
	size_t used = 0;
	int etc_fd, r = 0;

	if (net->dns_count == 0 && net->hosts_count == 0)
		return 0;
	if ((etc_fd = open_etc(root, err, errlen)) < 0)
		return -1;
	if (net->dns_count > 0) {
		for (size_t i = 0; i < net->dns_count && r == 0; i++)
			if (!append(&used, NAMESERVER, net->dns[i]))
				r = net_fail(err, errlen, "resolv.conf exceeds %zu bytes", sizeof file_buf);
		if (r == 0)
			r = replace_file(etc_fd, "resolv.conf", file_buf, used, err, errlen);
	}
	if (r == 0 && net->hosts_count > 0) {
		used = sizeof HOSTS_HEADER - 1;
		memcpy(file_buf, HOSTS_HEADER, used);
		for (size_t i = 0; i < net->hosts_count && r == 0; i++)
			if (!append(&used, net->hosts[i], ""))
				r = net_fail(err, errlen, "hosts exceeds %zu bytes", sizeof file_buf);
		if (r == 0)
			r = replace_file(etc_fd, "hosts", file_buf, used, err, errlen);
	}
	close(etc_fd);
	return r;
}

int net_apply(const struct mm_net *net, char *err, size_t errlen)
{
	if (net->has_addr && configure_interface(net, err, errlen) != 0)
		return -1;
	return net_write_files(net, "/", err, errlen);
}
