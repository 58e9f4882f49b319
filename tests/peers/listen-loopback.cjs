// Preload for server-everything's HTTP transports (`node -r ./listen-loopback.cjs
// .../dist/index.js streamableHttp`): they call app.listen(PORT) with no host,
// i.e. on every interface. This pins such listens to 127.0.0.1 (or $HOST).
"use strict";
const net = require("node:net");
const orig = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const host = process.env.HOST || "127.0.0.1";
  if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    if (typeof args[1] !== "string") args.splice(1, 0, host);
  } else if (args[0] && typeof args[0] === "object" && args[0].path === undefined && !args[0].host) {
    args[0] = { ...args[0], host };
  }
  return orig.apply(this, args);
};
