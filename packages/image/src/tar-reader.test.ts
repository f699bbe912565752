import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import { paxBody, type RawEntry, tarArchive, tarHeader } from "./tar-build.test-util.js";
import { MAX_META_BYTES, parsePaxRecords, readTar, type TarEntry } from "./tar-reader.js";

const badLayer = (e: unknown) => isMmError(e, "MM_BAD_LAYER");

async function* chunks(data: Buffer, size = 700): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

async function readAll(data: Buffer, chunkSize?: number): Promise<{ entry: TarEntry; body: Buffer }[]> {
  const out: { entry: TarEntry; body: Buffer }[] = [];
  await readTar(chunks(data, chunkSize), async (entry, body) => {
    const parts: Buffer[] = [];
    for await (const c of body) parts.push(c);
    out.push({ entry, body: Buffer.concat(parts) });
  });
  return out;
}

test("PAX records keep binary values, newlines included", () => {
  const value = Buffer.from([0, 10, 255, 61, 32]);
  const body = paxBody({ path: "a/b", "SCHILY.xattr.user.x": value, mtime: "1700000000.25" });
  const r = parsePaxRecords(Buffer.concat([body, Buffer.alloc(30)]));
  assert.equal(r.get("path")?.toString(), "a/b");
  assert.deepEqual(r.get("SCHILY.xattr.user.x"), value);
  for (const bad of ["5 a=b\n", "x a=b\n", "06 a=b", "7 =b\n\n", "4 ab\n", "00000000000000000000006 a=b\n"]) {
    assert.throws(() => parsePaxRecords(Buffer.from(bad)), badLayer, JSON.stringify(bad));
  }
});

test("PAX round trip for any key and value bytes", () => {
  fc.assert(
    fc.property(
      fc.dictionary(
        fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !k.includes("=") && !k.includes("\0")),
        fc.uint8Array({ maxLength: 40 }),
      ),
      (records) => {
        const asBuffers = Object.fromEntries(Object.entries(records).map(([k, v]) => [k, Buffer.from(v)]));
        const parsed = parsePaxRecords(paxBody(asBuffers));
        assert.equal(parsed.size, Object.keys(records).length);
        for (const [k, v] of Object.entries(asBuffers)) assert.deepEqual(parsed.get(k), v);
      },
    ),
  );
});

test("entries, bodies, PAX overrides and xattrs, in any chunking", async () => {
  const entries: RawEntry[] = [
    { name: "dir", type: "5", mode: 0o2755, uid: 5, gid: 6, mtime: 1_600_000_000 },
    { name: "short", data: "hello" },
    { name: "x", data: "y".repeat(1000), pax: { path: "a/long/name", uid: "3000000", mtime: "1700000000.5" } },
    { name: "cap", data: "", pax: { "SCHILY.xattr.security.capability": Buffer.from([1, 0, 0, 2, 10]) } },
    { name: "sl", type: "2", linkname: "target" },
    { name: "hl", type: "1", linkname: "short" },
    { name: "null", type: "3", devmajor: 1, devminor: 3 },
    { name: "fifo", type: "6" },
  ];
  for (const size of [1, 100, 511, 512, 513, 100000]) {
    const got = await readAll(tarArchive(entries), size);
    assert.deepEqual(
      got.map((g) => [g.entry.type, g.entry.name]),
      [
        ["dir", "dir"],
        ["file", "short"],
        ["file", "a/long/name"],
        ["file", "cap"],
        ["symlink", "sl"],
        ["hardlink", "hl"],
        ["char", "null"],
        ["fifo", "fifo"],
      ],
    );
    assert.equal(got[0]!.entry.mode, 0o2755);
    assert.equal(got[0]!.entry.uid, 5);
    assert.equal(got[0]!.entry.mtime, 1_600_000_000);
    assert.equal(got[1]!.body.toString(), "hello");
    assert.equal(got[2]!.body.toString(), "y".repeat(1000));
    assert.equal(got[2]!.entry.uid, 3_000_000);
    assert.equal(got[2]!.entry.mtime, 1_700_000_000.5);
    assert.deepEqual(got[3]!.entry.xattrs.get("security.capability"), Buffer.from([1, 0, 0, 2, 10]));
    assert.equal(got[4]!.entry.xattrs.size, 0, "PAX records apply to one entry only");
    assert.equal(got[4]!.entry.linkname, "target");
    assert.equal(got[5]!.entry.linkname, "short");
    assert.equal(got[6]!.entry.devmajor, 1);
    assert.equal(got[6]!.entry.devminor, 3);
  }
});

test("GNU long names and links, GNU-format device numbers, global headers ignored", async () => {
  const longName = `${"n".repeat(200)}/file`;
  const longLink = `/${"l".repeat(300)}`;
  const gnu = (e: RawEntry) => {
    const h = tarHeader(e);
    h.write("ustar  \0", 257, "latin1"); // GNU magic
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
    return h;
  };
  const pad = (n: number) => Buffer.alloc((512 - (n % 512)) % 512);
  const ln = Buffer.from(`${longName}\0`);
  const ll = Buffer.from(`${longLink}\0`);
  const g = paxBody({ comment: "global" });
  const data = Buffer.concat([
    tarHeader({ name: "pax_global_header", type: "g", size: g.length }),
    g,
    pad(g.length),
    gnu({ name: "././@LongLink", type: "L", size: ln.length }),
    ln,
    pad(ln.length),
    gnu({ name: "././@LongLink", type: "K", size: ll.length }),
    ll,
    pad(ll.length),
    gnu({ name: "truncated-name", type: "2", linkname: "truncated-link" }),
    gnu({ name: "dev/sda", type: "4", devmajor: 8, devminor: 0 }),
    Buffer.alloc(1024),
  ]);
  const got = await readAll(data);
  assert.equal(got.length, 2);
  assert.equal(got[0]!.entry.name, longName);
  assert.equal(got[0]!.entry.linkname, longLink);
  assert.equal(got[1]!.entry.type, "block");
  assert.equal(got[1]!.entry.devmajor, 8);
});

test("a later PAX header replaces an earlier one; PAX names win over GNU long names", async () => {
  const x = (records: Record<string, string>) => {
    const body = paxBody(records);
    return Buffer.concat([
      tarHeader({ name: "x", type: "x", size: body.length }),
      body,
      Buffer.alloc((512 - (body.length % 512)) % 512),
    ]);
  };
  const ln = Buffer.from("gnu-name\0");
  const data = Buffer.concat([
    x({ "SCHILY.xattr.user.first": "1", uid: "7" }),
    x({ "SCHILY.xattr.user.second": "2" }),
    tarHeader({ name: "L", type: "L", size: ln.length }),
    ln,
    Buffer.alloc(512 - ln.length),
    tarHeader({ name: "plain" }),
    x({ path: "pax-name" }),
    tarHeader({ name: "L", type: "L", size: ln.length }),
    ln,
    Buffer.alloc(512 - ln.length),
    tarHeader({ name: "plain2" }),
    Buffer.alloc(1024),
  ]);
  const got = await readAll(data);
  assert.equal(got[0]!.entry.name, "gnu-name");
  assert.deepEqual([...got[0]!.entry.xattrs.keys()], ["user.second"]);
  assert.equal(got[0]!.entry.uid, 0);
  assert.equal(got[1]!.entry.name, "pax-name");
});

test("stops at the end-of-archive marker without reading further; accepts a clean end", async () => {
  let pulled = 0;
  const archive = Buffer.concat([tarArchive([{ name: "a", data: "a" }]), Buffer.alloc(10 * 1024 * 1024, 7)]);
  async function* source() {
    for (let i = 0; i < archive.length; i += 4096) {
      pulled += 4096;
      yield archive.subarray(i, i + 4096);
    }
  }
  assert.equal((await readTar(source(), async () => {})).entries, 1);
  assert.ok(pulled <= 8192, `pulled ${pulled}`);
  const noEnd = tarArchive([{ name: "a", data: "a" }], false);
  assert.equal((await readTar(chunks(noEnd), async () => {})).entries, 1);
  assert.equal((await readTar(chunks(Buffer.concat([noEnd, Buffer.alloc(512)])), async () => {})).entries, 1);
});

test("a handler that leaves its body unread does not desynchronise the stream", async () => {
  const names: string[] = [];
  await readTar(
    chunks(
      tarArchive([
        { name: "big", data: "z".repeat(5000) },
        { name: "next", data: "n" },
      ]),
      333,
    ),
    async (e, body) => {
      names.push(e.name);
      for await (const _ of body) break; // read one chunk only
    },
  );
  assert.deepEqual(names, ["big", "next"]);
});

test("malformed archives are MM_BAD_LAYER", async () => {
  const cases: [string, Buffer][] = [
    ["oversized PAX header", tarHeader({ name: "p", type: "x", size: MAX_META_BYTES + 1 })],
    ["sparse PAX", tarArchive([{ name: "s", data: "", pax: { "GNU.sparse.major": "1" } }])],
    [
      "negative size",
      Buffer.concat([
        (() => {
          const h = tarHeader({ name: "n" });
          h.fill(0xff, 124, 136); // base-256 negative
          h.fill(0x20, 148, 156);
          let sum = 0;
          for (const b of h) sum += b;
          h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
          return h;
        })(),
      ]),
    ],
    ["bad PAX uid", tarArchive([{ name: "u", pax: { uid: "-5" } }])],
    ["uid out of range", tarArchive([{ name: "u", pax: { uid: "99999999999" } }])],
    ["truncated PAX body", tarHeader({ name: "p", type: "x", size: 100 })],
    ["half a header", tarHeader({ name: "x" }).subarray(0, 300)],
  ];
  for (const [what, data] of cases) {
    await assert.rejects(
      readTar(chunks(data), async () => {}),
      badLayer,
      what,
    );
  }
});
