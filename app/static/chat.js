// @ts-check
// The demo chat page: everything it says to the server goes through flamigo.js.
// Checked against the server's contract: tests/test_contract_typescript.py runs tsc over this
// file with the types `flamigo-actors schema app:create_app --format typescript` generates.
import { connect } from "/_flamigo/flamigo.js";

/** @type {(id: string) => any} the page's elements (DOM typing is not what the check is about) */
const $ = (id) => document.getElementById(id);
const STORE = "flamigo-chat.";
const MAX_MESSAGES = 200;

const state = {
  token: sessionStorage.getItem(STORE + "token"),
  user: JSON.parse(sessionStorage.getItem(STORE + "user") || "null"),
  joined: new Set(JSON.parse(sessionStorage.getItem(STORE + "rooms") || '["lobby"]')),
  current: sessionStorage.getItem(STORE + "current") || "lobby",
  known: new Set(["lobby"]),
  messages: new Map(), // room -> [{room, user, text, ts}]
  unread: new Map(), // room -> count
  /** @type {ReturnType<typeof connect> | null} */
  client: null,
  countdown: null,
  recovered: new Set(), // rooms whose missed messages the last resume replays
};

// Tests and curious developers can reach the client from the console.
/** @type {any} */ (window).chat = {
  get client() { return state.client; },
  state,
};

function save() {
  sessionStorage.setItem(STORE + "rooms", JSON.stringify([...state.joined]));
  sessionStorage.setItem(STORE + "current", state.current || "");
}

function clock(date = new Date()) {
  return date.toLocaleTimeString([], { hour12: false });
}

function logLine(list, text) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = clock();
  item.append(time, text);
  list.append(item);
  list.scrollTop = list.scrollHeight;
  return item;
}

const logConnection = (text) => logLine($("conn-log"), text);

function describeError(error) {
  if (!error) return "unknown error";
  if (error.code && error.code !== "server") return `${error.code}: ${error.message}`;
  return error.status ? `${error.status} ${error.message}` : error.message || String(error);
}

function showError(context, error) {
  logLine($("errors"), `${context}: ${describeError(error)}`);
}

// -- connection state ----------------------------------------------------------

function setConnState(kind, text) {
  const badge = $("conn-state");
  badge.dataset.state = kind;
  badge.textContent = text;
  $("reconnect-now").hidden = kind !== "reconnecting";
}

function stopCountdown() {
  clearInterval(state.countdown);
  state.countdown = null;
}

function watch(client) {
  client.onStateChange(({ state: s }) => {
    if (s === "open") {
      stopCountdown();
      setConnState("connected", "connected");
    } else if (s === "connecting") {
      stopCountdown();
      if (client.stats.connects === 0) setConnState("connecting", "connecting…");
      else setConnState("reconnecting", "reconnecting…");
    } else if (s === "closed") {
      stopCountdown();
      setConnState("offline", "offline");
    }
  });
  client.onReconnecting(({ attempt, delay }) => {
    const due = Date.now() + delay;
    const offline = typeof navigator !== "undefined" && navigator.onLine === false;
    const show = () => {
      const left = Math.max(0, (due - Date.now()) / 1000).toFixed(1);
      if (offline) setConnState("offline", `offline: no network (retry ${attempt} in ${left} s)`);
      else setConnState("reconnecting", `reconnecting: attempt ${attempt} in ${left} s`);
    };
    stopCountdown();
    show();
    state.countdown = setInterval(show, 250);
    logConnection(`retrying in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})`);
  });
  client.onClose(({ code, reason }) => {
    logConnection(`connection lost (${code}${reason ? " " + reason : ""})`);
  });
  client.onOpen(({ reconnect, downtime }) => {
    const rooms = [...state.joined].map((r) => "#" + r).join(", ") || "no rooms";
    if (reconnect) {
      logConnection(`reconnected after ${(downtime / 1000).toFixed(1)} s as ${client.user.username}; re-joined ${rooms}`);
    } else {
      logConnection(`connected as ${client.user ? client.user.username : "guest"}; joined ${rooms}`);
    }
    refreshRooms();
  });
  client.onError(({ kind, error, message }) => {
    if (kind === "socket") return; // followed by close/reconnecting, which say more
    if (kind === "auth") {
      showError("login", error);
      logout(`Your session was refused (${describeError(error)}): log in again.`);
      return;
    }
    showError(kind, error || { message });
  });
}

// -- rooms -------------------------------------------------------------------------

/**
 * @param {ReturnType<typeof connect>} session
 * @param {{ reconnect?: boolean }} [info]
 */
async function rejoin(session, info) {
  // Called by flamigo.js after every (re)connect, before queued requests are sent.
  await Promise.all([...state.joined].map(async (room) => {
    syncMembers(room, await session.request("app::rooms:join", { room }));
  }));
  for (const room of state.joined) {
    // A resumed session replays what this page missed: no history to fetch for those rooms.
    if (info && info.reconnect && state.recovered.has(room)) continue;
    loadHistory(room, session); // not awaited: the queue goes on meanwhile
  }
}

function watchRecovery(client) {
  // After a reconnect, before the rejoin: which rooms' missed messages are replayed (flamigo.js resumes).
  client.listen("recovery", ({ recovered, streams, reason }) => {
    state.recovered = new Set(Object.entries(streams)
      .filter(([, s]) => s.recovered).map(([stream]) => stream.replace(/^rooms\//, "")));
    if (recovered) logConnection("resumed: missed messages replayed");
    else logConnection(`could not resume (${reason || "some rooms"}): reloading history`);
  });
}

async function loadHistory(room, client = state.client) {
  // After joining: pushes arriving from now on are either in the history or newer than it.
  try {
    const { messages } = await client.request("app::rooms:history", { room });
    showHistory(room, messages.map((message) => ({ room, ...message })));
  } catch (error) {
    showError(`history of #${room}`, error);
  }
}

async function refreshRooms() {
  try {
    const { rooms } = await state.client.request("app::rooms:list");
    for (const room of rooms) state.known.add(room);
    renderRooms();
  } catch (error) {
    showError("app::rooms:list", error);
  }
}

function renderRooms() {
  const list = $("room-list");
  list.replaceChildren();
  const names = [...new Set([...state.known, ...state.joined])].sort();
  for (const room of names) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "room";
    button.dataset.room = room;
    if (room === state.current) button.setAttribute("aria-current", "true");
    const name = document.createElement("span");
    name.textContent = "#" + room;
    button.append(name);
    const unread = state.unread.get(room) || 0;
    if (unread) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = String(unread);
      button.append(badge);
    } else if (state.joined.has(room)) {
      const mark = document.createElement("span");
      mark.className = "joined";
      mark.textContent = "joined";
      button.append(mark);
    }
    button.addEventListener("click", () => openRoom(room));
    item.append(button);
    list.append(item);
  }
  $("room-title").textContent = state.current ? "#" + state.current : "No room";
  renderMembers();
  $("leave-room").disabled = !state.current;
}

async function openRoom(room) {
  if (!state.joined.has(room)) {
    try {
      syncMembers(room, await state.client.request("app::rooms:join", { room }));
    } catch (error) {
      showError(`join #${room}`, error);
      return;
    }
    state.joined.add(room);
    state.known.add(room);
    loadHistory(room);
  }
  state.current = room;
  state.unread.delete(room);
  save();
  renderRooms();
  renderMessages();
}

async function leaveRoom() {
  const room = state.current;
  if (!room) return;
  try {
    await state.client.request("app::rooms:leave", { room });
  } catch (error) {
    showError(`leave #${room}`, error);
    return;
  }
  state.joined.delete(room);
  membersOf(room).clear();
  state.current = [...state.joined][0] || null;
  save();
  renderRooms();
  renderMessages();
}

// -- members (presence) ------------------------------------------------------------

const roomTopic = (room) => `rooms/${room}`;

const watchedMaps = new WeakSet();

function membersOf(room, client = state.client) {
  // flamigo.js keeps one live map per topic, fed by its presence:diff pushes.
  const map = client.presence(roomTopic(room));
  if (!watchedMaps.has(map)) {
    watchedMaps.add(map);
    map.on("change", () => { if (room === state.current) renderMembers(); });
  }
  return map;
}

function syncMembers(room, reply) {
  // The join reply lists who is there (after every reconnect too); diffs follow.
  membersOf(room).sync(reply.members);
  if (room === state.current) renderMembers();
}

function renderMembers() {
  const list = $("members");
  const map = state.client && state.current ? membersOf(state.current) : null;
  const keys = map ? map.keys().sort() : [];
  list.replaceChildren(...keys.map((key) => {
    const item = document.createElement("li");
    item.dataset.user = key;
    const count = map.get(key).length;
    item.textContent = count > 1 ? `${key} (${count} tabs)` : key;
    return item;
  }));
  $("member-count").textContent = String(keys.length);
}

// -- messages ----------------------------------------------------------------------

function messageItem(message) {
  const item = document.createElement("li");
  item.className = "message" + (state.user && message.user === state.user.username ? " mine" : "");
  item.dataset.user = message.user;
  const user = document.createElement("span");
  user.className = "user";
  user.textContent = message.user;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text;
  const time = document.createElement("time");
  time.textContent = clock(new Date(message.ts * 1000));
  item.append(user, text, time);
  return item;
}

function renderMessages() {
  const list = $("messages");
  list.replaceChildren(...(state.messages.get(state.current) || []).map(messageItem));
  list.scrollTop = list.scrollHeight;
}

// A message's identity: the room actor stamps each one, and its push and history entries carry the same values.
const messageKey = (message) => `${message.ts}|${message.user}|${message.text}`;

function showHistory(room, history) {
  // Older messages kept from before (e.g. a reconnect), the history, then what arrived live and is newer.
  const inHistory = new Set(history.map(messageKey));
  const first = history.length ? history[0].ts : Infinity;
  const kept = (state.messages.get(room) || []).filter((message) => !inHistory.has(messageKey(message)));
  const log = [...kept.filter((m) => m.ts < first), ...history, ...kept.filter((m) => m.ts >= first)];
  state.messages.set(room, log.slice(-MAX_MESSAGES));
  if (room === state.current) renderMessages();
}

function receive(message) {
  const log = state.messages.get(message.room) || [];
  log.push(message);
  if (log.length > MAX_MESSAGES) log.splice(0, log.length - MAX_MESSAGES);
  state.messages.set(message.room, log);
  if (message.room === state.current) {
    const list = $("messages");
    list.append(messageItem(message));
    list.scrollTop = list.scrollHeight;
  } else {
    state.unread.set(message.room, (state.unread.get(message.room) || 0) + 1);
    renderRooms();
  }
}

async function sendOverWebSocket(room, text) {
  await state.client.request("app::rooms:send", { room, text });
}

async function sendOverHttp(room, text) {
  const response = await fetch(`/api/rooms/${encodeURIComponent(room)}/messages`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.token}` },
    body: JSON.stringify({ text }),
  });
  if (response.status !== 202) {
    const body = await response.json().catch(() => ({}));
    const error = Object.assign(new Error(body.error || response.statusText), { status: response.status });
    throw error;
  }
}

// -- login -------------------------------------------------------------------------

async function login(username) {
  const response = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `login failed (HTTP ${response.status})`);
  state.token = body.token;
  state.user = body.user;
  sessionStorage.setItem(STORE + "token", state.token);
  sessionStorage.setItem(STORE + "user", JSON.stringify(state.user));
  start();
}

function start() {
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("logout").hidden = false;
  $("whoami").textContent = state.user ? `signed in as ${state.user.username}` : "";
  if (state.current && !state.joined.has(state.current)) state.current = [...state.joined][0] || null;
  renderRooms();
  renderMessages();
  const client = connect("/ws", { token: () => state.token, onConnect: rejoin });
  state.client = client;
  watch(client);
  watchRecovery(client);
  client.on("chat:message", receive);
}

function logout(message = "") {
  const client = state.client;
  state.client = null;
  if (client) client.close();
  for (const key of ["token", "user", "rooms", "current"]) sessionStorage.removeItem(STORE + key);
  state.token = null;
  state.user = null;
  state.joined = new Set(["lobby"]);
  state.current = "lobby";
  state.messages.clear();
  state.unread.clear();
  stopCountdown();
  setConnState("offline", "offline");
  $("chat-view").hidden = true;
  $("logout").hidden = true;
  $("login-view").hidden = false;
  $("whoami").textContent = "";
  $("login-error").textContent = message;
}

// -- wiring ------------------------------------------------------------------------

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    await login($("username").value.trim());
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("logout").addEventListener("click", () => logout());
$("reconnect-now").addEventListener("click", () => state.client && state.client.reconnectNow());

$("join-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const room = $("room-name").value.trim();
  if (!room) return;
  await openRoom(room);
  $("room-name").value = "";
});

$("leave-room").addEventListener("click", leaveRoom);

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("message-text");
  const text = input.value;
  const room = state.current;
  const viaHttp = event.submitter && event.submitter.value === "http";
  if (!room) {
    showError("send", { message: "join a room first" });
    return;
  }
  try {
    if (viaHttp) await sendOverHttp(room, text);
    else await sendOverWebSocket(room, text);
    if (input.value === text) input.value = "";
  } catch (error) {
    showError(viaHttp ? `POST /api/rooms/${room}/messages` : "app::rooms:send", error);
  }
});

$("demo-fail").addEventListener("click", async () => {
  try {
    await state.client.request("app::demo:fail");
  } catch (error) {
    showError("app::demo:fail", error);
  }
});

$("call-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const topic = $("call-topic").value.trim();
  const result = $("call-result");
  let payload;
  try {
    const raw = $("call-payload").value.trim();
    payload = raw ? JSON.parse(raw) : undefined;
  } catch (error) {
    result.textContent = `✗ payload is not JSON: ${error.message}`;
    return;
  }
  result.textContent = "…";
  try {
    // Any strategy by name, with any payload: on purpose outside the contract's types.
    const reply = await /** @type {any} */ (state.client).request(topic, payload);
    result.textContent = "→ " + JSON.stringify(reply);
  } catch (error) {
    result.textContent = "✗ " + describeError(error);
    showError(topic, error);
  }
});

if (state.token) start();
else logout();
