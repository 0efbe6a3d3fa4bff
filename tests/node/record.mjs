// A CRM frontend's socket that records: connects with the npm socket.io-client as the CRM
// messenger does, prints every event it receives as one JSON line, until stdin closes.
// Env: BRIDGE_URL, TOKEN.
import { io } from "socket.io-client";

const { BRIDGE_URL, TOKEN } = process.env;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const socket = io(BRIDGE_URL, {
  auth: { token: TOKEN },
  transports: ["websocket", "polling"],
  reconnection: true,
});
socket.on("connect", () => out({ event: "connect" }));
socket.on("connect_error", (err) => out({ event: "connect_error", data: err.message }));
socket.onAny((event, data) => out({ event, data }));
process.stdin.on("end", () => {
  socket.disconnect();
  process.exit(0);
});
process.stdin.resume();
