import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import { decodeBuildRequest, encodeBuildRequest, userNamespaceError } from "./userns.js";

test("a build request survives the trip to the worker, inline content included", () => {
  const options = {
    stateDir: "/s",
    image: { digest: `sha256:${"a".repeat(64)}`, layers: [{ path: "/l", mediaType: "x", digest: "d" }] },
    extraFiles: [
      { path: "/.mm/init", source: "/b/mm-init", mode: 0o755 },
      { path: "/etc/x", content: new Uint8Array([0, 1, 255]), uid: 3 },
    ],
    maxLayerBytes: 10,
    onWarning: () => undefined,
  };
  const back = decodeBuildRequest(encodeBuildRequest(options));
  assert.equal(back.stateDir, "/s");
  assert.deepEqual(back.image, options.image);
  assert.equal(back.maxLayerBytes, 10);
  assert.deepEqual(back.extraFiles?.[0], options.extraFiles[0]);
  assert.deepEqual([...(back.extraFiles?.[1]?.content ?? [])], [0, 1, 255]);
  assert.equal(back.extraFiles?.[1]?.uid, 3);
});

test("unshare's failures become MM_ROOTLESS_SETUP with what to do", () => {
  const noIds = userNamespaceError('unshare: no line matching user "bob" in /etc/subuid: Success', 1, null);
  assert.ok(isMmError(noIds, "MM_ROOTLESS_SETUP"));
  assert.match(noIds.hint, /usermod --add-subuids/);
  const noTool = userNamespaceError("unshare: failed to execute newuidmap: No such file or directory", 1, null);
  assert.ok(isMmError(noTool, "MM_ROOTLESS_SETUP"));
  const denied = userNamespaceError("unshare: unshare failed: Operation not permitted", 1, null);
  assert.ok(isMmError(denied, "MM_ROOTLESS_SETUP"));
  assert.match(denied.hint, /user namespaces/);
  assert.ok(isMmError(userNamespaceError("", null, "SIGKILL"), "MM_ROOTFS_FAILED"));
});
