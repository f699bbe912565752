import assert from "node:assert/strict";
import { test } from "node:test";
import { defaultPaths } from "./paths.js";
import { checkRootlessNetwork, defaultNetworkMode } from "./runtime.js";
import { shareDriver } from "./shares.js";

test("root keeps state in /var; a user in the XDG directories (MM_STATE/MM_CACHE win)", () => {
  assert.deepEqual(defaultPaths({}, false), { state: "/var/lib/mm", cache: "/var/cache/mm" });
  assert.deepEqual(defaultPaths({ HOME: "/home/u" }, true), {
    state: "/home/u/.local/state/mm",
    cache: "/home/u/.cache/mm",
  });
  assert.deepEqual(defaultPaths({ HOME: "/home/u", XDG_STATE_HOME: "/x/s", XDG_CACHE_HOME: "/x/c" }, true), {
    state: "/x/s/mm",
    cache: "/x/c/mm",
  });
  assert.deepEqual(defaultPaths({ HOME: "/home/u", MM_STATE: "/s", MM_CACHE: "/c" }, true), {
    state: "/s",
    cache: "/c",
  });
});

test("the network: bridge for root, user-mode without; root-only options refused without root", () => {
  assert.equal(defaultNetworkMode({}, false), "bridge");
  assert.equal(defaultNetworkMode({}, true), "user");
  assert.equal(defaultNetworkMode({ MM_NETWORK: "none" }, true), "none");
  const net = { mode: "bridge" as const, egress: "allow" as const, publish: [] };
  assert.doesNotThrow(() => checkRootlessNetwork(net, false));
  const refused = (e: unknown) => (e as { code?: string }).code === "MM_ROOT_REQUIRED";
  assert.throws(() => checkRootlessNetwork(net, true), refused);
  assert.throws(() => checkRootlessNetwork({ ...net, mode: "user", egress: "deny" }, false), refused);
  assert.throws(() => checkRootlessNetwork({ ...net, mode: "user", group: "g" }, true), refused);
  assert.doesNotThrow(() => checkRootlessNetwork({ ...net, mode: "user" }, true));
});

test("shared directories: virtio-fs needs root (its daemon's sandbox); 9p without", () => {
  assert.equal(shareDriver({ MM_VIRTIOFSD: "/bin/true" }, false), "virtio-fs");
  assert.equal(shareDriver({ MM_VIRTIOFSD: "/bin/true" }, true), "9p");
  assert.equal(shareDriver({ MM_VIRTIOFSD: "/bin/true", MM_FS: "9p" }, false), "9p");
});
