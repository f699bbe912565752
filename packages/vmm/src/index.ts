export * from "./accel.js";
export * from "./engine.js";
export * from "./host.js";
export * from "./jail.js";
export * from "./qemu-args.js";
export * from "./qemu-engine.js";
export * from "./qmp.js";
