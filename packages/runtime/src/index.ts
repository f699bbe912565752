export * from "./agent-session.js";
export * from "./default-image.js";
export * from "./doctor.js";
export * from "./logs.js";
export * from "./paths.js";
export * from "./runtime.js";
export * from "./store.js";
export * from "./supervisor.js";
