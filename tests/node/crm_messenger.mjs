// The CRM messenger's socket, as its page opens it, driven by tests/test_crm_messenger.py.
// Env: BRIDGE_URL, TOKEN. Prints {"event":"connected"} (or "connect_error"), then every event
// the page listens for as one JSON line. Each stdin line is {"id", "emit", "data"}: emitted
// with an ack, answered as {"event":"ack","id","data"}. Exits on stdin's end, or after 300 s.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const { BRIDGE_URL, TOKEN } = process.env;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
setTimeout(() => out({ event: "failed", why: "timeout" }) || process.exit(1), 300000).unref();

const socket = io(BRIDGE_URL, {
  auth: { token: TOKEN },
  transports: ["websocket", "polling"],
  reconnection: false,
});
socket.on("connect_error", (err) => {
  out({ event: "connect_error", data: { message: err.message, data: err.data } });
  process.exit(0);
});
socket.on("connect", () => out({ event: "connected" }));
const listened = [
  "new_message", "conversation_update", "user_typing", "messages_read", "user_online",
  "user_offline", "message_pinned", "message_unpinned", "message_deleted", "chat_cleared",
  "message_update", "error", "new_notification", "new_lead", "task_status_changed",
  "points_awarded", "joined_conversation",
];
for (const name of listened) socket.on(name, (data) => out({ event: name, data }));

createInterface({ input: process.stdin })
  .on("line", async (line) => {
    const { id, emit, data } = JSON.parse(line);
    const answer = await socket.timeout(20000).emitWithAck(emit, data).catch((e) => ({ timeout: String(e) }));
    out({ event: "ack", id, data: answer });
  })
  .on("close", () => {
    socket.disconnect();
    out({ event: "done" });
    process.exit(0);
  });
