/* Unit tests for protocol.c: frame receiver and CONFIG validation, limit by limit.
 * Built and run by `make check`; prints one line per failure, exits non-zero. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define BUF_MAX (2 * MM_FRAME_MAX)

static int failures;
static struct mm_config cfg;
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
	CHECK(cfg.argc == 2 && strcmp(cfg.argv[1], "-c") == 0 && cfg.argv[2] == NULL);
	CHECK(cfg.envc == 1 && strcmp(cfg.envp[0], "A=1") == 0 && cfg.envp[1] == NULL);
	CHECK(strcmp(cfg.cwd, "/srv") == 0 && strcmp(cfg.user, "1000:1000") == 0);
	CHECK(strcmp(cfg.hostname, "box") == 0 && cfg.flags == MM_FLAG_STAY_UP);

	begin(1);
	CHECK(parse() != 0 && strstr(err, "no ARG") != NULL);
	begin(2);
	str(MM_TAG_ARG, "sh");
	CHECK(parse() != 0 && strstr(err, "version") != NULL);
	plen = 1;
	CHECK(parse() != 0);

	begin(1);
	for (int i = 0; i < MM_MAX_ARGS; i++)
		str(MM_TAG_ARG, "a");
	CHECK(parse() == 0 && cfg.argc == MM_MAX_ARGS);
	str(MM_TAG_ARG, "a");
	CHECK(parse() != 0 && strstr(err, "ARG") != NULL);

	begin(1);
	str(MM_TAG_ARG, "x");
	for (int i = 0; i < MM_MAX_ENV; i++)
		str(MM_TAG_ENV, "K=v");
	CHECK(parse() == 0 && cfg.envc == MM_MAX_ENV);
	str(MM_TAG_ENV, "K=v");
	CHECK(parse() != 0);

	memset(big, 'x', MM_MAX_STRING);
	begin(1);
	record(MM_TAG_ARG, big, MM_MAX_STRING);
	CHECK(parse() == 0 && strlen(cfg.argv[0]) == MM_MAX_STRING);
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
	test_config();
	test_utf8();
	test_rx();
	if (failures != 0) {
		fprintf(stderr, "protocol-test: %d failure(s)\n", failures);
		return 1;
	}
	printf("protocol-test: ok\n");
	return 0;
}
