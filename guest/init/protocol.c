/* Frame framing and CONFIG, EXEC and IDENTITY validation for mm-init. Every length
 * read from the peer is checked against a named limit before it is used; nothing here
 * does I/O. */
#include "protocol.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static void rx_drop_consumed(struct mm_rx *rx)
{
	if (rx->consumed == 0)
		return;
	memmove(rx->buf, rx->buf + rx->consumed, rx->used - rx->consumed);
	rx->used -= rx->consumed;
	rx->consumed = 0;
}

uint8_t *mm_rx_space(struct mm_rx *rx, size_t *avail)
{
	rx_drop_consumed(rx);
	*avail = sizeof rx->buf - rx->used;
	return rx->buf + rx->used;
}

void mm_rx_commit(struct mm_rx *rx, size_t n)
{
	if (n > sizeof rx->buf - rx->used)   /* cannot happen with mm_rx_space() */
		n = sizeof rx->buf - rx->used;
	rx->used += n;
}

int mm_rx_next(struct mm_rx *rx, struct mm_frame *out, uint32_t *bad_len)
{
	uint32_t len;

	rx_drop_consumed(rx);
	if (rx->used < MM_LEN_FIELD)
		return 0;
	len = mm_get_u32(rx->buf);
	if (len < MM_LEN_MIN || len > MM_LEN_MAX) {
		*bad_len = len;
		return -1;
	}
	if (rx->used < MM_LEN_FIELD + (size_t)len)
		return 0;
	out->type = rx->buf[MM_LEN_FIELD];
	out->stream = mm_get_u32(rx->buf + MM_LEN_FIELD + 1);
	out->payload = rx->buf + MM_FRAME_HEADER;
	out->payload_len = len - MM_LEN_MIN;
	rx->consumed = MM_LEN_FIELD + (size_t)len;
	return 1;
}

size_t mm_frame_encode(uint8_t *out, size_t cap, uint8_t type, uint32_t stream,
		       const void *payload, size_t payload_len)
{
	if (payload_len > MM_MAX_PAYLOAD || cap < MM_FRAME_HEADER + payload_len)
		return 0;
	mm_put_u32(out, (uint32_t)(MM_LEN_MIN + payload_len));
	out[MM_LEN_FIELD] = type;
	mm_put_u32(out + MM_LEN_FIELD + 1, stream);
	if (payload_len > 0)
		memcpy(out + MM_FRAME_HEADER, payload, payload_len);
	return MM_FRAME_HEADER + payload_len;
}

size_t mm_utf8_whole_len(const char *s, size_t len)
{
	size_t i = len, cont = 0, need;
	unsigned char lead;

	while (i > 0 && cont < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
		i--;
		cont++;
	}
	if (i == 0)
		return len;
	lead = (unsigned char)s[i - 1];
	if ((lead & 0xC0) != 0xC0)
		return len;   /* ends in ASCII or stray continuation bytes: nothing was cut */
	need = (lead & 0xE0) == 0xC0 ? 1 : (lead & 0xF0) == 0xE0 ? 2 : 3;
	return cont < need ? i - 1 : len;
}

__attribute__((format(printf, 3, 4)))
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/* The same, for a NET record: the guest answers ERROR "NET: ...". */
__attribute__((format(printf, 3, 4)))
static int fail_net(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return MM_PARSE_NET;
}

static const char *tag_name(uint8_t tag)
{
	switch (tag) {
	case MM_TAG_ARG: return "ARG";
	case MM_TAG_ENV: return "ENV";
	case MM_TAG_CWD: return "CWD";
	case MM_TAG_USER: return "USER";
	case MM_TAG_HOSTNAME: return "HOSTNAME";
	case MM_TAG_FLAGS: return "FLAGS";
	case MM_TAG_TTY: return "TTY";
	case MM_TAG_STDIN: return "STDIN";
	case MM_TAG_NET_ADDR: return "NET_ADDR";
	case MM_TAG_NET_GATEWAY: return "NET_GATEWAY";
	case MM_TAG_DNS: return "DNS";
	case MM_TAG_HOSTS: return "HOSTS";
	case MM_TAG_NET_MAC: return "NET_MAC";
	case MM_TAG_CLOCK: return "CLOCK";
	case MM_TAG_SEED: return "SEED";
	case MM_TAG_MOUNT: return "MOUNT";
	default: return "?";
	}
}

/* Where a payload's strings are copied to (mm_config.strings or mm_exec.strings). */
struct string_store {
	char *buf;
	size_t cap;
	size_t *used;
};

/* Copies len bytes, already checked, into the store as a string; NULL with err set if
 * the store is full. */
static char *store_string(struct string_store *st, const uint8_t *value, size_t len,
			  char *err, size_t errlen)
{
	char *s;

	if (len + 1 > st->cap - *st->used) {
		fail(err, errlen, "strings exceed %zu bytes", st->cap);
		return NULL;
	}
	s = st->buf + *st->used;
	memcpy(s, value, len);
	s[len] = '\0';
	*st->used += len + 1;
	return s;
}

/* Copies a string record into the store; NULL with err set if it breaks a rule. */
static char *copy_string(struct string_store *st, uint8_t tag, const uint8_t *value,
			 size_t len, char *err, size_t errlen)
{
	if (len > MM_MAX_STRING) {
		fail(err, errlen, "%s record is %zu bytes (max %d)", tag_name(tag), len,
		     MM_MAX_STRING);
		return NULL;
	}
	if (memchr(value, '\0', len) != NULL) {
		fail(err, errlen, "%s record contains a NUL byte", tag_name(tag));
		return NULL;
	}
	return store_string(st, value, len, err, errlen);
}

/* A record that may appear once: rejects a second one. */
static int set_once(char **slot, char *value, uint8_t tag, char *err, size_t errlen)
{
	if (*slot != NULL)
		return fail(err, errlen, "more than one %s record", tag_name(tag));
	*slot = value;
	return 0;
}

bool mm_parse_ipv4(const char *s, uint32_t *out)
{
	uint32_t addr = 0;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0;
		int digits = 0;

		if (part > 0 && *s++ != '.')
			return false;
		while (*s >= '0' && *s <= '9' && digits < 4) {
			v = v * 10 + (unsigned)(*s++ - '0');
			digits++;
		}
		if (digits == 0 || digits > 3 || v > 255 || (digits > 1 && s[-digits] == '0'))
			return false;
		addr = addr << 8 | v;
	}
	if (*s != '\0')
		return false;
	*out = addr;
	return true;
}

bool mm_is_ip_address(const char *s)
{
	uint32_t v4;
	uint8_t v6[16];

	if (mm_parse_ipv4(s, &v4))
		return true;
	return strlen(s) < MM_IPV6_TEXT_MAX && strchr(s, ':') != NULL &&
	       inet_pton(AF_INET6, s, v6) == 1;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool mm_parse_mac(const char *s, uint8_t out[MM_MAC_LEN])
{
	uint8_t mac[MM_MAC_LEN];

	if (strlen(s) != MM_MAC_TEXT_LEN)
		return false;
	for (int i = 0; i < MM_MAC_LEN; i++, s += 3) {
		int hi = hex_digit(s[0]), lo = hex_digit(s[1]);

		if (hi < 0 || lo < 0 || (i < MM_MAC_LEN - 1 && s[2] != ':'))
			return false;
		mac[i] = (uint8_t)(hi << 4 | lo);
	}
	memcpy(out, mac, sizeof mac);
	return true;
}

bool mm_mac_assignable(const uint8_t mac[MM_MAC_LEN])
{
	static const uint8_t zero[MM_MAC_LEN];

	return (mac[0] & 1) == 0 && memcmp(mac, zero, MM_MAC_LEN) != 0;
}

/* An address a machine can have or route through: not 0/8, loopback, multicast or
 * reserved (224.0.0.0 and up). */
static bool ipv4_unicast(uint32_t a)
{
	unsigned first = a >> 24;

	return first != 0 && first != 127 && first < 224;
}

static uint32_t prefix_mask(unsigned prefix)
{
	return prefix == 0 ? 0 : UINT32_MAX << (32 - prefix);
}

/* NET_ADDR: "a.b.c.d/len", len 1-32, a unicast address that (for len <= 30) is
 * neither its subnet's network nor its broadcast address. */
static int parse_net_addr(struct mm_net *net, const char *s, char *err, size_t errlen)
{
	char addr[sizeof "255.255.255.255"];
	const char *slash = strchr(s, '/');
	unsigned prefix = 0;
	const char *p;
	uint32_t a, mask;

	if (net->has_addr)
		return fail(err, errlen, "more than one NET_ADDR record");
	if (slash == NULL || (size_t)(slash - s) >= sizeof addr || slash[1] == '\0' ||
	    strlen(slash + 1) > 2)
		return fail(err, errlen, "NET_ADDR \"%.64s\" is not a.b.c.d/len", s);
	memcpy(addr, s, (size_t)(slash - s));
	addr[slash - s] = '\0';
	for (p = slash + 1; *p != '\0'; p++) {
		if (*p < '0' || *p > '9')
			return fail(err, errlen, "NET_ADDR \"%.64s\" is not a.b.c.d/len", s);
		prefix = prefix * 10 + (unsigned)(*p - '0');
	}
	if (!mm_parse_ipv4(addr, &a))
		return fail(err, errlen, "NET_ADDR \"%.64s\": \"%s\" is not an IPv4 address", s, addr);
	if (prefix < 1 || prefix > 32 || (slash[1] == '0' && slash[2] != '\0'))
		return fail(err, errlen, "NET_ADDR \"%.64s\": prefix length must be 1-32", s);
	mask = prefix_mask(prefix);
	if (!ipv4_unicast(a) ||
	    (prefix <= 30 && ((a & ~mask) == 0 || (a & ~mask) == ~mask)))
		return fail(err, errlen, "NET_ADDR \"%.64s\" is not a host address", s);
	net->has_addr = true;
	net->addr = a;
	net->prefix = prefix;
	return 0;
}

/* A character of a host name (HOSTS) or a MOUNT's name (a disk serial, a share's tag):
 * letters, digits, '.', '-', '_'. */
static bool name_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '-' || c == '_';
}

/* A name in a HOSTS line. */
static bool host_name_ok(const char *s, size_t len)
{
	if (len == 0 || len > MM_MAX_HOST_NAME)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!name_char_ok(s[i]))
			return false;
	return true;
}

/* HOSTS: "address name..." separated by spaces or tabs, so that one record is always
 * exactly one /etc/hosts line. */
static int check_hosts_line(const char *s, char *err, size_t errlen)
{
	char addr[MM_IPV6_TEXT_MAX];
	size_t names = 0;
	bool first = true;

	for (const char *p = s; *p != '\0';) {
		size_t n;

		p += strspn(p, " \t");
		if (*p == '\0')
			break;
		n = strcspn(p, " \t");
		if (first) {
			if (n >= sizeof addr)
				return fail(err, errlen, "HOSTS \"%.64s\" does not start with an address", s);
			memcpy(addr, p, n);
			addr[n] = '\0';
			if (!mm_is_ip_address(addr))
				return fail(err, errlen, "HOSTS \"%.64s\": \"%s\" is not an IP address", s, addr);
			first = false;
		} else if (!host_name_ok(p, n)) {
			return fail(err, errlen, "HOSTS \"%.64s\": bad host name", s);
		} else {
			names++;
		}
		p += n;
	}
	if (first || names == 0)
		return fail(err, errlen, "HOSTS \"%.64s\" is not \"address name...\"", s);
	return 0;
}

/* The payloads a record counts in, as bits: outside its payload's set a record is
 * skipped like an unknown tag. */
enum record_set {
	IN_CONFIG_V1 = 1 << 0,
	IN_CONFIG_V2 = 1 << 1,
	IN_CONFIG_V3 = 1 << 2,
	IN_EXEC = 1 << 3,
	IN_IDENTITY = 1 << 4,
	IN_CONFIG_V4 = 1 << 5,
	IN_CONFIG_V5 = 1 << 6,
};
#define IN_CONFIG_FROM_V5 IN_CONFIG_V5
#define IN_CONFIG_FROM_V4 (IN_CONFIG_V4 | IN_CONFIG_FROM_V5)
#define IN_CONFIG_FROM_V3 (IN_CONFIG_V3 | IN_CONFIG_FROM_V4)
#define IN_CONFIG_FROM_V2 (IN_CONFIG_V2 | IN_CONFIG_FROM_V3)
#define IN_CONFIG (IN_CONFIG_V1 | IN_CONFIG_FROM_V2)

static const uint8_t record_sets[] = {
	[MM_TAG_ARG] = IN_CONFIG | IN_EXEC,
	[MM_TAG_ENV] = IN_CONFIG | IN_EXEC,
	[MM_TAG_CWD] = IN_CONFIG | IN_EXEC,
	[MM_TAG_USER] = IN_CONFIG | IN_EXEC,
	[MM_TAG_HOSTNAME] = IN_CONFIG | IN_IDENTITY,
	[MM_TAG_FLAGS] = IN_CONFIG,
	[MM_TAG_TTY] = IN_EXEC,
	[MM_TAG_STDIN] = IN_EXEC,
	[MM_TAG_NET_ADDR] = IN_CONFIG_FROM_V2 | IN_IDENTITY,
	[MM_TAG_NET_GATEWAY] = IN_CONFIG_FROM_V2 | IN_IDENTITY,
	[MM_TAG_DNS] = IN_CONFIG_FROM_V2 | IN_IDENTITY,
	[MM_TAG_HOSTS] = IN_CONFIG_FROM_V2 | IN_IDENTITY,
	[MM_TAG_NET_MAC] = IN_CONFIG_FROM_V3 | IN_IDENTITY,
	[MM_TAG_CLOCK] = IN_CONFIG_FROM_V3 | IN_IDENTITY,
	[MM_TAG_SEED] = IN_CONFIG_FROM_V3 | IN_IDENTITY,
	[MM_TAG_MOUNT] = IN_CONFIG_FROM_V4,
};

static bool record_known(enum record_set set, uint8_t tag)
{
	return tag < sizeof record_sets && (record_sets[tag] & set) != 0;
}

/* Where a payload's records go: proc for CONFIG and EXEC, flags and mounts for CONFIG,
 * id for CONFIG and IDENTITY (NULL where the payload has none). */
struct record_target {
	struct mm_process *proc;
	uint32_t *flags;
	struct mm_identity *id;
	struct mm_mounts *mounts;
	struct string_store st;
};

/* NET_MAC: at most one, "aa:bb:cc:dd:ee:ff", an address a NIC may have. */
static int parse_net_mac(struct mm_net *net, const char *s, char *err, size_t errlen)
{
	if (net->has_mac)
		return fail_net(err, errlen, "more than one NET_MAC record");
	if (!mm_parse_mac(s, net->mac))
		return fail_net(err, errlen, "NET_MAC \"%.64s\" is not aa:bb:cc:dd:ee:ff", s);
	if (!mm_mac_assignable(net->mac))
		return fail_net(err, errlen, "NET_MAC \"%s\" is not a unicast address", s);
	net->has_mac = true;
	return MM_PARSE_OK;
}

/* Directories that are mm's (/.mm) or the kernel's: no volume goes on or under them. */
static const char *const reserved_dirs[] = { "proc", "sys", "dev", ".mm" };

/* Moves *p to the next component of a path that is neither empty nor "." and returns
 * its length: 0 at the end of the path. */
static size_t next_component(const char **p)
{
	for (;;) {
		size_t n;

		*p += strspn(*p, "/");
		n = strcspn(*p, "/");
		if (n != 1 || **p != '.')
			return n;
		*p += n;
	}
}

/* Two paths that name the same place without looking at the filesystem: "/data",
 * "/data/" and "//./data" do. */
static bool same_path(const char *a, const char *b)
{
	size_t na, nb;

	do {
		na = next_component(&a);
		nb = next_component(&b);
		if (na != nb || memcmp(a, b, na) != 0)
			return false;
		a += na;
		b += nb;
	} while (na > 0);
	return true;
}

/* The reserved directory a path's first component names, or NULL. */
static const char *reserved_dir(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof reserved_dirs / sizeof reserved_dirs[0]; i++)
		if (strlen(reserved_dirs[i]) == len && memcmp(name, reserved_dirs[i], len) == 0)
			return reserved_dirs[i];
	return NULL;
}

/* A MOUNT's mount point: absolute, no ".." component, not "/" itself, not on or under
 * a reserved directory. */
static int check_mount_path(const char *path, char *err, size_t errlen)
{
	const char *p = path, *reserved;
	size_t n, components = 0;

	if (path[0] != '/')
		return fail(err, errlen, "MOUNT path \"%.64s\" is not absolute", path);
	for (; (n = next_component(&p)) > 0; p += n, components++) {
		if (n == 2 && memcmp(p, "..", 2) == 0)
			return fail(err, errlen, "MOUNT path \"%.64s\" has a .. component", path);
		if (components == 0 && (reserved = reserved_dir(p, n)) != NULL)
			return fail(err, errlen, "MOUNT path \"%.64s\" is in /%s (reserved)", path,
				    reserved);
	}
	if (components == 0)
		return fail(err, errlen, "MOUNT path \"%.64s\" is the root directory", path);
	return 0;
}

/* What a MOUNT's name is called in errors: a block disk's serial, a share's tag. */
static const char *mount_name_noun(enum mm_mount_kind kind)
{
	return kind == MM_MOUNT_BLOCK ? "serial" : "tag";
}

/* A MOUNT's flags byte: bit 0 read-only and, when kinds are known (v5), bits 1-2 the
 * kind. Any other bit, and kind 3, is refused: nothing the guest could do for it. */
static int parse_mount_flags(struct mm_mount *m, uint8_t flags, bool kinds, char *err,
			     size_t errlen)
{
	unsigned kind;

	if (!kinds && (flags & ~MM_MOUNT_READ_ONLY) != 0)
		return fail(err, errlen, "MOUNT flags 0x%02x: only bit 0 (read-only) is defined",
			    flags);
	if ((flags & ~(MM_MOUNT_READ_ONLY | MM_MOUNT_KIND_MASK)) != 0)
		return fail(err, errlen,
			    "MOUNT flags 0x%02x: only bits 0-2 (read-only, kind) are defined", flags);
	kind = (flags & MM_MOUNT_KIND_MASK) >> MM_MOUNT_KIND_SHIFT;
	if (kind > MM_MOUNT_9P)
		return fail(err, errlen,
			    "MOUNT flags 0x%02x: kind %u is not defined (0 block, 1 virtio-fs, 2 9p)",
			    flags, kind);
	m->kind = (enum mm_mount_kind)kind;
	m->read_only = (flags & MM_MOUNT_READ_ONLY) != 0;
	return 0;
}

/* A MOUNT's name, a disk's serial or a share's tag: 1-20 of A-Z a-z 0-9 _ . - */
static int check_mount_name(const struct mm_mount *m, const uint8_t *name, size_t len,
			    char *err, size_t errlen)
{
	const char *noun = mount_name_noun(m->kind);
	size_t max = m->kind == MM_MOUNT_BLOCK ? MM_MAX_SERIAL : MM_MAX_MOUNT_TAG;

	if (len == 0 || len > max)
		return fail(err, errlen, "MOUNT %s is %zu bytes (must be 1-%zu)", noun, len, max);
	for (size_t i = 0; i < len; i++)
		if (!name_char_ok((char)name[i]))
			return fail(err, errlen, "MOUNT %s has a byte outside A-Z a-z 0-9 _ . -", noun);
	return 0;
}

/* No name and no mount point twice, whatever the records' kinds. */
static int check_mount_unique(const struct mm_mounts *mounts, const struct mm_mount *m,
			      char *err, size_t errlen)
{
	for (size_t i = 0; i < mounts->count; i++) {
		const struct mm_mount *o = &mounts->list[i];
		const char *was = mount_name_noun(o->kind), *is = mount_name_noun(m->kind);

		if (strcmp(o->name, m->name) == 0)
			return strcmp(was, is) == 0 ?
				fail(err, errlen, "two MOUNT records for %s %s", is, m->name) :
				fail(err, errlen, "two MOUNT records name %s (a %s and a %s)", m->name,
				     was, is);
		if (same_path(o->path, m->path))
			return fail(err, errlen, "two MOUNT records at \"%.64s\"", m->path);
	}
	return 0;
}

/* MOUNT: u8 flags (bit 0 read-only; v5: bits 1-2 the kind), the disk's serial or the
 * share's tag, NUL, the mount point. At most MM_MAX_MOUNTS, and no name or mount point
 * twice. */
static int parse_mount(struct mm_mounts *mounts, struct string_store *st, const uint8_t *value,
		       size_t len, bool kinds, char *err, size_t errlen)
{
	struct mm_mount m;
	const uint8_t *nul;
	size_t name_len, path_len;

	if (mounts->count == MM_MAX_MOUNTS)
		return fail(err, errlen, "more than %d MOUNT records", MM_MAX_MOUNTS);
	if (len == 0)
		return fail(err, errlen, "MOUNT record is empty (no flags)");
	if (parse_mount_flags(&m, value[0], kinds, err, errlen) != 0)
		return -1;
	if ((nul = memchr(value + 1, '\0', len - 1)) == NULL)
		return fail(err, errlen, "MOUNT record has no NUL after the %s",
			    mount_name_noun(m.kind));
	name_len = (size_t)(nul - (value + 1));
	if (check_mount_name(&m, value + 1, name_len, err, errlen) != 0)
		return -1;
	path_len = len - 1 - name_len - 1;
	if (path_len > MM_MAX_STRING)
		return fail(err, errlen, "MOUNT path is %zu bytes (max %d)", path_len, MM_MAX_STRING);
	if (memchr(nul + 1, '\0', path_len) != NULL)
		return fail(err, errlen, "MOUNT path contains a NUL byte");
	if ((m.name = store_string(st, value + 1, name_len, err, errlen)) == NULL ||
	    (m.path = store_string(st, nul + 1, path_len, err, errlen)) == NULL ||
	    check_mount_path(m.path, err, errlen) != 0 ||
	    check_mount_unique(mounts, &m, err, errlen) != 0)
		return -1;
	mounts->list[mounts->count++] = m;
	return 0;
}

/* The records of a payload from byte off on, those of set into t. */
static int parse_records(enum record_set set, const uint8_t *payload, size_t len, size_t off,
			 struct record_target *t, char *err, size_t errlen)
{
	bool has_flags = false, has_tty = false;
	struct mm_process *proc = t->proc;
	struct mm_identity *id = t->id;
	struct mm_net *net = id != NULL ? &id->net : NULL;
	struct string_store *st = &t->st;

	while (off < len) {
		uint8_t tag;
		size_t rlen;
		const uint8_t *value;
		char *s = NULL;

		if (len - off < MM_CONFIG_RECORD_HEADER)
			return fail(err, errlen, "truncated record header at byte %zu", off);
		tag = payload[off];
		rlen = mm_get_u16(payload + off + 1);
		off += MM_CONFIG_RECORD_HEADER;
		if (rlen > len - off)
			return fail(err, errlen, "record with tag %u at byte %zu runs past the end",
				    tag, off - MM_CONFIG_RECORD_HEADER);
		value = payload + off;
		off += rlen;
		if (!record_known(set, tag))
			continue;   /* unknown here: the host may be newer */

		switch (tag) {
		case MM_TAG_ARG:
			if (proc->argc == MM_MAX_ARGS)
				return fail(err, errlen, "more than %d ARG records", MM_MAX_ARGS);
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL)
				return -1;
			proc->argv[proc->argc++] = s;
			break;
		case MM_TAG_ENV:
			if (proc->envc == MM_MAX_ENV)
				return fail(err, errlen, "more than %d ENV records", MM_MAX_ENV);
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL)
				return -1;
			if (s[0] == '=' || strchr(s, '=') == NULL)
				return fail(err, errlen, "ENV record %zu is not KEY=VALUE", proc->envc + 1);
			proc->envp[proc->envc++] = s;
			break;
		case MM_TAG_CWD:
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL ||
			    set_once(&proc->cwd, s, tag, err, errlen) != 0)
				return -1;
			if (s[0] != '/')
				return fail(err, errlen, "CWD \"%.64s\" is not absolute", s);
			break;
		case MM_TAG_USER:
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL ||
			    set_once(&proc->user, s, tag, err, errlen) != 0)
				return -1;
			if (s[0] == '\0')
				return fail(err, errlen, "USER is empty");
			break;
		case MM_TAG_HOSTNAME:
			if (rlen > MM_MAX_HOSTNAME)
				return fail(err, errlen, "HOSTNAME is %zu bytes (max %d)", rlen,
					    MM_MAX_HOSTNAME);
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL ||
			    set_once(&id->hostname, s, tag, err, errlen) != 0)
				return -1;
			if (s[0] == '\0')
				return fail(err, errlen, "HOSTNAME is empty");
			break;
		case MM_TAG_FLAGS:
			if (has_flags)
				return fail(err, errlen, "more than one FLAGS record");
			if (rlen != 4)
				return fail(err, errlen, "FLAGS record is %zu bytes (must be 4)", rlen);
			*t->flags = mm_get_u32(value);
			has_flags = true;
			break;
		case MM_TAG_TTY:
			if (has_tty)
				return fail(err, errlen, "more than one TTY record");
			if (rlen != 4)
				return fail(err, errlen, "TTY record is %zu bytes (must be 4)", rlen);
			proc->tty = has_tty = true;
			proc->winsize.rows = mm_get_u16(value);
			proc->winsize.cols = mm_get_u16(value + 2);
			break;
		case MM_TAG_STDIN:
			if (proc->stdin_open)
				return fail(err, errlen, "more than one STDIN record");
			if (rlen != 0)
				return fail(err, errlen, "STDIN record is %zu bytes (must be empty)", rlen);
			proc->stdin_open = true;
			break;
		case MM_TAG_NET_ADDR:
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL)
				return MM_PARSE_NET;
			if (parse_net_addr(net, s, err, errlen) != 0)
				return MM_PARSE_NET;
			break;
		case MM_TAG_NET_GATEWAY:
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL)
				return MM_PARSE_NET;
			if (net->has_gateway)
				return fail_net(err, errlen, "more than one NET_GATEWAY record");
			if (!mm_parse_ipv4(s, &net->gateway) || !ipv4_unicast(net->gateway))
				return fail_net(err, errlen, "NET_GATEWAY \"%.64s\" is not an IPv4 host address",
					    s);
			net->has_gateway = true;
			break;
		case MM_TAG_DNS:
			if (net->dns_count == MM_MAX_DNS)
				return fail_net(err, errlen, "more than %d DNS records", MM_MAX_DNS);
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL)
				return MM_PARSE_NET;
			if (!mm_is_ip_address(s))
				return fail_net(err, errlen, "DNS \"%.64s\" is not an IP address", s);
			net->dns[net->dns_count++] = s;
			break;
		case MM_TAG_HOSTS:
			if (net->hosts_count == MM_MAX_HOSTS)
				return fail_net(err, errlen, "more than %d HOSTS records", MM_MAX_HOSTS);
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL)
				return MM_PARSE_NET;
			if (check_hosts_line(s, err, errlen) != 0)
				return MM_PARSE_NET;
			net->hosts[net->hosts_count++] = s;
			break;
		case MM_TAG_NET_MAC:
			if ((s = copy_string(st, tag, value, rlen, err, errlen)) == NULL)
				return MM_PARSE_NET;
			if (parse_net_mac(net, s, err, errlen) != 0)
				return MM_PARSE_NET;
			break;
		case MM_TAG_CLOCK:
			if (id->has_clock)
				return fail(err, errlen, "more than one CLOCK record");
			if (rlen != MM_CLOCK_LEN)
				return fail(err, errlen, "CLOCK record is %zu bytes (must be %d)", rlen,
					    MM_CLOCK_LEN);
			id->clock_ns = mm_get_u64(value);
			id->has_clock = true;
			break;
		case MM_TAG_SEED:
			if (id->seed_len != 0)
				return fail(err, errlen, "more than one SEED record");
			if (rlen < MM_MIN_SEED || rlen > MM_MAX_SEED)
				return fail(err, errlen, "SEED record is %zu bytes (must be %d-%d)", rlen,
					    MM_MIN_SEED, MM_MAX_SEED);
			memcpy(id->seed, value, rlen);
			id->seed_len = rlen;
			break;
		case MM_TAG_MOUNT:
			/* v5 gives the flags' bits 1-2 a meaning: the kind */
			if (parse_mount(t->mounts, st, value, rlen, (set & IN_CONFIG_FROM_V5) != 0,
					err, errlen) != 0)
				return -1;
			break;
		default:
			break;
		}
	}
	if (proc == NULL)
		return 0;   /* IDENTITY starts no process */
	if (proc->argc == 0)
		return fail(err, errlen, "no ARG record (argv[0] is required)");
	proc->argv[proc->argc] = NULL;
	proc->envp[proc->envc] = NULL;
	return 0;
}

/* The gateway must be reachable on eth0's subnet. */
static int check_net(const struct mm_net *net, char *err, size_t errlen)
{
	uint32_t mask;

	if (!net->has_gateway)
		return 0;
	if (!net->has_addr)
		return fail(err, errlen, "NET_GATEWAY without NET_ADDR");
	mask = prefix_mask(net->prefix);
	if ((net->gateway & mask) != (net->addr & mask) || net->gateway == net->addr)
		return fail(err, errlen, "NET_GATEWAY is not another address in NET_ADDR's /%u subnet",
			    net->prefix);
	return 0;
}

static enum record_set config_set(uint16_t version)
{
	switch (version) {
	case 1: return IN_CONFIG_V1;
	case 2: return IN_CONFIG_V2;
	case 3: return IN_CONFIG_V3;
	case 4: return IN_CONFIG_V4;
	default: return IN_CONFIG_V5;
	}
}

int mm_config_parse(struct mm_config *cfg, const uint8_t *payload, size_t len,
		    char *err, size_t errlen)
{
	struct record_target t = { &cfg->proc, &cfg->flags, &cfg->id, &cfg->mounts,
				   { cfg->strings, sizeof cfg->strings, &cfg->strings_used } };
	int r;

	memset(cfg, 0, offsetof(struct mm_config, strings));
	cfg->strings_used = 0;
	if (len < 2)
		return fail(err, errlen, "payload of %zu bytes has no version", len);
	cfg->version = mm_get_u16(payload);
	if (cfg->version < MM_PROTOCOL_MIN || cfg->version > MM_PROTOCOL_MAX)
		return fail(err, errlen, "version %u is not supported (this agent speaks %d..%d)",
			    cfg->version, MM_PROTOCOL_MIN, MM_PROTOCOL_MAX);
	r = parse_records(config_set(cfg->version), payload, len, 2, &t, err, errlen);
	if (r != 0)
		return r;
	return check_net(&cfg->id.net, err, errlen) != 0 ? MM_PARSE_NET : MM_PARSE_OK;
}

int mm_exec_parse(struct mm_exec *ex, uint16_t version, const uint8_t *payload, size_t len,
		  char *err, size_t errlen)
{
	struct record_target t = { &ex->proc, NULL, NULL, NULL,
				   { ex->strings, sizeof ex->strings, &ex->strings_used } };
	uint16_t v;

	memset(ex, 0, offsetof(struct mm_exec, strings));
	ex->strings_used = 0;
	if (len < 2)
		return fail(err, errlen, "EXEC payload of %zu bytes has no version", len);
	v = mm_get_u16(payload);
	if (v != version)
		return fail(err, errlen, "EXEC version %u is not the agreed version %u", v, version);
	return parse_records(IN_EXEC, payload, len, 2, &t, err, errlen);
}

int mm_identity_parse(struct mm_identity_msg *msg, uint16_t version, const uint8_t *payload,
		      size_t len, char *err, size_t errlen)
{
	struct record_target t = { NULL, NULL, &msg->id, NULL,
				   { msg->strings, sizeof msg->strings, &msg->strings_used } };
	uint16_t v;
	int r;

	memset(msg, 0, offsetof(struct mm_identity_msg, strings));
	msg->strings_used = 0;
	if (len < 2)
		return fail(err, errlen, "IDENTITY payload of %zu bytes has no version", len);
	v = mm_get_u16(payload);
	if (v != version)
		return fail(err, errlen, "IDENTITY version %u is not the agreed version %u", v, version);
	r = parse_records(IN_IDENTITY, payload, len, 2, &t, err, errlen);
	if (r != 0)
		return r;
	return check_net(&msg->id.net, err, errlen) != 0 ? MM_PARSE_NET : MM_PARSE_OK;
}
