// Message relations through the npm socket.io-client, driven by tests/test_relations_matrix.py.
// Env: BRIDGE_URL, TOKEN. Prints {"event":"connected"}, then every message_update,
// message_deleted and new_message as one JSON line each; exits after a message_deleted
// whose messageId is STOP_ON (sent on stdin as one line), or after 60 s.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const { BRIDGE_URL, TOKEN } = process.env;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const finish = (why, code) =>
  process.stdout.write(JSON.stringify({ event: why }) + "\n", () => process.exit(code));
setTimeout(() => finish("failed", 1), 60000).unref();
let stopOn = null;
createInterface({ input: process.stdin }).on("line", (line) => {
  stopOn = line.trim();
});

const socket = io(BRIDGE_URL, { auth: { token: TOKEN }, reconnection: false });
socket.on("connect_error", (err) => out({ event: "failed", why: err.message }));
socket.on("connect", () => out({ event: "connected" }));
for (const name of ["new_message", "message_update"]) {
  socket.on(name, (data) => out({ event: name, data }));
}
socket.on("message_deleted", (data) => {
  out({ event: "message_deleted", data });
  if (data.messageId === stopOn) {
    socket.disconnect();
    finish("done", 0);
  }
});
