// A seed frontend across a Redis outage, driven by tests/test_realtime_redis_outage.py:
// socket.io-client's own reconnection (defaults), default transports. Env: BRIDGE_URL, TOKEN.
// Prints one JSON object per line: connected (with the transport), disconnected (reason),
// new_message (content, cursor).
import { io } from "socket.io-client";

const { BRIDGE_URL, TOKEN } = process.env;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
setTimeout(() => process.exit(0), 120000).unref();

const socket = io(BRIDGE_URL, { auth: { token: TOKEN }, reconnectionDelayMax: 1000 });
socket.on("connect", () => out({ event: "connected" }));
socket.io.engine.on("upgrade", (t) => out({ event: "upgraded", transport: t.name }));
socket.on("disconnect", (reason) => out({ event: "disconnected", reason }));
socket.on("new_message", (m) => out({ event: "new_message", content: m.content, cursor: m.cursor }));
process.stdin.on("data", () => process.exit(0));
