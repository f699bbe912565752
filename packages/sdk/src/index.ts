export * from "./client.js";
export * from "./sandbox.js";
export * from "./types.js";
