export * from "./host-net.js";
export * from "./ipam.js";
export * from "./nft-plan.js";
export * from "./passt.js";
export * from "./ports.js";
