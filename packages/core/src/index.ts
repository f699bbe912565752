export * from "./errors.js";
export * from "./ids.js";
export * from "./lifecycle.js";
export * from "./protocol.js";
export * from "./spec.js";
