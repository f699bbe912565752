/* Unit tests for protocol.c: frame receiver, CONFIG, EXEC and IDENTITY validation,
 * limit by limit, MOUNT records (v4) and their kinds (v5) rule by rule. Built and run by
 * `make check`; prints one line per failure, exits non-zero. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define BUF_MAX (2 * MM_FRAME_MAX)

static int failures;
static struct mm_config cfg;
static struct mm_exec ex;
static struct mm_identity_msg idm;
static uint8_t payload[BUF_MAX];
static size_t plen;
static char err[MM_MAX_ERROR + 1];

#define CHECK(cond) do { \
	if (!(cond)) { failures++; fprintf(stderr, "%s:%d: %s (err: %s)\n", __FILE__, __LINE__, #cond, err); } \
} while (0)

static void begin(uint16_t version)
{
	plen = 0;
	mm_put_u16(payload, version);
	plen = 2;
	err[0] = '\0';
}

static void record(uint8_t tag, const void *value, size_t len)
{
	payload[plen] = tag;
	mm_put_u16(payload + plen + 1, (uint16_t)len);
	memcpy(payload + plen + 3, value, len);
	plen += 3 + len;
}

static void str(uint8_t tag, const char *s)
{
	record(tag, s, strlen(s));
}

static int parse(void)
{
	return mm_config_parse(&cfg, payload, plen, err, sizeof err);
}

static void test_config(void)
{
	static char big[MM_MAX_STRING + 2];
	uint8_t flags[4] = { 0, 0, 0, 1 };

	begin(1);
	str(MM_TAG_ARG, "sh");
	str(MM_TAG_ARG, "-c");
	str(MM_TAG_ENV, "A=1");
	str(MM_TAG_CWD, "/srv");
	str(MM_TAG_USER, "1000:1000");
	str(MM_TAG_HOSTNAME, "box");
	record(MM_TAG_FLAGS, flags, 4);
	str(99, "from the future");
	CHECK(parse() == 0);
	CHECK(cfg.proc.argc == 2 && strcmp(cfg.proc.argv[1], "-c") == 0 && cfg.proc.argv[2] == NULL);
	CHECK(cfg.proc.envc == 1 && strcmp(cfg.proc.envp[0], "A=1") == 0 && cfg.proc.envp[1] == NULL);
	CHECK(strcmp(cfg.proc.cwd, "/srv") == 0 && strcmp(cfg.proc.user, "1000:1000") == 0);
	CHECK(strcmp(cfg.id.hostname, "box") == 0 && cfg.flags == MM_FLAG_STAY_UP);

	begin(1);
	CHECK(parse() != 0 && strstr(err, "no ARG") != NULL);
	begin(6);
	str(MM_TAG_ARG, "sh");
	CHECK(parse() != 0 && strstr(err, "version 6 is not supported (this agent speaks 1..5)") != NULL);
	begin(0);
	str(MM_TAG_ARG, "sh");
	CHECK(parse() != 0 && strstr(err, "version 0") != NULL);
	plen = 1;
	CHECK(parse() != 0);

	begin(1);
	for (int i = 0; i < MM_MAX_ARGS; i++)
		str(MM_TAG_ARG, "a");
	CHECK(parse() == 0 && cfg.proc.argc == MM_MAX_ARGS);
	str(MM_TAG_ARG, "a");
	CHECK(parse() != 0 && strstr(err, "ARG") != NULL);

	begin(1);
	str(MM_TAG_ARG, "x");
	for (int i = 0; i < MM_MAX_ENV; i++)
		str(MM_TAG_ENV, "K=v");
	CHECK(parse() == 0 && cfg.proc.envc == MM_MAX_ENV);
	str(MM_TAG_ENV, "K=v");
	CHECK(parse() != 0);

	memset(big, 'x', MM_MAX_STRING);
	begin(1);
	record(MM_TAG_ARG, big, MM_MAX_STRING);
	CHECK(parse() == 0 && strlen(cfg.proc.argv[0]) == MM_MAX_STRING);
	begin(1);
	record(MM_TAG_ARG, big, MM_MAX_STRING + 1);
	CHECK(parse() != 0 && strstr(err, "4096") != NULL);

	begin(1);
	record(MM_TAG_ARG, "a\0b", 3);
	CHECK(parse() != 0 && strstr(err, "NUL") != NULL);

	begin(1);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_ENV, "NOEQUALS");
	CHECK(parse() != 0);
	begin(1);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_ENV, "=v");
	CHECK(parse() != 0);

	begin(1);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_CWD, "relative");
	CHECK(parse() != 0 && strstr(err, "absolute") != NULL);
	begin(1);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_CWD, "/a");
	str(MM_TAG_CWD, "/b");
	CHECK(parse() != 0 && strstr(err, "more than one CWD") != NULL);
	begin(1);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_USER, "");
	CHECK(parse() != 0);

	begin(1);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_HOSTNAME, big, MM_MAX_HOSTNAME);
	CHECK(parse() == 0);
	begin(1);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_HOSTNAME, big, MM_MAX_HOSTNAME + 1);
	CHECK(parse() != 0);

	begin(1);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_FLAGS, flags, 3);
	CHECK(parse() != 0);
	begin(1);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_FLAGS, flags, 4);
	record(MM_TAG_FLAGS, flags, 4);
	CHECK(parse() != 0);

	begin(1);
	str(MM_TAG_ARG, "x");
	payload[plen++] = MM_TAG_ARG;   /* a record header cut short */
	payload[plen++] = 0;
	CHECK(parse() != 0 && strstr(err, "truncated") != NULL);
	begin(1);
	str(MM_TAG_ARG, "abc");
	plen -= 1;                      /* a value cut short */
	CHECK(parse() != 0 && strstr(err, "past the end") != NULL);

	/* A payload of MM_MAX_PAYLOAD bytes of strings fits the string store. */
	begin(1);
	while (plen + 3 + MM_MAX_STRING <= MM_MAX_PAYLOAD)
		record(MM_TAG_ARG, big, MM_MAX_STRING);
	record(MM_TAG_ENV, "K=", 2);
	record(MM_TAG_ARG, big, MM_MAX_PAYLOAD - plen - 3);
	CHECK(plen == MM_MAX_PAYLOAD);
	CHECK(parse() == 0 && cfg.strings_used <= sizeof cfg.strings);
}

static uint8_t winsize[4] = { 0, 24, 0, 80 };

static int parse_exec(uint16_t version)
{
	return mm_exec_parse(&ex, version, payload, plen, err, sizeof err);
}

static void test_config_v2(void)
{
	/* v1 ignores the v2 records; TTY and STDIN mean nothing in CONFIG. */
	begin(1);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_ADDR, "not an address");
	str(MM_TAG_DNS, "nope");
	record(MM_TAG_TTY, winsize, 4);
	CHECK(parse() == MM_PARSE_OK && !cfg.id.net.has_addr && cfg.id.net.dns_count == 0 && !cfg.proc.tty);

	begin(2);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	str(MM_TAG_NET_GATEWAY, "10.88.0.1");
	str(MM_TAG_DNS, "10.88.0.1");
	str(MM_TAG_DNS, "2001:db8::53");
	str(MM_TAG_HOSTS, "10.88.0.5 web web.local");
	str(MM_TAG_HOSTS, "::1\tip6-host");
	record(MM_TAG_TTY, winsize, 4);
	record(MM_TAG_STDIN, "", 0);
	CHECK(parse() == MM_PARSE_OK);
	CHECK(cfg.version == 2 && cfg.id.net.has_addr && cfg.id.net.addr == 0x0a580005 &&
	      cfg.id.net.prefix == 16 && cfg.id.net.has_gateway && cfg.id.net.gateway == 0x0a580001);
	CHECK(cfg.id.net.dns_count == 2 && strcmp(cfg.id.net.dns[1], "2001:db8::53") == 0);
	CHECK(cfg.id.net.hosts_count == 2 && strcmp(cfg.id.net.hosts[0], "10.88.0.5 web web.local") == 0);
	CHECK(!cfg.proc.tty && !cfg.proc.stdin_open);

	/* NET_ADDR: a.b.c.d/len, len 1-32, a host address. */
	static const char *const bad_addr[] = {
		"10.88.0.5", "10.88.0.5/", "10.88.0.5/0", "10.88.0.5/33", "10.88.0.5/016",
		"10.88.0/16", "10.88.0.256/16", "10.088.0.5/16", "10.88.0.5/16 ", " 10.88.0.5/16",
		"10.88.0.0/16", "10.88.255.255/16", "127.0.0.1/8", "224.0.0.1/4", "0.1.2.3/8",
		"10.88.0.5/1x", "10.88.0.5/16/2", "",
	};
	for (size_t i = 0; i < sizeof bad_addr / sizeof bad_addr[0]; i++) {
		begin(2);
		str(MM_TAG_ARG, "x");
		str(MM_TAG_NET_ADDR, bad_addr[i]);
		CHECK(parse() == MM_PARSE_NET && strstr(err, "NET_ADDR") != NULL);
	}
	static const char *const good_addr[] = { "10.88.0.5/16", "192.168.1.1/32", "10.0.0.0/31",
						 "1.2.3.4/1", "223.255.255.254/24" };
	for (size_t i = 0; i < sizeof good_addr / sizeof good_addr[0]; i++) {
		begin(2);
		str(MM_TAG_ARG, "x");
		str(MM_TAG_NET_ADDR, good_addr[i]);
		CHECK(parse() == MM_PARSE_OK);
	}
	begin(2);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_ADDR, "10.0.0.2/8");
	str(MM_TAG_NET_ADDR, "10.0.0.3/8");
	CHECK(parse() == MM_PARSE_NET && strstr(err, "more than one NET_ADDR") != NULL);
	begin(2);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_NET_ADDR, "10.0.0.2/8\0", 11);
	CHECK(parse() == MM_PARSE_NET && strstr(err, "NUL") != NULL);

	/* NET_GATEWAY: needs NET_ADDR, and lies in its subnet. */
	begin(2);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_GATEWAY, "10.0.0.1");
	CHECK(parse() == MM_PARSE_NET && strstr(err, "without NET_ADDR") != NULL);
	begin(2);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	str(MM_TAG_NET_GATEWAY, "10.89.0.1");
	CHECK(parse() == MM_PARSE_NET && strstr(err, "subnet") != NULL);
	begin(2);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	str(MM_TAG_NET_GATEWAY, "10.88.0.5");
	CHECK(parse() == MM_PARSE_NET);
	begin(2);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	str(MM_TAG_NET_GATEWAY, "10.88.0.1/16");
	CHECK(parse() == MM_PARSE_NET && strstr(err, "NET_GATEWAY") != NULL);
	begin(2);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	str(MM_TAG_NET_GATEWAY, "10.88.0.1");
	str(MM_TAG_NET_GATEWAY, "10.88.0.2");
	CHECK(parse() == MM_PARSE_NET && strstr(err, "more than one NET_GATEWAY") != NULL);

	/* DNS: at most MM_MAX_DNS addresses. */
	begin(2);
	str(MM_TAG_ARG, "x");
	for (int i = 0; i < MM_MAX_DNS; i++)
		str(MM_TAG_DNS, "1.1.1.1");
	CHECK(parse() == MM_PARSE_OK && cfg.id.net.dns_count == MM_MAX_DNS);
	str(MM_TAG_DNS, "1.1.1.1");
	CHECK(parse() == MM_PARSE_NET && strstr(err, "more than 3 DNS") != NULL);
	static const char *const bad_dns[] = { "resolver", "1.1.1", "fe80::1%eth0", "1.1.1.1 ",
						"nameserver 1.1.1.1", "" };
	for (size_t i = 0; i < sizeof bad_dns / sizeof bad_dns[0]; i++) {
		begin(2);
		str(MM_TAG_ARG, "x");
		str(MM_TAG_DNS, bad_dns[i]);
		CHECK(parse() == MM_PARSE_NET && strstr(err, "DNS") != NULL);
	}

	/* HOSTS: "address name..." on one line, at most MM_MAX_HOSTS. */
	begin(2);
	str(MM_TAG_ARG, "x");
	for (int i = 0; i < MM_MAX_HOSTS; i++)
		str(MM_TAG_HOSTS, "10.0.0.1 a");
	CHECK(parse() == MM_PARSE_OK && cfg.id.net.hosts_count == MM_MAX_HOSTS);
	str(MM_TAG_HOSTS, "10.0.0.1 a");
	CHECK(parse() == MM_PARSE_NET && strstr(err, "more than 16 HOSTS") != NULL);
	static const char *const bad_hosts[] = {
		"10.0.0.1", "web", "10.0.0.1 web\n10.0.0.2 evil", "10.0.0.1 web # comment",
		"10.0.0.1 we/b", "10.0.0.1 web\r", "300.0.0.1 web", "", "   ",
	};
	for (size_t i = 0; i < sizeof bad_hosts / sizeof bad_hosts[0]; i++) {
		begin(2);
		str(MM_TAG_ARG, "x");
		str(MM_TAG_HOSTS, bad_hosts[i]);
		CHECK(parse() == MM_PARSE_NET && strstr(err, "HOSTS") != NULL);
	}
	{
		static char name[MM_MAX_HOST_NAME + 16];

		memcpy(name, "10.0.0.1 ", 9);
		memset(name + 9, 'n', MM_MAX_HOST_NAME);
		begin(2);
		str(MM_TAG_ARG, "x");
		str(MM_TAG_HOSTS, name);
		CHECK(parse() == MM_PARSE_OK);
		name[9 + MM_MAX_HOST_NAME] = 'n';
		begin(2);
		str(MM_TAG_ARG, "x");
		str(MM_TAG_HOSTS, name);
		CHECK(parse() == MM_PARSE_NET);
	}

	/* A non-NET rule broken in a v2 CONFIG is still CONFIG. */
	begin(2);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_ENV, "NOEQUALS");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	CHECK(parse() == MM_PARSE_CONFIG);
}

static void test_exec(void)
{
	uint8_t flags[4] = { 0, 0, 0, 1 };

	begin(2);
	str(MM_TAG_ARG, "sh");
	str(MM_TAG_ENV, "A=1");
	str(MM_TAG_CWD, "/srv");
	str(MM_TAG_USER, "nobody");
	record(MM_TAG_TTY, winsize, 4);
	record(MM_TAG_STDIN, "", 0);
	str(MM_TAG_HOSTNAME, "ignored");           /* CONFIG-only records mean nothing here */
	record(MM_TAG_FLAGS, flags, 2);
	str(MM_TAG_NET_ADDR, "bad");
	str(99, "from the future");
	CHECK(parse_exec(2) == MM_PARSE_OK);
	CHECK(ex.proc.argc == 1 && strcmp(ex.proc.argv[0], "sh") == 0 && ex.proc.argv[1] == NULL);
	CHECK(ex.proc.envc == 1 && strcmp(ex.proc.cwd, "/srv") == 0 &&
	      strcmp(ex.proc.user, "nobody") == 0);
	CHECK(ex.proc.tty && ex.proc.winsize.rows == 24 && ex.proc.winsize.cols == 80);
	CHECK(ex.proc.stdin_open);

	begin(2);
	str(MM_TAG_ARG, "sh");
	CHECK(parse_exec(2) == MM_PARSE_OK && !ex.proc.tty && !ex.proc.stdin_open);
	CHECK(parse_exec(1) == MM_PARSE_CONFIG && strstr(err, "agreed version") != NULL);
	begin(2);
	CHECK(parse_exec(2) == MM_PARSE_CONFIG && strstr(err, "no ARG") != NULL);
	plen = 1;
	CHECK(parse_exec(2) == MM_PARSE_CONFIG);
	plen = 0;
	CHECK(parse_exec(2) == MM_PARSE_CONFIG);

	begin(2);
	str(MM_TAG_ARG, "sh");
	record(MM_TAG_TTY, winsize, 3);
	CHECK(parse_exec(2) == MM_PARSE_CONFIG && strstr(err, "TTY record is 3 bytes") != NULL);
	begin(2);
	str(MM_TAG_ARG, "sh");
	record(MM_TAG_TTY, winsize, 4);
	record(MM_TAG_TTY, winsize, 4);
	CHECK(parse_exec(2) == MM_PARSE_CONFIG && strstr(err, "more than one TTY") != NULL);
	begin(2);
	str(MM_TAG_ARG, "sh");
	record(MM_TAG_STDIN, "x", 1);
	CHECK(parse_exec(2) == MM_PARSE_CONFIG && strstr(err, "STDIN record is 1 bytes") != NULL);
	begin(2);
	str(MM_TAG_ARG, "sh");
	record(MM_TAG_STDIN, "", 0);
	record(MM_TAG_STDIN, "", 0);
	CHECK(parse_exec(2) == MM_PARSE_CONFIG && strstr(err, "more than one STDIN") != NULL);
	begin(2);
	for (int i = 0; i <= MM_MAX_ARGS; i++)
		str(MM_TAG_ARG, "a");
	CHECK(parse_exec(2) == MM_PARSE_CONFIG && strstr(err, "more than 256 ARG") != NULL);
	begin(2);
	str(MM_TAG_ARG, "sh");
	str(MM_TAG_CWD, "relative");
	CHECK(parse_exec(2) == MM_PARSE_CONFIG && strstr(err, "absolute") != NULL);
	begin(2);
	str(MM_TAG_ARG, "sh");
	payload[plen++] = MM_TAG_TTY;
	CHECK(parse_exec(2) == MM_PARSE_CONFIG && strstr(err, "truncated") != NULL);

	/* A full payload of strings fits the EXEC string store too. */
	{
		static char big[MM_MAX_STRING];

		memset(big, 'x', sizeof big);
		begin(2);
		while (plen + 3 + MM_MAX_STRING <= MM_MAX_PAYLOAD)
			record(MM_TAG_ARG, big, MM_MAX_STRING);
		record(MM_TAG_ENV, "K=", 2);
		CHECK(parse_exec(2) == MM_PARSE_OK && ex.strings_used <= sizeof ex.strings);
	}
}

static const uint8_t clock_ns[8] = { 0x17, 0x9a, 0x5b, 0x2c, 0x01, 0x02, 0x03, 0x04 };
static uint8_t seed[MM_MAX_SEED + 1];

static int parse_identity(uint16_t version)
{
	return mm_identity_parse(&idm, version, payload, plen, err, sizeof err);
}

static void test_mac(void)
{
	uint8_t mac[MM_MAC_LEN];
	static const uint8_t want[MM_MAC_LEN] = { 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef };

	CHECK(mm_parse_mac("52:54:00:ab:cd:ef", mac) && memcmp(mac, want, sizeof mac) == 0);
	CHECK(mm_parse_mac("52:54:00:AB:Cd:eF", mac) && memcmp(mac, want, sizeof mac) == 0);
	CHECK(mm_parse_mac("ff:ff:ff:ff:ff:ff", mac) && mac[0] == 0xff && mac[5] == 0xff);
	static const char *const bad[] = {
		"", "52:54:00:ab:cd", "52:54:00:ab:cd:ef:", "52:54:00:ab:cd:e", "52-54-00-ab-cd-ef",
		"5254.00ab.cdef", "52:54:00:ab:cd:eg", "52:54:00:ab:cd:ef ", " 2:54:00:ab:cd:ef",
		"525:4:00:ab:cd:ef", "52:54:00:ab:cd:+f", "52:54:00:ab:cd:0x", "52:54::0:ab:cd:ef",
		"52:54:00:ab:cd:eff",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK(!mm_parse_mac(bad[i], mac));

	CHECK(mm_mac_assignable(want));
	CHECK(mm_parse_mac("02:00:00:00:00:00", mac) && mm_mac_assignable(mac));
	CHECK(mm_parse_mac("00:00:00:00:00:00", mac) && !mm_mac_assignable(mac));
	CHECK(mm_parse_mac("01:00:5e:00:00:01", mac) && !mm_mac_assignable(mac));   /* multicast */
	CHECK(mm_parse_mac("ff:ff:ff:ff:ff:ff", mac) && !mm_mac_assignable(mac));   /* broadcast */
	CHECK(mm_parse_mac("53:54:00:ab:cd:ef", mac) && !mm_mac_assignable(mac));
}

static void test_config_v3(void)
{
	/* v1 and v2 ignore the v3 records, however broken. */
	for (uint16_t v = 1; v <= 2; v++) {
		begin(v);
		str(MM_TAG_ARG, "x");
		str(MM_TAG_NET_MAC, "nope");
		record(MM_TAG_CLOCK, "abc", 3);
		record(MM_TAG_SEED, "short", 5);
		CHECK(parse() == MM_PARSE_OK && !cfg.id.net.has_mac && !cfg.id.has_clock &&
		      cfg.id.seed_len == 0);
	}

	begin(3);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_HOSTNAME, "box");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	str(MM_TAG_NET_MAC, "52:54:00:AB:cd:ef");
	record(MM_TAG_CLOCK, clock_ns, sizeof clock_ns);
	record(MM_TAG_SEED, seed, MM_MIN_SEED);
	str(99, "from the future");
	CHECK(parse() == MM_PARSE_OK);
	CHECK(cfg.version == 3 && strcmp(cfg.id.hostname, "box") == 0 && cfg.id.net.has_addr);
	CHECK(cfg.id.net.has_mac && cfg.id.net.mac[0] == 0x52 && cfg.id.net.mac[3] == 0xab &&
	      cfg.id.net.mac[5] == 0xef);
	CHECK(cfg.id.has_clock && cfg.id.clock_ns == 0x179a5b2c01020304ull);
	CHECK(cfg.id.seed_len == MM_MIN_SEED && memcmp(cfg.id.seed, seed, MM_MIN_SEED) == 0);

	/* A SEED of binary bytes, NULs included, of the largest size. */
	begin(3);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_SEED, seed, MM_MAX_SEED);
	CHECK(parse() == MM_PARSE_OK && cfg.id.seed_len == MM_MAX_SEED &&
	      memcmp(cfg.id.seed, seed, MM_MAX_SEED) == 0);

	/* Sizes and repeats: CONFIG errors for CLOCK and SEED, NET errors for NET_MAC. */
	static const size_t bad_clock[] = { 0, 4, 7, 9 };
	for (size_t i = 0; i < sizeof bad_clock / sizeof bad_clock[0]; i++) {
		begin(3);
		str(MM_TAG_ARG, "x");
		record(MM_TAG_CLOCK, seed, bad_clock[i]);
		CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "CLOCK record is") != NULL);
	}
	begin(3);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_CLOCK, clock_ns, 8);
	record(MM_TAG_CLOCK, clock_ns, 8);
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "more than one CLOCK") != NULL);
	static const size_t bad_seed[] = { 0, 1, MM_MIN_SEED - 1, MM_MAX_SEED + 1 };
	for (size_t i = 0; i < sizeof bad_seed / sizeof bad_seed[0]; i++) {
		begin(3);
		str(MM_TAG_ARG, "x");
		record(MM_TAG_SEED, seed, bad_seed[i]);
		CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "SEED record is") != NULL &&
		      strstr(err, "16-512") != NULL);
	}
	begin(3);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_SEED, seed, 32);
	record(MM_TAG_SEED, seed, 32);
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "more than one SEED") != NULL);
	static const char *const bad_mac[] = { "52:54:00:ab:cd", "01:00:5e:00:00:01",
					       "00:00:00:00:00:00", "52:54:00:ab:cd:ef\n" };
	for (size_t i = 0; i < sizeof bad_mac / sizeof bad_mac[0]; i++) {
		begin(3);
		str(MM_TAG_ARG, "x");
		str(MM_TAG_NET_MAC, bad_mac[i]);
		CHECK(parse() == MM_PARSE_NET && strstr(err, "NET_MAC") != NULL);
	}
	begin(3);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_MAC, "52:54:00:ab:cd:ef");
	str(MM_TAG_NET_MAC, "52:54:00:ab:cd:ee");
	CHECK(parse() == MM_PARSE_NET && strstr(err, "more than one NET_MAC") != NULL);
	begin(3);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_NET_MAC, "52:54:00:ab:cd\0e", 17);
	CHECK(parse() == MM_PARSE_NET && strstr(err, "NUL") != NULL);

	/* EXEC ignores them, like HOSTNAME. */
	begin(3);
	str(MM_TAG_ARG, "sh");
	str(MM_TAG_NET_MAC, "bad");
	record(MM_TAG_CLOCK, "x", 1);
	record(MM_TAG_SEED, "x", 1);
	CHECK(parse_exec(3) == MM_PARSE_OK);
}

/* A MOUNT record's value: u8 flags, the serial, NUL, the mount point. */
static void mount(uint8_t flags, const char *serial, const char *path)
{
	static uint8_t value[1 + MM_MAX_SERIAL + 8 + 1 + MM_MAX_STRING + 8];
	size_t serial_len = strlen(serial), path_len = strlen(path);

	value[0] = flags;
	memcpy(value + 1, serial, serial_len);
	value[1 + serial_len] = '\0';
	memcpy(value + 2 + serial_len, path, path_len);
	record(MM_TAG_MOUNT, value, 2 + serial_len + path_len);
}

/* A CONFIG v4 with one MOUNT record: the parser's verdict. */
static int parse_one_mount(uint8_t flags, const char *serial, const char *path)
{
	begin(4);
	str(MM_TAG_ARG, "x");
	mount(flags, serial, path);
	return parse();
}

static void test_config_v4(void)
{
	static char long_path[MM_MAX_STRING + 2];

	/* v1 to v3 ignore MOUNT, however broken; so do EXEC and IDENTITY under v4. */
	for (uint16_t v = 1; v <= 3; v++) {
		begin(v);
		str(MM_TAG_ARG, "x");
		mount(0xff, "bad serial!", "relative");
		record(MM_TAG_MOUNT, "", 0);
		CHECK(parse() == MM_PARSE_OK && cfg.mounts.count == 0);
	}
	begin(4);
	str(MM_TAG_ARG, "sh");
	mount(0xff, "", "/proc");
	CHECK(parse_exec(4) == MM_PARSE_OK);
	begin(4);
	str(MM_TAG_HOSTNAME, "h");
	mount(0, "vol", "..");
	CHECK(parse_identity(4) == MM_PARSE_OK && idm.id.hostname != NULL);

	/* The fields, in order; v4 keeps the v2 and v3 records. */
	begin(4);
	str(MM_TAG_ARG, "x");
	mount(0, "vol-data_1.a", "/var/lib/data");
	mount(MM_MOUNT_READ_ONLY, "ABCDEFGHIJKLMNOPQRST", "/srv/ro/");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	str(MM_TAG_NET_MAC, "52:54:00:ab:cd:ef");
	CHECK(parse() == MM_PARSE_OK && cfg.version == 4 && cfg.mounts.count == 2);
	CHECK(!cfg.mounts.list[0].read_only && strcmp(cfg.mounts.list[0].name, "vol-data_1.a") == 0 &&
	      strcmp(cfg.mounts.list[0].path, "/var/lib/data") == 0);
	CHECK(cfg.mounts.list[1].read_only && strcmp(cfg.mounts.list[1].name, "ABCDEFGHIJKLMNOPQRST") == 0 &&
	      strcmp(cfg.mounts.list[1].path, "/srv/ro/") == 0);
	CHECK(cfg.mounts.list[0].kind == MM_MOUNT_BLOCK && cfg.mounts.list[1].kind == MM_MOUNT_BLOCK);
	CHECK(cfg.id.net.has_addr && cfg.id.net.has_mac);

	/* Paths that are fine: the reserved names deeper down or as a part of a name, dots. */
	static const char *const good_path[] = {
		"/data", "/srv/proc", "/procs", "/proc.d", "/devices", "/.mmx", "/mm", "/a/./b",
		"/a..b/...", "//data", "/data/", "/x/.mm", "/ünïcode", "/a b",
	};
	for (size_t i = 0; i < sizeof good_path / sizeof good_path[0]; i++)
		CHECK(parse_one_mount(0, "v", good_path[i]) == MM_PARSE_OK &&
		      strcmp(cfg.mounts.list[0].path, good_path[i]) == 0);
	memset(long_path, 'p', MM_MAX_STRING);
	long_path[0] = '/';
	CHECK(parse_one_mount(0, "v", long_path) == MM_PARSE_OK);
	long_path[MM_MAX_STRING] = 'p';
	CHECK(parse_one_mount(0, "v", long_path) == MM_PARSE_CONFIG &&
	      strstr(err, "MOUNT path is 4097 bytes (max 4096)") != NULL);

	/* Flags: bit 0 only. */
	for (unsigned bit = 1; bit < 8; bit++) {
		CHECK(parse_one_mount((uint8_t)(1u << bit | 1u), "v", "/data") == MM_PARSE_CONFIG &&
		      strstr(err, "MOUNT flags 0x") != NULL && strstr(err, "only bit 0") != NULL);
	}

	/* Serial: 1-20 of A-Z a-z 0-9 _ . - */
	static const char *const bad_serial[] = { "a b", "vol/1", "vol:1", "vol\n", "\xc3\xa9", "+", "vol*" };
	for (size_t i = 0; i < sizeof bad_serial / sizeof bad_serial[0]; i++)
		CHECK(parse_one_mount(0, bad_serial[i], "/data") == MM_PARSE_CONFIG &&
		      strstr(err, "MOUNT serial has a byte outside") != NULL);
	CHECK(parse_one_mount(0, "", "/data") == MM_PARSE_CONFIG &&
	      strstr(err, "MOUNT serial is 0 bytes (must be 1-20)") != NULL);
	CHECK(parse_one_mount(0, "ABCDEFGHIJKLMNOPQRSTU", "/data") == MM_PARSE_CONFIG &&
	      strstr(err, "MOUNT serial is 21 bytes (must be 1-20)") != NULL);

	/* Mount points. */
	static const struct { const char *path, *why; } bad_path[] = {
		{ "data", "is not absolute" }, { "", "is not absolute" }, { "./data", "is not absolute" },
		{ "/", "is the root directory" }, { "//", "is the root directory" },
		{ "/./", "is the root directory" }, { "/.", "is the root directory" },
		{ "/..", "has a .. component" }, { "/data/..", "has a .. component" },
		{ "/data/../etc", "has a .. component" }, { "/a/../../b", "has a .. component" },
		{ "/proc", "is in /proc (reserved)" }, { "/proc/x", "is in /proc (reserved)" },
		{ "/sys/fs/x", "is in /sys (reserved)" }, { "/dev", "is in /dev (reserved)" },
		{ "/dev/shm/x", "is in /dev (reserved)" }, { "/.mm", "is in /.mm (reserved)" },
		{ "/.mm/x", "is in /.mm (reserved)" }, { "/.mm/tools", "is in /.mm (reserved)" },
		{ "//proc/x", "is in /proc (reserved)" }, { "/./sys", "is in /sys (reserved)" },
		{ "/dev/", "is in /dev (reserved)" },
	};
	for (size_t i = 0; i < sizeof bad_path / sizeof bad_path[0]; i++) {
		CHECK(parse_one_mount(0, "v", bad_path[i].path) == MM_PARSE_CONFIG &&
		      strncmp(err, "MOUNT path \"", 12) == 0 && strstr(err, bad_path[i].why) != NULL);
	}

	/* The record's shape: a flags byte, a NUL after the serial, no NUL in the path. */
	begin(4);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_MOUNT, "", 0);
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "MOUNT record is empty") != NULL);
	begin(4);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_MOUNT, "\0vol", 4);
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "no NUL after the serial") != NULL);
	begin(4);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_MOUNT, "\0", 1);
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "no NUL after the serial") != NULL);
	begin(4);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_MOUNT, "\0vol/data", 9);
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "no NUL after the serial") != NULL);
	begin(4);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_MOUNT, "\0vol\0/da\0ta", 12);
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "MOUNT path contains a NUL byte") != NULL);
	begin(4);
	str(MM_TAG_ARG, "x");
	record(MM_TAG_MOUNT, "\0vol\0", 5);
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "is not absolute") != NULL);

	/* At most MM_MAX_MOUNTS, no serial and no mount point twice. */
	begin(4);
	str(MM_TAG_ARG, "x");
	for (int i = 0; i < MM_MAX_MOUNTS; i++) {
		char serial[8], path[16];

		snprintf(serial, sizeof serial, "v%d", i);
		snprintf(path, sizeof path, "/data/%d", i);
		mount(0, serial, path);
	}
	CHECK(parse() == MM_PARSE_OK && cfg.mounts.count == MM_MAX_MOUNTS &&
	      strcmp(cfg.mounts.list[15].path, "/data/15") == 0);
	mount(0, "v16", "/data/16");
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "more than 16 MOUNT records") != NULL);
	begin(4);
	str(MM_TAG_ARG, "x");
	mount(0, "vol", "/a");
	mount(MM_MOUNT_READ_ONLY, "vol", "/b");
	CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "two MOUNT records for serial vol") != NULL);
	begin(4);
	str(MM_TAG_ARG, "x");
	mount(0, "Vol", "/a");
	mount(0, "vol", "/b");
	CHECK(parse() == MM_PARSE_OK);   /* serials are case-sensitive, as sysfs shows them */
	static const char *const same_as_data[] = { "/data", "/data/", "//data", "/./data/.", "/data//" };
	for (size_t i = 0; i < sizeof same_as_data / sizeof same_as_data[0]; i++) {
		begin(4);
		str(MM_TAG_ARG, "x");
		mount(0, "a", "/data");
		mount(0, "b", same_as_data[i]);
		CHECK(parse() == MM_PARSE_CONFIG && strstr(err, "two MOUNT records at \"") != NULL);
	}
	begin(4);
	str(MM_TAG_ARG, "x");
	mount(0, "a", "/data");
	mount(0, "b", "/data/sub");
	mount(0, "c", "/dat");
	mount(0, "d", "/data2");
	CHECK(parse() == MM_PARSE_OK && cfg.mounts.count == 4);   /* nested is fine */

	/* A MOUNT error is CONFIG, also beside NET records. */
	begin(4);
	str(MM_TAG_ARG, "x");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	mount(0, "v", "/proc/x");
	CHECK(parse() == MM_PARSE_CONFIG);

	/* A payload of MM_MAX_PAYLOAD bytes, mostly MOUNT records, fits the string store. */
	begin(4);
	long_path[4000] = '\0';
	for (int i = 0; i < MM_MAX_MOUNTS; i++) {
		char serial[8];

		snprintf(serial, sizeof serial, "v%d", i);
		long_path[3999] = (char)('a' + i);
		mount(1, serial, long_path);
	}
	record(MM_TAG_ARG, long_path + 1, MM_MAX_PAYLOAD - plen - 3);
	CHECK(plen == MM_MAX_PAYLOAD);
	CHECK(parse() == MM_PARSE_OK && cfg.mounts.count == MM_MAX_MOUNTS &&
	      cfg.strings_used <= sizeof cfg.strings);
}

/* A MOUNT flags byte of version 5: the kind in bits 1-2. */
#define KIND(k) ((uint8_t)((unsigned)(k) << MM_MOUNT_KIND_SHIFT))

/* A CONFIG v5 with one MOUNT record: the parser's verdict. */
static int parse_one_mount_v5(uint8_t flags, const char *name, const char *path)
{
	begin(5);
	str(MM_TAG_ARG, "x");
	mount(flags, name, path);
	return parse();
}

/* Two MOUNT records of CONFIG v5: the parser's verdict. */
static int parse_two_mounts_v5(uint8_t flags1, const char *name1, const char *path1,
			       uint8_t flags2, const char *name2, const char *path2)
{
	begin(5);
	str(MM_TAG_ARG, "x");
	mount(flags1, name1, path1);
	mount(flags2, name2, path2);
	return parse();
}

static void test_config_v5(void)
{
	static const uint8_t share_kinds[] = { KIND(MM_MOUNT_VIRTIOFS), KIND(MM_MOUNT_9P) };

	/* Every kind, read-only or not, in the records' order; v5 keeps the v2-v4 records. */
	begin(5);
	str(MM_TAG_ARG, "x");
	mount(KIND(MM_MOUNT_BLOCK), "vol", "/data");
	mount(KIND(MM_MOUNT_VIRTIOFS), "src", "/src");
	mount(KIND(MM_MOUNT_VIRTIOFS) | MM_MOUNT_READ_ONLY, "conf", "/etc/app");
	mount(KIND(MM_MOUNT_9P), "share_9p.x-1", "/mnt/9p");
	mount(KIND(MM_MOUNT_9P) | MM_MOUNT_READ_ONLY, "ABCDEFGHIJKLMNOPQRST", "/mnt/ro");
	mount(MM_MOUNT_READ_ONLY, "vol-ro", "/data/ro");
	str(MM_TAG_NET_ADDR, "10.88.0.5/16");
	str(MM_TAG_NET_MAC, "52:54:00:ab:cd:ef");
	CHECK(parse() == MM_PARSE_OK && cfg.version == 5 && cfg.mounts.count == 6 &&
	      cfg.id.net.has_addr && cfg.id.net.has_mac);
	{
		static const struct { enum mm_mount_kind kind; bool ro; const char *name, *path; } want[] = {
			{ MM_MOUNT_BLOCK, false, "vol", "/data" },
			{ MM_MOUNT_VIRTIOFS, false, "src", "/src" },
			{ MM_MOUNT_VIRTIOFS, true, "conf", "/etc/app" },
			{ MM_MOUNT_9P, false, "share_9p.x-1", "/mnt/9p" },
			{ MM_MOUNT_9P, true, "ABCDEFGHIJKLMNOPQRST", "/mnt/ro" },
			{ MM_MOUNT_BLOCK, true, "vol-ro", "/data/ro" },
		};
		for (size_t i = 0; i < sizeof want / sizeof want[0] && i < cfg.mounts.count; i++) {
			const struct mm_mount *m = &cfg.mounts.list[i];

			CHECK(m->kind == want[i].kind && m->read_only == want[i].ro &&
			      strcmp(m->name, want[i].name) == 0 && strcmp(m->path, want[i].path) == 0);
		}
	}

	/* Flags: every value of bits 0-2 but kind 3; no other bit. */
	for (unsigned f = 0; f < 8; f++) {
		int r = parse_one_mount_v5((uint8_t)f, "t", "/data");

		if (f >> 1 == 3)
			CHECK(r == MM_PARSE_CONFIG && strstr(err, "kind 3 is not defined") != NULL);
		else
			CHECK(r == MM_PARSE_OK && cfg.mounts.count == 1 &&
			      cfg.mounts.list[0].kind == (enum mm_mount_kind)(f >> 1) &&
			      cfg.mounts.list[0].read_only == ((f & 1) != 0));
	}
	CHECK(parse_one_mount_v5(0x06, "t", "/data") == MM_PARSE_CONFIG &&
	      strcmp(err, "MOUNT flags 0x06: kind 3 is not defined (0 block, 1 virtio-fs, 2 9p)") == 0);
	for (unsigned bit = 3; bit < 8; bit++) {
		CHECK(parse_one_mount_v5((uint8_t)(1u << bit | KIND(MM_MOUNT_VIRTIOFS)), "t", "/data") ==
			      MM_PARSE_CONFIG &&
		      strstr(err, "only bits 0-2 (read-only, kind) are defined") != NULL);
		CHECK(parse_one_mount_v5((uint8_t)(1u << bit), "t", "/data") == MM_PARSE_CONFIG &&
		      strstr(err, "only bits 0-2") != NULL);
	}
	CHECK(parse_one_mount_v5(0xff, "t", "/data") == MM_PARSE_CONFIG &&
	      strcmp(err, "MOUNT flags 0xff: only bits 0-2 (read-only, kind) are defined") == 0);

	/* Under v4 the kind bits are still undefined: only a block disk. */
	CHECK(parse_one_mount(KIND(MM_MOUNT_VIRTIOFS), "t", "/data") == MM_PARSE_CONFIG &&
	      strcmp(err, "MOUNT flags 0x02: only bit 0 (read-only) is defined") == 0);
	CHECK(parse_one_mount(KIND(MM_MOUNT_9P) | MM_MOUNT_READ_ONLY, "t", "/data") == MM_PARSE_CONFIG &&
	      strcmp(err, "MOUNT flags 0x05: only bit 0 (read-only) is defined") == 0);

	/* A share's tag follows the serial's rule: 1-20 of A-Z a-z 0-9 _ . - */
	for (size_t k = 0; k < sizeof share_kinds; k++) {
		static const char *const bad_tag[] = { "a b", "src/1", "src:1", "tag\n", "\xc3\xa9", "+", "*" };

		for (size_t i = 0; i < sizeof bad_tag / sizeof bad_tag[0]; i++)
			CHECK(parse_one_mount_v5(share_kinds[k], bad_tag[i], "/data") == MM_PARSE_CONFIG &&
			      strcmp(err, "MOUNT tag has a byte outside A-Z a-z 0-9 _ . -") == 0);
		CHECK(parse_one_mount_v5(share_kinds[k], "", "/data") == MM_PARSE_CONFIG &&
		      strcmp(err, "MOUNT tag is 0 bytes (must be 1-20)") == 0);
		CHECK(parse_one_mount_v5(share_kinds[k], "ABCDEFGHIJKLMNOPQRSTU", "/data") == MM_PARSE_CONFIG &&
		      strcmp(err, "MOUNT tag is 21 bytes (must be 1-20)") == 0);
		CHECK(parse_one_mount_v5(share_kinds[k], "ABCDEFGHIJKLMNOPQRST", "/data") == MM_PARSE_OK);
		CHECK(parse_one_mount_v5(share_kinds[k], "a.b-c_D9", "/data") == MM_PARSE_OK);
		begin(5);
		str(MM_TAG_ARG, "x");
		record(MM_TAG_MOUNT, share_kinds[k] == KIND(MM_MOUNT_9P) ? "\4src" : "\2src", 4);
		CHECK(parse() == MM_PARSE_CONFIG &&
		      strcmp(err, "MOUNT record has no NUL after the tag") == 0);
	}
	/* The serial keeps its v4 wording under v5. */
	CHECK(parse_one_mount_v5(0, "a b", "/data") == MM_PARSE_CONFIG &&
	      strcmp(err, "MOUNT serial has a byte outside A-Z a-z 0-9 _ . -") == 0);

	/* The mount point rules are v4's, for every kind. */
	for (size_t k = 0; k < sizeof share_kinds; k++) {
		static const struct { const char *path, *why; } bad_path[] = {
			{ "data", "is not absolute" }, { "/", "is the root directory" },
			{ "//.", "is the root directory" }, { "/a/../b", "has a .. component" },
			{ "/proc", "is in /proc (reserved)" }, { "/sys/x", "is in /sys (reserved)" },
			{ "/dev/shm", "is in /dev (reserved)" }, { "/.mm/tools", "is in /.mm (reserved)" },
		};

		for (size_t i = 0; i < sizeof bad_path / sizeof bad_path[0]; i++)
			CHECK(parse_one_mount_v5(share_kinds[k], "t", bad_path[i].path) == MM_PARSE_CONFIG &&
			      strncmp(err, "MOUNT path \"", 12) == 0 && strstr(err, bad_path[i].why) != NULL);
	}

	/* No name and no mount point twice, whatever the kinds. */
	CHECK(parse_two_mounts_v5(KIND(MM_MOUNT_BLOCK), "data", "/a", KIND(MM_MOUNT_VIRTIOFS), "data",
				  "/b") == MM_PARSE_CONFIG &&
	      strcmp(err, "two MOUNT records name data (a serial and a tag)") == 0);
	CHECK(parse_two_mounts_v5(KIND(MM_MOUNT_9P), "data", "/a", MM_MOUNT_READ_ONLY, "data", "/b") ==
		      MM_PARSE_CONFIG &&
	      strcmp(err, "two MOUNT records name data (a tag and a serial)") == 0);
	CHECK(parse_two_mounts_v5(KIND(MM_MOUNT_VIRTIOFS), "s", "/a", KIND(MM_MOUNT_9P), "s", "/b") ==
		      MM_PARSE_CONFIG &&
	      strcmp(err, "two MOUNT records for tag s") == 0);
	CHECK(parse_two_mounts_v5(KIND(MM_MOUNT_VIRTIOFS), "s", "/a", KIND(MM_MOUNT_VIRTIOFS), "s",
				  "/b") == MM_PARSE_CONFIG &&
	      strcmp(err, "two MOUNT records for tag s") == 0);
	CHECK(parse_two_mounts_v5(KIND(MM_MOUNT_BLOCK), "v", "/data", KIND(MM_MOUNT_9P), "s", "/data/") ==
		      MM_PARSE_CONFIG &&
	      strcmp(err, "two MOUNT records at \"/data/\"") == 0);
	CHECK(parse_two_mounts_v5(KIND(MM_MOUNT_VIRTIOFS), "a", "/x", KIND(MM_MOUNT_9P), "b", "//x/.") ==
		      MM_PARSE_CONFIG &&
	      strstr(err, "two MOUNT records at \"") != NULL);
	CHECK(parse_two_mounts_v5(KIND(MM_MOUNT_VIRTIOFS), "src", "/x", KIND(MM_MOUNT_VIRTIOFS), "Src",
				  "/x/nested") == MM_PARSE_OK && cfg.mounts.count == 2);   /* case counts */

	/* At most MM_MAX_MOUNTS of all kinds together. */
	begin(5);
	str(MM_TAG_ARG, "x");
	for (int i = 0; i < MM_MAX_MOUNTS; i++) {
		char name[8], path[16];

		snprintf(name, sizeof name, "m%d", i);
		snprintf(path, sizeof path, "/mnt/%d", i);
		mount(KIND(i % 3), name, path);
	}
	CHECK(parse() == MM_PARSE_OK && cfg.mounts.count == MM_MAX_MOUNTS &&
	      cfg.mounts.list[15].kind == MM_MOUNT_BLOCK && cfg.mounts.list[14].kind == MM_MOUNT_9P);
	mount(KIND(MM_MOUNT_VIRTIOFS), "m16", "/mnt/16");
	CHECK(parse() == MM_PARSE_CONFIG && strcmp(err, "more than 16 MOUNT records") == 0);

	/* EXEC and IDENTITY ignore MOUNT under v5 too, however broken. */
	begin(5);
	str(MM_TAG_ARG, "sh");
	mount(KIND(3), "bad tag!", "/proc");
	CHECK(parse_exec(5) == MM_PARSE_OK);
	begin(5);
	str(MM_TAG_HOSTNAME, "h");
	mount(0xff, "", "..");
	CHECK(parse_identity(5) == MM_PARSE_OK && idm.id.hostname != NULL);
}

static void test_identity(void)
{
	uint8_t flags[4] = { 0, 0, 0, 1 };

	begin(3);
	str(MM_TAG_HOSTNAME, "fork-1");
	str(MM_TAG_NET_MAC, "52:54:00:12:34:56");
	str(MM_TAG_NET_ADDR, "10.88.0.6/16");
	str(MM_TAG_NET_GATEWAY, "10.88.0.1");
	str(MM_TAG_DNS, "10.88.0.1");
	str(MM_TAG_HOSTS, "10.88.0.6 fork-1");
	record(MM_TAG_CLOCK, clock_ns, 8);
	record(MM_TAG_SEED, seed, 64);
	/* Records that mean nothing in IDENTITY are ignored, however broken. */
	str(MM_TAG_ARG, "ignored");
	str(MM_TAG_ENV, "NOEQUALS");
	str(MM_TAG_CWD, "relative");
	record(MM_TAG_FLAGS, flags, 2);
	record(MM_TAG_TTY, winsize, 3);
	str(99, "from the future");
	CHECK(parse_identity(3) == MM_PARSE_OK);
	CHECK(strcmp(idm.id.hostname, "fork-1") == 0);
	CHECK(idm.id.net.has_mac && idm.id.net.mac[5] == 0x56 && idm.id.net.has_addr &&
	      idm.id.net.addr == 0x0a580006 && idm.id.net.has_gateway);
	CHECK(idm.id.net.dns_count == 1 && idm.id.net.hosts_count == 1);
	CHECK(idm.id.has_clock && idm.id.seed_len == 64);

	/* Empty: nothing to apply, still valid (the sessions end, the guest resumes). */
	begin(3);
	CHECK(parse_identity(3) == MM_PARSE_OK && idm.id.hostname == NULL && !idm.id.net.has_addr &&
	      !idm.id.net.has_mac && !idm.id.has_clock && idm.id.seed_len == 0);

	/* The version must be the agreed one; CONFIG's rules otherwise. */
	CHECK(parse_identity(2) == MM_PARSE_CONFIG &&
	      strstr(err, "IDENTITY version 3 is not the agreed version 2") != NULL);
	plen = 1;
	CHECK(parse_identity(3) == MM_PARSE_CONFIG && strstr(err, "no version") != NULL);
	begin(3);
	str(MM_TAG_HOSTNAME, "");
	CHECK(parse_identity(3) == MM_PARSE_CONFIG && strstr(err, "HOSTNAME is empty") != NULL);
	begin(3);
	str(MM_TAG_HOSTNAME, "a");
	str(MM_TAG_HOSTNAME, "b");
	CHECK(parse_identity(3) == MM_PARSE_CONFIG && strstr(err, "more than one HOSTNAME") != NULL);
	begin(3);
	record(MM_TAG_SEED, seed, 8);
	CHECK(parse_identity(3) == MM_PARSE_CONFIG && strstr(err, "SEED") != NULL);
	begin(3);
	record(MM_TAG_CLOCK, clock_ns, 4);
	CHECK(parse_identity(3) == MM_PARSE_CONFIG && strstr(err, "CLOCK") != NULL);
	begin(3);
	str(MM_TAG_NET_MAC, "01:02:03:04:05:06");
	CHECK(parse_identity(3) == MM_PARSE_NET && strstr(err, "unicast") != NULL);
	begin(3);
	str(MM_TAG_NET_GATEWAY, "10.0.0.1");
	CHECK(parse_identity(3) == MM_PARSE_NET && strstr(err, "without NET_ADDR") != NULL);
	begin(3);
	str(MM_TAG_NET_ADDR, "10.0.0.0/8");
	CHECK(parse_identity(3) == MM_PARSE_NET && strstr(err, "NET_ADDR") != NULL);
	begin(3);
	str(MM_TAG_HOSTS, "10.0.0.1 a\nb");
	CHECK(parse_identity(3) == MM_PARSE_NET && strstr(err, "HOSTS") != NULL);
	begin(3);
	str(MM_TAG_HOSTNAME, "a");
	payload[plen++] = MM_TAG_HOSTNAME;
	CHECK(parse_identity(3) == MM_PARSE_CONFIG && strstr(err, "truncated") != NULL);
}

static void test_ipv4(void)
{
	uint32_t a = 0;

	CHECK(mm_parse_ipv4("0.0.0.0", &a) && a == 0);
	CHECK(mm_parse_ipv4("255.255.255.255", &a) && a == UINT32_MAX);
	CHECK(mm_parse_ipv4("10.88.0.5", &a) && a == 0x0a580005);
	CHECK(!mm_parse_ipv4("01.2.3.4", &a));
	CHECK(!mm_parse_ipv4("1.2.3.4.5", &a));
	CHECK(!mm_parse_ipv4("1.2.3", &a));
	CHECK(!mm_parse_ipv4("1..3.4", &a));
	CHECK(!mm_parse_ipv4("1.2.3.1000", &a));
	CHECK(!mm_parse_ipv4("1.2.3.-4", &a));
	CHECK(!mm_parse_ipv4("0x1.2.3.4", &a));
	CHECK(mm_is_ip_address("::1") && mm_is_ip_address("2001:db8::1") &&
	      mm_is_ip_address("::ffff:10.0.0.1"));
	CHECK(!mm_is_ip_address("2001:db8:::1") && !mm_is_ip_address("localhost"));
}

static void test_rx(void)
{
	static struct mm_rx rx;
	static uint8_t frames[BUF_MAX];
	struct mm_frame f;
	uint32_t bad = 0;
	size_t total = 0, fed = 0, avail;
	int got = 0;

	total += mm_frame_encode(frames + total, sizeof frames - total, MM_SIGNAL, 0, "\0\0\0\17", 4);
	total += mm_frame_encode(frames + total, sizeof frames - total, MM_POWEROFF, 7, NULL, 0);
	CHECK(total == 9 + 4 + 9);
	CHECK(mm_frame_encode(frames, sizeof frames, MM_STDOUT, 0, frames, MM_MAX_PAYLOAD + 1) == 0);

	/* Byte by byte: frames come out whole, in order. */
	while (fed < total) {
		uint8_t *space = mm_rx_space(&rx, &avail);

		CHECK(avail > 0);
		*space = frames[fed++];
		mm_rx_commit(&rx, 1);
		while (mm_rx_next(&rx, &f, &bad) == 1) {
			got++;
			if (got == 1)
				CHECK(f.type == MM_SIGNAL && f.payload_len == 4 && mm_get_u32(f.payload) == 15);
			else
				CHECK(f.type == MM_POWEROFF && f.stream == 7 && f.payload_len == 0);
		}
	}
	CHECK(got == 2);

	/* A maximal frame fits the buffer exactly. */
	memset(&rx, 0, sizeof rx);
	total = mm_frame_encode(frames, sizeof frames, MM_STDIN, 0, payload, MM_MAX_PAYLOAD);
	CHECK(total == MM_FRAME_MAX);
	memcpy(mm_rx_space(&rx, &avail), frames, total);
	CHECK(avail == total);
	mm_rx_commit(&rx, total);
	CHECK(mm_rx_next(&rx, &f, &bad) == 1 && f.payload_len == MM_MAX_PAYLOAD);
	CHECK(mm_rx_next(&rx, &f, &bad) == 0);

	/* len out of range, either way. */
	memset(&rx, 0, sizeof rx);
	mm_put_u32(mm_rx_space(&rx, &avail), MM_LEN_MAX + 1);
	mm_rx_commit(&rx, 4);
	CHECK(mm_rx_next(&rx, &f, &bad) == -1 && bad == MM_LEN_MAX + 1);
	memset(&rx, 0, sizeof rx);
	mm_put_u32(mm_rx_space(&rx, &avail), 4);
	mm_rx_commit(&rx, 4);
	CHECK(mm_rx_next(&rx, &f, &bad) == -1 && bad == 4);
}

static void test_utf8(void)
{
	const char *e_acute = "caf\xc3\xa9";     /* é is 2 bytes */
	const char *euro = "\xe2\x82\xac";        /* € is 3 bytes */

	CHECK(mm_utf8_whole_len("plain", 5) == 5);
	CHECK(mm_utf8_whole_len(e_acute, 5) == 5);
	CHECK(mm_utf8_whole_len(e_acute, 4) == 3);
	CHECK(mm_utf8_whole_len(euro, 3) == 3);
	CHECK(mm_utf8_whole_len(euro, 2) == 0);
	CHECK(mm_utf8_whole_len(euro, 1) == 0);
	CHECK(mm_utf8_whole_len("\x80\x80", 2) == 2);  /* not ours to repair */
	CHECK(mm_utf8_whole_len("", 0) == 0);
}

int main(void)
{
	for (size_t i = 0; i < sizeof seed; i++)
		seed[i] = (uint8_t)(i * 7);   /* some NULs among them */
	test_config();
	test_config_v2();
	test_exec();
	test_mac();
	test_config_v3();
	test_config_v4();
	test_config_v5();
	test_identity();
	test_ipv4();
	test_utf8();
	test_rx();
	if (failures != 0) {
		fprintf(stderr, "protocol-test: %d failure(s)\n", failures);
		return 1;
	}
	printf("protocol-test: ok\n");
	return 0;
}
