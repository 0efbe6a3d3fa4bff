// The CRM messenger's socket, as its page opens it, collecting new_message for the media
// contract rows (tests/test_media_contract.py). Env: BRIDGE_URL, TOKEN, CONVERSATION_ID,
// EXPECT (how many messages). Each attachment URL is then fetched as a bare <img src>
// would: no header, no cookie. Prints one JSON object per line.
import { io } from "socket.io-client";

const { BRIDGE_URL, TOKEN, CONVERSATION_ID, EXPECT } = process.env;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const fail = (why) => {
  out({ event: "failed", why });
  process.exit(1);
};
setTimeout(() => fail("timeout"), 60000).unref();

const socket = io(BRIDGE_URL, {
  auth: { token: TOKEN },
  transports: ["websocket", "polling"],
  reconnection: false,
});
const messages = [];
socket.on("connect_error", (err) => fail(`connect_error: ${err.message}`));
socket.on("connect", () => out({ event: "ready" }));
socket.on("new_message", async (message) => {
  if (message.conversationId !== CONVERSATION_ID) return;
  messages.push(message);
  if (messages.length < Number(EXPECT)) return;
  const fetched = [];
  for (const m of messages) {
    for (const a of m.attachments || []) {
      const resp = await fetch(a.url);
      const body = new Uint8Array(await resp.arrayBuffer());
      fetched.push({ url: a.url, status: resp.status, size: body.length });
    }
  }
  out({ event: "messages", data: messages, fetched });
  socket.disconnect();
  process.exit(0);
});
