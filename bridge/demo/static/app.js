// The reference web client of the CRM Matrix bridge.
//
// Plain JavaScript, no build step, no framework: everything it does goes through the
// public API a CRM frontend uses (docs/api.md, docs/realtime.md):
//   REST      /api/auth/me, /api/users, /api/chat/conversations, /api/chat/messages/:id,
//             /api/chat/send, /api/chat/mark-read, /api/chat/upload, /api/chat/direct/create
//   Socket.IO new_message, conversation_update, user_typing, messages_read, message_update,
//             message_deleted, user_online, user_offline; emits typing and mark_as_read.
// Only the sign-in (/demo/users, /demo/token) is specific to the dev stack: a real frontend
// gets its JWT from the CRM. Fields a bridge may not have yet (edited, replyTo, reactions,
// isPinned) are shown when present and ignored when absent.
"use strict";

const params = new URLSearchParams(location.search);
const PAGE_SIZE = Math.min(100, Math.max(1, Number(params.get("limit")) || 30));
const TYPING_IDLE_MS = 3000; // stop "typing" after this long without a keystroke
const TYPING_RENEW_MS = 2500; // re-send "typing" while the user keeps typing
const TYPING_SHOWN_MS = 12000; // forget a typing notice that was never stopped

const state = {
  token: null,
  devUser: null, // set when signed in through the dev stack's /demo/token
  me: null,
  users: new Map(), // CRM user id -> directory entry ({_id, name, isOnline, ...})
  conversations: new Map(), // conversation id -> conversation object
  messages: new Map(), // conversation id -> [message], oldest first
  older: new Map(), // conversation id -> cursor for ?before=, or null when nothing is left
  cursors: new Map(), // conversation id -> cursor of the newest new_message (reconnect)
  typing: new Map(), // conversation id -> Map(user id -> {name, timer})
  active: null,
  loadingOlder: false,
  replyTo: null,
  pendingFiles: [],
  socket: null,
};
window.demo = state; // handy in the browser console

const $ = (id) => document.getElementById(id);

// --- small DOM helper: el("div", {class: "x"}, "text", child) -----------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// --- REST ---------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.errcode = body?.errcode;
  }
}

async function api(path, { method = "GET", json, form, renewed = false } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form; // the browser sets the multipart boundary
  }
  const resp = await fetch(path, { method, headers, body });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) {
    if (resp.status === 401 && state.devUser && !renewed) {
      // The short-lived dev token ran out: mint another once and retry.
      state.token = await mintDevToken(state.devUser);
      sessionStorage.setItem("demo.token", state.token);
      return api(path, { method, json, form, renewed: true });
    }
    throw new ApiError(resp.status, data);
  }
  return data;
}

// Media URLs come signed for this user (absolute, ?u&exp&sig): a bare <img src> loads them.
// Only a bare path (a bridge older than signed URLs) falls back to the deprecated ?token=.
function mediaUrl(url) {
  if (url.includes("sig=")) return url;
  const sep = url.includes("?") ? "&" : "?";
  return `${url}${sep}token=${encodeURIComponent(state.token)}`;
}

// --- sign-in ------------------------------------------------------------------------------
async function mintDevToken(userId) {
  const resp = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data.token;
}

async function signIn() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    state.token = hash.get("token");
    history.replaceState(null, "", location.pathname + location.search);
  } else if (params.get("as")) {
    state.devUser = params.get("as");
    state.token = await mintDevToken(state.devUser);
  } else {
    state.token = sessionStorage.getItem("demo.token");
    state.devUser = sessionStorage.getItem("demo.devUser");
  }
  if (!state.token) return showSignIn();
  sessionStorage.setItem("demo.token", state.token);
  if (state.devUser) sessionStorage.setItem("demo.devUser", state.devUser);
  try {
    await start();
  } catch (err) {
    sessionStorage.clear();
    showSignIn(err.message);
  }
}

async function showSignIn(error) {
  $("chat").hidden = true;
  $("signin").hidden = false;
  if (error) Object.assign($("signin-error"), { hidden: false, textContent: error });
  $("signin-token").onsubmit = (e) => {
    e.preventDefault();
    location.hash = `token=${encodeURIComponent($("signin-jwt").value.trim())}`;
    location.reload();
  };
  const resp = await fetch("/demo/users"); // 404 outside the dev stack: paste a JWT then
  if (!resp.ok) return;
  const list = $("signin-list");
  for (const user of await resp.json()) {
    const href = `?${new URLSearchParams({ as: user._id })}`;
    list.append(el("li", {}, el("a", { href }, user.name), " ", el("small", {}, user.role)));
  }
  $("signin-users").hidden = false;
}

function signOut() {
  sessionStorage.clear();
  state.socket?.disconnect();
  location.href = location.pathname;
}

// --- start-up -----------------------------------------------------------------------------
async function start() {
  state.me = await api("/api/auth/me");
  const [users, conversations] = await Promise.all([
    api("/api/users"),
    api("/api/chat/conversations"),
  ]);
  for (const user of users) state.users.set(user._id, user);
  for (const c of conversations) state.conversations.set(c._id, c);
  $("signin").hidden = true;
  $("chat").hidden = false;
  $("me-name").textContent = state.me.name;
  $("signout").onclick = signOut;
  document.title = `${state.me.name} · CRM chat`;
  bindComposer();
  $("messages").addEventListener("scroll", onScroll);
  renderConversations();
  renderPeople();
  connectSocket();
  // ?c=<conversationId> opens a conversation straight away (links from the CRM).
  if (params.get("c")) await openConversation(params.get("c"));
}

// --- Socket.IO ----------------------------------------------------------------------------
function connectSocket() {
  // Same origin: the bridge serves /socket.io/. The auth callback runs on every
  // (re)connect, so a renewed token is picked up.
  const socket = io({ auth: (cb) => cb({ token: state.token }) });
  state.socket = socket;
  let connectedBefore = false;
  socket.on("connect", () => {
    setStatus("connected");
    if (connectedBefore) catchUp();
    connectedBefore = true;
  });
  // A socket the bridge refused or closed (its token expired) is not retried by
  // socket.io-client on its own: with the dev sign-in, mint a fresh token and connect again.
  const renew = async () => {
    if (!state.devUser) return;
    try {
      state.token = await mintDevToken(state.devUser);
    } catch (err) {
      return setStatus("offline", `Signed out: ${err.message}`);
    }
    sessionStorage.setItem("demo.token", state.token);
    socket.connect();
  };
  socket.on("disconnect", (reason) => {
    setStatus("reconnecting");
    if (reason === "io server disconnect") renew();
  });
  socket.on("connect_error", (err) => {
    setStatus("offline", err.message);
    if (err.data?.errcode === "M_UNKNOWN_TOKEN") renew();
  });
  socket.on("error", (err) => console.warn("socket error", err?.errcode, err?.message));
  socket.on("new_message", onNewMessage);
  socket.on("conversation_update", onConversationUpdate);
  socket.on("user_typing", onUserTyping);
  socket.on("messages_read", onMessagesRead);
  socket.on("message_update", updateMessage);
  socket.on("message_deleted", onMessageDeleted);
  socket.on("resync", onResync);
  socket.on("user_online", (user) => setOnline(user.id ?? user._id, true));
  socket.on("user_offline", (userId) => setOnline(userId?.id ?? userId, false));
}

function setStatus(status, detail) {
  document.body.dataset.socket = status;
  $("status").textContent = status === "connected" ? "" : detail || status + "…";
}

// After a reconnect: what arrived meanwhile, from each conversation's last cursor, merged
// by _id (docs/realtime.md, "Gap-free reconnect").
async function catchUp() {
  for (const c of await api("/api/chat/conversations")) {
    const known = state.conversations.get(c._id);
    state.conversations.set(c._id, { ...known, ...c });
  }
  renderConversations();
  for (const [conversationId, cursor] of state.cursors) {
    if (!state.messages.has(conversationId)) continue;
    let after = cursor;
    for (let i = 0; i < 20 && after; i++) {
      const q = new URLSearchParams({ after, limit: "100" });
      const page = await api(`/api/chat/messages/${conversationId}?${q}`);
      page.messages.forEach(upsertMessage);
      if (!page.hasMore) break;
      after = page.nextCursor;
    }
  }
  // What arrived in the open conversation while we were away has been seen now.
  if (state.active && state.conversations.get(state.active)?.unreadCount) markRead(state.active);
}

function onNewMessage(message) {
  const id = message.conversationId || message.conversation;
  if (message.cursor) state.cursors.set(id, message.cursor);
  const conversation = state.conversations.get(id);
  if (!conversation) {
    refreshConversations(); // a conversation we did not know yet
    return;
  }
  const known = state.messages.get(id)?.some((m) => m._id === message._id);
  upsertMessage(message);
  conversation.lastMessage = message;
  conversation.lastActivity = message.createdAt;
  const fromOther = message.sender?._id !== state.me._id;
  if (fromOther && !known) {
    clearTyping(id, message.sender._id);
    if (id === state.active && document.visibilityState === "visible") {
      state.socket.emit("mark_as_read", { conversationId: id, messageIds: [message._id] });
    } else {
      conversation.unreadCount = (conversation.unreadCount || 0) + 1;
    }
  }
  renderConversations();
}

// The bridge dropped an event of this conversation (docs/realtime.md, "resync"): what we
// hold may be missing something, so reload its history (and the list) from REST.
async function onResync({ conversationId }) {
  await refreshConversations();
  const held = state.messages.get(conversationId);
  if (!held) return; // not loaded yet: opening it fetches it fresh
  const before = new Set(held.map((m) => m._id));
  const q = new URLSearchParams({ page: "1", limit: String(PAGE_SIZE) });
  const page = await api(`/api/chat/messages/${conversationId}?${q}`);
  const fetched = new Set(page.messages.map((m) => m._id));
  // Kept: what arrived on the socket while the page was on its way.
  const arrived = (state.messages.get(conversationId) || []).filter(
    (m) => !before.has(m._id) && !fetched.has(m._id),
  );
  state.messages.set(conversationId, [...page.messages, ...arrived]);
  state.older.set(conversationId, page.hasMore ? page.nextCursor : null);
  const newest = page.messages[page.messages.length - 1];
  if (newest) state.cursors.set(conversationId, newest._id);
  if (conversationId === state.active) renderMessages();
}

function onConversationUpdate(update) {
  const id = update._id || update.id;
  const known = state.conversations.get(id);
  if (update.participants) {
    // A full object: a new conversation, a rename, a membership change.
    const unreadCount = update.unreadCount ?? known?.unreadCount ?? 0;
    state.conversations.set(id, { ...known, ...update, unreadCount });
  } else if (!known) {
    refreshConversations();
    return;
  } else if (update.lastMessageTime) {
    known.lastActivity = update.lastMessageTime;
  }
  renderConversations();
  if (id === state.active) renderRoomHeader();
}

async function refreshConversations() {
  for (const c of await api("/api/chat/conversations")) state.conversations.set(c._id, c);
  renderConversations();
}

function onUserTyping({ conversationId, userId, user, isTyping }) {
  if (userId === state.me._id) return;
  if (!state.typing.has(conversationId)) state.typing.set(conversationId, new Map());
  const typers = state.typing.get(conversationId);
  clearTimeout(typers.get(userId)?.timer);
  if (isTyping) {
    const timer = setTimeout(() => clearTyping(conversationId, userId), TYPING_SHOWN_MS);
    typers.set(userId, { name: user?.name || nameOf(userId), timer });
  } else {
    typers.delete(userId);
  }
  renderTyping();
}

function clearTyping(conversationId, userId) {
  const typers = state.typing.get(conversationId);
  if (!typers?.has(userId)) return;
  clearTimeout(typers.get(userId).timer);
  typers.delete(userId);
  renderTyping();
}

function onMessagesRead({ conversationId, messageIds, readBy }) {
  const list = state.messages.get(conversationId) || [];
  const ids = new Set(messageIds || []);
  for (const message of list) {
    if (!ids.has(message._id)) continue;
    if (!message.readBy.some((r) => r.user === readBy.user)) message.readBy.push(readBy);
    renderMessage(message);
  }
}

function onMessageDeleted(data) {
  const conversationId = data.conversationId;
  const messageId = data.messageId || data._id;
  const list = state.messages.get(conversationId);
  if (!list) return;
  state.messages.set(conversationId, list.filter((m) => m._id !== messageId));
  document.querySelector(`.msg[data-id="${CSS.escape(messageId)}"]`)?.remove();
  renderPins();
}

function setOnline(userId, online) {
  const user = state.users.get(userId);
  if (user) user.isOnline = online;
  renderPeople();
  renderConversations();
}

// --- conversations ------------------------------------------------------------------------
function nameOf(userId) {
  return state.users.get(userId)?.name || userId;
}

function otherParticipant(conversation) {
  return conversation.participants?.find((p) => p._id !== state.me._id);
}

function titleOf(conversation) {
  if (conversation.type === "project") {
    const emoji = conversation.project?.emoji || "#";
    return `${emoji} ${conversation.name || conversation.project?.name || "Project"}`;
  }
  return otherParticipant(conversation)?.name || "Direct message";
}

function lastText(conversation) {
  const last = conversation.lastMessage;
  if (!last) return "No messages yet";
  // conversation_update carries lastMessage as a bare string; the list, as a message.
  if (typeof last === "string") return last;
  const text = last.content || (last.attachments?.length ? "📎 file" : "");
  const who = last.sender?._id === state.me._id ? "You: " : "";
  return who + text;
}

function renderConversations() {
  const sorted = [...state.conversations.values()].sort((a, b) =>
    String(b.lastActivity || "").localeCompare(String(a.lastActivity || "")),
  );
  $("conversations").replaceChildren(
    ...sorted.map((c) => {
      const other = c.type === "direct" ? otherParticipant(c) : null;
      const online = other ? state.users.get(other._id)?.isOnline : null;
      return el(
        "li",
        {
          dataset: { id: c._id, type: c.type },
          class: c._id === state.active ? "active" : null,
          onclick: () => openConversation(c._id),
        },
        other ? onlineDot(online) : null,
        el("span", { class: "title" }, titleOf(c)),
        c.unreadCount > 0 ? el("span", { class: "badge" }, c.unreadCount) : null,
        el("span", { class: "preview" }, lastText(c)),
      );
    }),
  );
}

function onlineDot(online) {
  return el("span", { class: `dot ${online ? "online" : ""}`, title: online ? "online" : "offline" });
}

function renderPeople() {
  const people = [...state.users.values()].sort((a, b) => a.name.localeCompare(b.name));
  $("people").replaceChildren(
    ...people.map((u) =>
      el(
        "li",
        { dataset: { id: u._id }, onclick: () => openDirect(u._id), title: `Message ${u.name}` },
        onlineDot(u.isOnline),
        u.name,
        u.role ? el("small", {}, ` ${u.role}`) : null,
      ),
    ),
  );
}

async function openDirect(userId) {
  // Creating a DM room takes a moment: say so, and send nothing to the previous room.
  stopTyping();
  state.active = null;
  $("composer").hidden = true;
  $("messages").replaceChildren();
  $("room-title").textContent = `Opening a conversation with ${nameOf(userId)}…`;
  renderTyping();
  renderConversations();
  const conversation = await api("/api/chat/direct/create", { method: "POST", json: { userId } });
  state.conversations.set(conversation._id, conversation);
  await openConversation(conversation._id);
}

async function openConversation(conversationId) {
  if (!state.conversations.has(conversationId)) return;
  stopTyping();
  state.active = conversationId;
  state.replyTo = null;
  renderReplyBar();
  $("composer").hidden = false;
  renderRoomHeader();
  renderConversations();
  if (!state.messages.has(conversationId)) {
    const q = new URLSearchParams({ page: "1", limit: String(PAGE_SIZE) });
    const page = await api(`/api/chat/messages/${conversationId}?${q}`);
    if (state.active !== conversationId) return;
    state.messages.set(conversationId, page.messages);
    state.older.set(conversationId, page.hasMore ? page.nextCursor : null);
    const newest = page.messages[page.messages.length - 1];
    if (newest && !state.cursors.has(conversationId)) state.cursors.set(conversationId, newest._id);
  }
  renderMessages();
  renderTyping();
  $("messages").scrollTop = $("messages").scrollHeight;
  $("text").focus();
  markRead(conversationId);
}

async function markRead(conversationId) {
  const conversation = state.conversations.get(conversationId);
  await api("/api/chat/mark-read", { method: "POST", json: { conversationId } });
  conversation.unreadCount = 0;
  renderConversations();
}

// Infinite scroll up: near the top, fetch the page before the oldest message we hold.
async function onScroll() {
  const box = $("messages");
  const conversationId = state.active;
  const before = state.older.get(conversationId);
  if (box.scrollTop > 80 || !before || state.loadingOlder) return;
  state.loadingOlder = true;
  try {
    const q = new URLSearchParams({ before, limit: String(PAGE_SIZE) });
    const page = await api(`/api/chat/messages/${conversationId}?${q}`);
    if (state.active !== conversationId) return;
    const list = state.messages.get(conversationId);
    const known = new Set(list.map((m) => m._id));
    const older = page.messages.filter((m) => !known.has(m._id));
    state.messages.set(conversationId, [...older, ...list]);
    state.older.set(conversationId, page.hasMore ? page.nextCursor : null);
    const fromBottom = box.scrollHeight - box.scrollTop;
    renderMessages();
    box.scrollTop = box.scrollHeight - fromBottom; // keep the reader where they were
  } finally {
    state.loadingOlder = false;
  }
}

// --- messages -----------------------------------------------------------------------------
// A new message (new_message, our own send, a catch-up page): added once, merged by _id.
function upsertMessage(message) {
  const id = message.conversationId || message.conversation;
  const list = state.messages.get(id);
  if (!list) return;
  if (list.some((m) => m._id === message._id)) return updateMessage(message);
  list.push(message);
  if (id !== state.active) return;
  appendMessage(message);
  renderPins();
}

// A change to a message (message_update: read by, edited, reactions, pinned). One we have
// not loaded (older than the history shown) stays unloaded: scrolling up fetches it fresh.
function updateMessage(message) {
  const id = message.conversationId || message.conversation;
  const list = state.messages.get(id);
  const at = list ? list.findIndex((m) => m._id === message._id) : -1;
  if (at < 0) return;
  list[at] = { ...list[at], ...message };
  if (id !== state.active) return;
  renderMessage(list[at]);
  renderPins();
}

function renderRoomHeader() {
  const conversation = state.conversations.get(state.active);
  $("room-title").textContent = conversation ? titleOf(conversation) : "";
}

function renderMessages() {
  const list = state.messages.get(state.active) || [];
  $("messages").replaceChildren(...list.map(messageNode));
  renderPins();
}

function appendMessage(message) {
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  box.append(messageNode(message));
  if (atBottom || message.sender?._id === state.me._id) box.scrollTop = box.scrollHeight;
}

function renderMessage(message) {
  const node = document.querySelector(`.msg[data-id="${CSS.escape(message._id)}"]`);
  if (node) node.replaceWith(messageNode(message));
}

function messageNode(m) {
  const mine = m.sender?._id === state.me._id;
  const time = new Date(m.createdAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return el(
    "li",
    { class: `msg ${mine ? "mine" : ""} ${m.isPinned ? "pinned" : ""}`, dataset: { id: m._id } },
    m.replyTo ? replyQuote(m.replyTo) : null,
    el(
      "div",
      { class: "meta" },
      el("span", { class: "sender" }, mine ? "You" : m.sender?.name || "?"),
      el("time", { datetime: m.createdAt }, time),
      m.isPinned ? el("span", { class: "pin", title: "Pinned" }, "📌") : null,
      el("button", { type: "button", class: "reply", onclick: () => startReply(m) }, "↩ Reply"),
      mine ? tickNode(m) : null,
    ),
    m.content
      ? el(
          "div",
          { class: "body" },
          el("span", { class: "text" }, m.content),
          m.edited ? el("span", { class: "edited" }, " (edited)") : null,
        )
      : null,
    (m.attachments || []).map(attachmentNode),
    reactionsNode(m.reactions),
  );
}

function replyQuote(replyTo) {
  // replyTo is {_id, content, sender}; an id alone is looked up among loaded messages.
  const quoted = typeof replyTo === "string"
    ? (state.messages.get(state.active) || []).find((m) => m._id === replyTo)
    : replyTo;
  return el(
    "div",
    { class: "reply-quote", dataset: { replyTo: quoted?._id || String(replyTo) } },
    el("strong", {}, quoted?.sender?.name || "A message"),
    " ",
    quoted?.content ?? "",
  );
}

function attachmentNode(a) {
  if (a.mimetype?.startsWith("image/")) {
    return el("a", { class: "attachment", href: mediaUrl(a.url), target: "_blank" },
      el("img", { src: mediaUrl(a.url), alt: a.originalName || a.filename, loading: "lazy" }));
  }
  const kb = Math.max(1, Math.round((a.size || 0) / 1024));
  const name = a.originalName || a.filename;
  return el(
    "a",
    { class: "attachment file", href: mediaUrl(a.url), download: name },
    `📄 ${name} (${kb} KB)`,
  );
}

function reactionsNode(reactions) {
  if (!Array.isArray(reactions) || reactions.length === 0) return null;
  return el(
    "div",
    { class: "reactions" },
    reactions.map((r) =>
      el(
        "span",
        { class: `reaction ${r.me ? "me" : ""}`, title: (r.users || []).map(nameOf).join(", ") },
        `${r.key} ${r.count ?? r.users?.length ?? 1}`,
      ),
    ),
  );
}

// ✓ sent, ✓✓ read by someone else (readBy always lists the sender first).
function tickNode(m) {
  const readers = (m.readBy || []).filter((r) => r.user !== state.me._id);
  if (readers.length === 0) return el("span", { class: "tick sent", title: "Sent" }, "✓");
  const title = `Read by ${readers.map((r) => nameOf(r.user)).join(", ")}`;
  return el("span", { class: "tick read", title }, "✓✓");
}

function renderPins() {
  const pinned = (state.messages.get(state.active) || []).filter((m) => m.isPinned);
  $("pins").hidden = pinned.length === 0;
  $("pins").replaceChildren(
    ...pinned.map((m) =>
      el("div", { class: "pinned-item" }, "📌 ", el("strong", {}, m.sender?.name), " ", m.content),
    ),
  );
}

function renderTyping() {
  const typers = [...(state.typing.get(state.active)?.values() || [])].map((t) => t.name);
  $("typing").textContent = typers.length
    ? `${typers.join(", ")} ${typers.length > 1 ? "are" : "is"} typing…`
    : "";
}

// --- composer: text, files, replies, our own typing notices -------------------------------
let typingSince = 0;
let typingIdle = null;

function sendTyping(isTyping) {
  if (!state.active || !state.socket?.connected) return;
  state.socket.emit("typing", { conversationId: state.active, isTyping });
}

function onInput() {
  const now = Date.now();
  if (now - typingSince > TYPING_RENEW_MS) {
    typingSince = now;
    sendTyping(true);
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingIdle);
  if (typingSince) sendTyping(false);
  typingSince = 0;
}

function startReply(message) {
  state.replyTo = message;
  renderReplyBar();
  $("text").focus();
}

function renderReplyBar() {
  $("reply-bar").hidden = !state.replyTo;
  $("reply-text").textContent = state.replyTo
    ? `Replying to ${state.replyTo.sender?.name}: ${state.replyTo.content}`
    : "";
}

function renderFilesBar() {
  $("files-bar").hidden = state.pendingFiles.length === 0;
  $("files-bar").textContent = state.pendingFiles.map((f) => `📎 ${f.name}`).join("  ");
}

function bindComposer() {
  $("text").addEventListener("input", onInput);
  $("reply-cancel").onclick = () => {
    state.replyTo = null;
    renderReplyBar();
  };
  $("file").addEventListener("change", (e) => {
    state.pendingFiles = [...e.target.files];
    renderFilesBar();
  });
  $("composer").addEventListener("submit", async (e) => {
    e.preventDefault();
    const content = $("text").value.trim();
    if (!state.active || (!content && state.pendingFiles.length === 0)) return;
    stopTyping();
    $("text").value = "";
    try {
      await send(state.active, content);
    } catch (err) {
      $("text").value = content;
      setStatus(document.body.dataset.socket, `Not sent: ${err.message}`);
    }
  });
}

async function send(conversationId, content) {
  let attachments = [];
  if (state.pendingFiles.length) {
    const form = new FormData();
    for (const file of state.pendingFiles) form.append("file", file, file.name);
    attachments = (await api("/api/chat/upload", { method: "POST", form })).files;
  }
  const images = attachments.length && attachments.every((a) => a.mimetype.startsWith("image/"));
  const body = {
    conversationId,
    content,
    type: attachments.length ? (images ? "image" : "file") : "text",
    attachments,
    // A retry of the same send never makes a second message.
    clientMessageId: crypto.randomUUID?.() ?? `${Date.now()}.${Math.random()}`,
  };
  if (state.replyTo) body.replyTo = state.replyTo._id; // bridges that support replies
  const message = await api("/api/chat/send", { method: "POST", json: body });
  state.pendingFiles = [];
  $("file").value = "";
  renderFilesBar();
  state.replyTo = null;
  renderReplyBar();
  upsertMessage(message); // new_message brings it too; upsert keeps one copy
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && state.active) markRead(state.active);
});

signIn().catch((err) => showSignIn(err.message));
