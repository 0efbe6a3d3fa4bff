// Fan-out load for bench/realtime.py: many sockets (the seed frontend's library), each
// recording when every new_message arrived. Env: BRIDGE_URL, TOKENS_FILE (JSON array, one
// token per socket), EXPECT (how many messages to wait for), TIMEOUT_MS.
// Prints {"event":"ready"} once all sockets are connected, then {"event":"done", arrivals}
// where arrivals maps message content -> list of epoch ms (with fractions).
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const { BRIDGE_URL, TOKENS_FILE, EXPECT, TIMEOUT_MS } = process.env;
const tokens = JSON.parse(readFileSync(TOKENS_FILE, "utf8"));
const expect = Number(EXPECT);
const now = () => performance.timeOrigin + performance.now();
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const arrivals = {};
let connected = 0;
let complete = 0;
const sockets = [];

const finish = (why) => {
  for (const s of sockets) s.disconnect();
  // Exit only once the (large) line is flushed: a pipe write is asynchronous in Node.
  process.stdout.write(JSON.stringify({ event: "done", why, connected, arrivals }) + "\n", () =>
    process.exit(0),
  );
};
setTimeout(() => finish("timeout"), Number(TIMEOUT_MS || 120000)).unref();

for (const token of tokens) {
  const socket = io(BRIDGE_URL, {
    auth: { token },
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
  });
  sockets.push(socket);
  socket.on("connect", () => {
    connected += 1;
    if (connected === tokens.length) out({ event: "ready", connected });
  });
  socket.on("connect_error", (err) => out({ event: "connect_error", message: err.message }));
  socket.on("new_message", (message) => {
    const list = (arrivals[message.content] ||= []);
    list.push(now());
    if (list.length === tokens.length) {
      complete += 1;
      if (complete === expect) finish("complete");
    }
  });
}
