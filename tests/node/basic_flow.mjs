// The seed frontend's flow with the npm socket.io-client, driven by tests/test_realtime_node.py.
// Env: BRIDGE_URL, TOKEN, CONVERSATION_ID, EXPECT_CONTENT. Prints one JSON object per line.
import { io } from "socket.io-client";

const { BRIDGE_URL, TOKEN, CONVERSATION_ID, EXPECT_CONTENT } = process.env;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const fail = (why) => {
  out({ event: "failed", why });
  process.exit(1);
};
setTimeout(() => fail("timeout"), 30000).unref();

// Exactly how seed frontends connect: default transports (polling, then upgrade).
const socket = io(BRIDGE_URL, { auth: { token: TOKEN }, reconnection: false });
const once = (name, test = () => true) =>
  new Promise((resolve) => {
    const handler = (data) => {
      if (test(data)) {
        socket.off(name, handler);
        resolve(data);
      }
    };
    socket.on(name, handler);
  });

socket.on("connect_error", (err) => fail(`connect_error: ${err.message}`));
socket.on("error", (err) => out({ event: "error", data: err }));

socket.on("connect", async () => {
  out({ event: "connected", transport: socket.io.engine.transport.name });
  socket.emit("join_conversation", CONVERSATION_ID);
  const joined = await once("joined_conversation");
  out({ event: "joined_conversation", data: joined });

  const content = `from node ${Date.now()}`;
  const ownMessage = once("new_message", (m) => m.content === content);
  const ack = await socket.emitWithAck("send_message", {
    conversationId: CONVERSATION_ID,
    content,
    type: "text",
  });
  out({ event: "ack", data: ack });
  out({ event: "new_message", data: await ownMessage });

  socket.emit("typing", { conversationId: CONVERSATION_ID, isTyping: true });
  const othersMessage = once("new_message", (m) => m.content === EXPECT_CONTENT);
  const othersTyping = once("user_typing", (t) => t.isTyping);
  out({ event: "ready", transport: socket.io.engine.transport.name });
  out({ event: "user_typing", data: await othersTyping });
  out({ event: "new_message", data: await othersMessage });
  socket.emit("typing", { conversationId: CONVERSATION_ID, isTyping: false });
  out({ event: "done", transport: socket.io.engine.transport.name });
  socket.disconnect();
  process.exit(0);
});
