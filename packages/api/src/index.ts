export * from "./exec.js";
export * from "./schemas.js";
export * from "./serve.js";
export * from "./server.js";
