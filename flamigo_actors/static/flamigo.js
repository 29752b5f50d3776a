/**
 * flamigo.js: the browser client of flamigo_actors (one dependency-free ES module).
 *
 * Served by the Flask extension at `/_flamigo/flamigo.js`:
 *
 *     import { connect } from "/_flamigo/flamigo.js";
 *
 *     const client = connect("/ws", {
 *       token: () => sessionStorage.getItem("token"),
 *       // Called after every (re)connect, once authenticated: re-join here.
 *       onConnect: async (session) => {
 *         for (const room of myRooms) await session.request("app::rooms:join", { room });
 *       },
 *     });
 *     client.on("chat:message", (payload) => show(payload));
 *     client.onStateChange(({ state }) => badge.textContent = state);
 *     try {
 *       await client.request("app::rooms:send", { room: "lobby", text: "hi" }, { timeout: 5000 });
 *     } catch (err) {
 *       console.log(err.status, err.message, err.fieldErrors);
 *     }
 *
 * What it does for you:
 *  - matches replies to requests by a generated `ackId`; server errors reject
 *    with a {@link FlamigoError} carrying `message`, `status` and `fieldErrors`;
 *    a request that times out rejects with a {@link FlamigoTimeoutError} and its
 *    late reply is ignored;
 *  - reconnects by itself with capped exponential backoff and jitter (so that
 *    thousands of tabs do not all come back in the same instant after a server
 *    restart), re-authenticates with the last token, calls the app's
 *    `onConnect` hook (re-join rooms there), then sends the requests queued
 *    while offline (a bounded queue: when full, the oldest is rejected);
 *  - recovers the connection's state (`recover`, on by default; the server
 *    must make the topics recoverable): after a reconnect it resumes its
 *    session, so the pushes missed meanwhile arrive, in order, and none twice
 *    (it drops any push at or below the last position it has); requests whose
 *    reply was lost with the socket are sent again with the same `ackId`, and
 *    the server answers each once. Listen to `"recovery"` to learn when a
 *    stream could not be recovered (then reload what the app shows of it);
 *  - detects a dead connection within a bounded time with an application-level
 *    heartbeat (`app::websocket:ping`), because browsers answer the server's
 *    WebSocket pings without telling page scripts. Deadlines are checked
 *    against the clock, not by counting timer ticks, so the throttled timers of
 *    a background tab only delay the detection by the throttling interval.
 *
 * Works in browsers and in any runtime with a WHATWG `WebSocket` (Node >= 22,
 * or Node 20 with `--experimental-websocket`), or pass `options.WebSocket`.
 *
 * @module flamigo
 */

/** Close code this client reports when the heartbeat found the connection dead. */
export const CLOSE_HEARTBEAT_TIMEOUT = 4001;
/** Close code this client reports when the WebSocket did not open within `connectTimeout`. */
export const CLOSE_CONNECT_TIMEOUT = 4002;
/** Close code the server uses when it kicks a connection (no automatic reconnect by default). */
export const CLOSE_KICKED = 4000;

/**
 * The options of {@link connect}, with their defaults. Times are in milliseconds.
 *
 * @typedef {object} ClientOptions
 * @property {string|null|(() => (string|null|Promise<string|null>))} [token=null]
 *   Auth token sent with `<namespace>::websocket:auth` after every (re)connect;
 *   a function is asked each time (e.g. to read a refreshed token). `null`: no auth.
 * @property {(session: Session, info: ConnectInfo) => (void|Promise<void>)} [onConnect]
 *   Called after every (re)connect, after authentication and before queued
 *   requests are sent: re-join rooms / re-subscribe here with `session.request`.
 * @property {string} [namespace="app"] Strategy namespace of the server.
 * @property {number} [requestTimeout=10000] Default timeout of {@link FlamigoClient#request}
 *   (counted from the call, queued time included); 0 or Infinity: none.
 * @property {number} [connectTimeout=10000] Time for the WebSocket to open before the attempt is abandoned.
 * @property {boolean} [reconnect=true] Reconnect automatically when the connection is lost.
 * @property {number} [reconnectDelay=1000] Base delay of the first retry.
 * @property {number} [reconnectDelayMax=30000] Cap of the retry delay.
 * @property {number} [reconnectFactor=2] Growth of the delay per failed attempt.
 * @property {number} [reconnectJitter=0.5] Fraction of the delay that is random: the
 *   actual wait is uniformly drawn from `[delay * (1 - jitter), delay]`
 *   (0: no jitter, 0.5: "equal jitter", 1: "full jitter").
 * @property {number} [maxReconnectAttempts=Infinity] Give up (state `closed`) after this many failed attempts in a row.
 * @property {number} [resetBackoffAfter=5000] A connection must stay up this long for
 *   the backoff to start again from `reconnectDelay` (a server that accepts and
 *   drops at once does not get hammered).
 * @property {number[]} [noReconnectCodes=[4000]] Close codes after which the client
 *   does not reconnect (4000: kicked by the server).
 * @property {number} [heartbeatInterval=15000] Send a heartbeat when nothing was received for this long.
 * @property {number} [heartbeatTimeout=10000] No message at all for this long after a
 *   heartbeat: the connection is dead, close it and reconnect.
 * @property {number} [queueLimit=100] Requests kept while offline; when full the oldest is rejected.
 * @property {boolean} [recover=true] Opt in to connection-state recovery (`"recover": true`
 *   in the auth payload, then `"resume"` after a reconnect); false: today's behaviour.
 * @property {typeof WebSocket} [WebSocket] WebSocket constructor (default: the global one).
 */

/** @type {Required<Omit<ClientOptions, "onConnect" | "WebSocket">>} */
export const DEFAULTS = Object.freeze({
  token: null,
  namespace: "app",
  requestTimeout: 10000,
  connectTimeout: 10000,
  reconnect: true,
  reconnectDelay: 1000,
  reconnectDelayMax: 30000,
  reconnectFactor: 2,
  reconnectJitter: 0.5,
  maxReconnectAttempts: Infinity,
  resetBackoffAfter: 5000,
  noReconnectCodes: [CLOSE_KICKED],
  heartbeatInterval: 15000,
  heartbeatTimeout: 10000,
  queueLimit: 100,
  recover: true,
});

/**
 * @typedef {object} Session
 * The handle given to the `onConnect` hook: its requests go out at once on the
 * new connection, ahead of the requests queued while offline.
 * @property {(topic: string, payload?: any, options?: RequestOptions) => Promise<any>} request
 * @property {{id: string, username: string}|null} user The authenticated user.
 */

/**
 * @typedef {object} ConnectInfo
 * @property {boolean} reconnect Whether this is a reconnect (not the first connection).
 * @property {number} attempts Failed attempts before this connection succeeded.
 * @property {number|null} downtime Milliseconds since the previous connection was lost.
 */

/**
 * @typedef {object} RequestOptions
 * @property {number} [timeout] Milliseconds before the request rejects with a
 *   {@link FlamigoTimeoutError} (default `requestTimeout`).
 * @property {boolean} [retry=false] The request is idempotent: when the connection
 *   drops before its reply, send it again after the reconnect instead of
 *   rejecting it (still within its timeout).
 */

/**
 * The error a request rejects with.
 *
 * `code` says where it came from: `"server"` (an `error` reply: `status` is the
 * server's, e.g. 401, 404, 422 with `fieldErrors`, 500), or one of the
 * client-side reasons, all with `status` 0: `"timeout"`, `"disconnected"` (the
 * connection dropped before the reply), `"queue_full"` (dropped from the
 * offline queue), `"closed"` (the client was closed or gave up).
 */
export class FlamigoError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, fieldErrors?: Array<{field: string, error: string}>|null,
   *          trace?: string, topic?: string}} [details]
   */
  constructor(message, { status = 0, code = "server", fieldErrors = null, trace, topic } = {}) {
    super(message);
    this.name = "FlamigoError";
    /** @type {number} the server's status (HTTP-like), or 0 for a client-side failure */
    this.status = status;
    /** @type {string} "server", "timeout", "disconnected", "queue_full" or "closed" */
    this.code = code;
    /** @type {Array<{field: string, error: string}>|null} per-field validation errors (422) */
    this.fieldErrors = fieldErrors;
    /** @type {string|undefined} server trace (only when the server runs in debug mode) */
    this.trace = trace;
    /** @type {string|undefined} the strategy that was requested */
    this.topic = topic;
  }
}

/** A request got no reply within its timeout (`code` "timeout", `status` 0). */
export class FlamigoTimeoutError extends FlamigoError {
  constructor(topic, timeout) {
    super(`${topic}: no reply within ${timeout} ms`, { code: "timeout", topic });
    this.name = "FlamigoTimeoutError";
    this.timeout = timeout;
  }
}

/**
 * The wait before reconnect attempt `attempt` (0 for the first retry):
 * `min(max, base * factor^attempt)`, of which the fraction `jitter` is random.
 *
 * @param {number} attempt failed attempts so far
 * @param {Partial<ClientOptions>} [options]
 * @param {() => number} [random] a source of numbers in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const base = options.reconnectDelay ?? DEFAULTS.reconnectDelay;
  const max = options.reconnectDelayMax ?? DEFAULTS.reconnectDelayMax;
  const factor = options.reconnectFactor ?? DEFAULTS.reconnectFactor;
  const jitter = Math.min(1, Math.max(0, options.reconnectJitter ?? DEFAULTS.reconnectJitter));
  const delay = Math.min(max, base * Math.pow(factor, Math.max(0, attempt)));
  return Math.round(delay * (1 - jitter * random()));
}

/**
 * Resolve `url` against the page's location and turn http(s) into ws(s).
 * @param {string} [url="/ws"]
 * @returns {string}
 */
export function websocketUrl(url = "/ws") {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const resolved = new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

const now = () => Date.now();

/**
 * A connection to a flamigo_actors server that survives disconnects.
 * Create it with {@link connect}.
 *
 * States: `"connecting"` (first connection, or the socket of a reconnect is
 * opening and authenticating), `"open"` (authenticated, hook done: requests go
 * out at once), `"reconnecting"` (waiting before the next attempt), `"closed"`
 * (closed by {@link FlamigoClient#close}, kicked, refused auth, or out of attempts).
 */
export class FlamigoClient {
  /**
   * @param {string} url WebSocket URL (relative URLs resolve against the page)
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    /** @type {string} */
    this.url = websocketUrl(url);
    /** @type {ClientOptions} */
    this.options = { ...DEFAULTS, ...options };
    /** The app's hook after every (re)connect (see {@link ClientOptions}); may be replaced. */
    this.onConnect = options.onConnect || null;
    /** @type {"connecting"|"open"|"reconnecting"|"closed"} */
    this.state = "connecting";
    /** @type {{id: string, username: string}|null} the user of the last successful auth */
    this.user = null;
    /** Counters: `connects` (successful), `reconnects`, `attempts` (failed in a row), `heartbeats`. */
    this.stats = { connects: 0, reconnects: 0, attempts: 0, heartbeats: 0, lastDowntime: null };

    const ns = this.options.namespace;
    this._authTopic = `${ns}::websocket:auth`;
    this._pingTopic = `${ns}::websocket:ping`;
    // The exact frame the server's reader answers ahead of the mailbox.
    this._pingFrame = JSON.stringify({ topic: this._pingTopic });
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    }
    this._token = this.options.token;
    this._ws = null;
    this._generation = 0;
    this._nextAck = 0;
    this._pending = new Map(); // ackId -> entry (sent, awaiting a reply)
    this._queue = []; // entries waiting for the connection to open
    this._handlers = new Map(); // client topic -> Set(handler)
    this._listeners = new Map(); // event type -> Set(listener)
    this._timers = { reconnect: null, connect: null, heartbeat: null };
    this._socketOpened = false;
    this._lastInbound = 0;
    this._pingSentAt = null;
    this._readyAt = 0;
    this._lostAt = null;
    this._attempt = 0;
    this._everConnected = false;
    // Connection-state recovery: the session secret and the last position per stream.
    this._recovery = { session: null, positions: new Map() };
    this._onOnline = () => this.reconnectNow();
    // The network went away: probe now rather than at the next heartbeat.
    this._onOffline = () => this._heartbeat(true);
    // Back from the background (or from a frozen page): check liveness now
    // instead of at the next throttled timer tick.
    this._onResume = () => {
      if (this.state === "reconnecting") this.reconnectNow();
      else this._heartbeat(true);
    };
    this._onVisible = () => {
      if (typeof document !== "undefined" && document.visibilityState === "visible") this._onResume();
    };
    if (typeof window !== "undefined" && window.addEventListener) {
      window.addEventListener("online", this._onOnline);
      window.addEventListener("offline", this._onOffline);
    }
    if (typeof document !== "undefined" && document.addEventListener) {
      document.addEventListener("visibilitychange", this._onVisible);
      document.addEventListener("resume", this._onResume);
    }
    this._open();
  }

  // -- public API -------------------------------------------------------------

  /**
   * Call a server strategy and get its reply.
   *
   * While the client is not open the request waits in the offline queue
   * (bounded by `queueLimit`; when full the oldest queued request is rejected
   * with code `"queue_full"`). The timeout counts from this call.
   *
   * @param {string} topic strategy name, e.g. `"app::rooms:join"`
   * @param {any} [payload] any JSON value
   * @param {RequestOptions} [options]
   * @returns {Promise<any>} the reply's payload; rejects with {@link FlamigoError}
   *   (server error, `"disconnected"`, `"queue_full"`, `"closed"`) or
   *   {@link FlamigoTimeoutError}
   */
  request(topic, payload, options = {}) {
    if (this.state === "closed") {
      return Promise.reject(new FlamigoError(`${topic}: the client is closed`, { code: "closed", topic }));
    }
    const entry = this._entry(topic, payload, options);
    if (entry.done) return entry.promise; // the payload could not be serialised
    if (this.state === "open") {
      this._transmit(entry);
    } else {
      if (this._queue.length >= this.options.queueLimit) {
        if (this._queue.length === 0) {
          this._settle(entry, new FlamigoError(`${topic}: not connected and queueLimit is 0`,
            { code: "queue_full", topic }));
          return entry.promise;
        }
        const oldest = this._queue.shift();
        this._settle(oldest, new FlamigoError(
          `${oldest.topic}: dropped from the offline queue (more than ${this.options.queueLimit} requests waiting)`,
          { code: "queue_full", topic: oldest.topic }));
      }
      this._queue.push(entry);
    }
    return entry.promise;
  }

  /**
   * Receive the pushes of a client topic (`"chat:message"`); `"*"` receives every push.
   * @param {string} topic
   * @param {(payload: any, topic: string) => void} handler
   * @returns {() => void} a function that removes the handler
   */
  on(topic, handler) {
    if (!this._handlers.has(topic)) this._handlers.set(topic, new Set());
    this._handlers.get(topic).add(handler);
    return () => this.off(topic, handler);
  }

  /**
   * The live presence map of a bus topic (`"rooms/lobby"`), fed by its `presence:diff`
   * pushes; the same map every time for one topic. Give it a listing with `map.sync(members)`
   * (a join reply's `members`) after every (re)connect: see {@link PresenceMap}.
   * @param {string} stream
   * @returns {PresenceMap}
   */
  presence(stream) {
    if (!this._presence) this._presence = new Map();
    let map = this._presence.get(stream);
    if (!map) {
      map = new PresenceMap(stream);
      this._presence.set(stream, map);
      this.on("presence:diff", (diff) => { if (diff && diff.stream === stream) map.apply(diff); });
    }
    return map;
  }

  /**
   * Stop receiving pushes: one handler, or every handler of `topic` when none is given.
   * @param {string} topic
   * @param {Function} [handler]
   */
  off(topic, handler) {
    const set = this._handlers.get(topic);
    if (!set) return;
    if (handler) set.delete(handler);
    if (!handler || set.size === 0) this._handlers.delete(topic);
  }

  /**
   * Listen to a connection event. Listeners receive one detail object:
   *  - `"open"`: `{reconnect, attempts, downtime, user}`: connected, authenticated, hook done;
   *  - `"close"`: `{code, reason, wasOpen}`: an established connection ended;
   *  - `"reconnecting"`: `{attempt, delay, code, reason}`: next attempt in `delay` ms;
   *  - `"error"`: `{kind, error, message}` with kind `"socket"`, `"auth"`,
   *    `"hook"`, `"server"` (an `error` message without ackId) or `"protocol"`;
   *  - `"statechange"`: `{state, previous}`;
   *  - `"recovery"`: `{recovered, streams, reason}` after a resume (see the
   *    README): `recovered` false means something could not be replayed.
   * @param {"open"|"close"|"reconnecting"|"error"|"statechange"|"recovery"} type
   * @param {(detail: object) => void} listener
   * @returns {() => void} a function that removes the listener
   */
  listen(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.unlisten(type, listener);
  }

  /** Remove a listener added with {@link FlamigoClient#listen}. */
  unlisten(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  /** Shorthand for `listen("open", fn)`. */
  onOpen(fn) { return this.listen("open", fn); }
  /** Shorthand for `listen("close", fn)`. */
  onClose(fn) { return this.listen("close", fn); }
  /** Shorthand for `listen("reconnecting", fn)`. */
  onReconnecting(fn) { return this.listen("reconnecting", fn); }
  /** Shorthand for `listen("error", fn)`. */
  onError(fn) { return this.listen("error", fn); }
  /** Shorthand for `listen("statechange", fn)`. */
  onStateChange(fn) { return this.listen("statechange", fn); }

  /**
   * Resolves when the client is (next) open; rejects if it closes first.
   * @returns {Promise<void>}
   */
  ready() {
    if (this.state === "open") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(new FlamigoError("the client is closed", { code: "closed" }));
    return new Promise((resolve, reject) => {
      const offOpen = this.listen("open", () => { offOpen(); offState(); resolve(); });
      const offState = this.listen("statechange", ({ state }) => {
        if (state === "closed") {
          offOpen(); offState();
          reject(new FlamigoError("the client is closed", { code: "closed" }));
        }
      });
    });
  }

  /**
   * Authenticate with a (new) token: sent now when open, and after every reconnect.
   * @param {string|(() => (string|Promise<string>))} token
   * @returns {Promise<{id: string, username: string}|null>} the user (when sent now)
   */
  async authenticate(token) {
    this._token = token;
    if (this.state !== "open") return null;
    const reply = await this._direct(this._authTopic, { token: await this._resolveToken() });
    this.user = reply && reply.user ? reply.user : null;
    return this.user;
  }

  /** Try to reconnect at once instead of waiting for the backoff (e.g. a "retry now" button). */
  reconnectNow() {
    if (this.state !== "reconnecting") return;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    this._open();
  }

  /**
   * Close for good: no reconnect; pending and queued requests reject with code `"closed"`.
   * @param {number} [code=1000]
   * @param {string} [reason]
   */
  close(code = 1000, reason = "closed by the client") {
    if (this.state === "closed") return;
    const wasOpen = this._ws !== null && this._ws.readyState === 1;
    this._detach(code, reason);
    this._failAll("closed", `the client was closed (${reason})`);
    if (typeof window !== "undefined" && window.removeEventListener) {
      window.removeEventListener("online", this._onOnline);
      window.removeEventListener("offline", this._onOffline);
    }
    if (typeof document !== "undefined" && document.removeEventListener) {
      document.removeEventListener("visibilitychange", this._onVisible);
      document.removeEventListener("resume", this._onResume);
    }
    this._setState("closed");
    if (wasOpen) this._emit("close", { code, reason, wasOpen: true });
  }

  /** Requests sent and waiting for their reply. */
  get pendingCount() { return this._pending.size; }
  /** Requests waiting in the offline queue. */
  get queuedCount() { return this._queue.length; }

  // -- connecting -------------------------------------------------------------

  _open() {
    const generation = ++this._generation;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (error) {
      this._emit("error", { kind: "socket", error, message: String(error && error.message || error) });
      this._lost(generation, 1006, "cannot create the WebSocket");
      return;
    }
    this._ws = ws;
    if (this.state !== "connecting") this._setState("connecting");
    this._timers.connect = setTimeout(
      () => this._lost(generation, CLOSE_CONNECT_TIMEOUT, `not open within ${this.options.connectTimeout} ms`),
      this.options.connectTimeout);
    ws.onopen = () => {
      if (generation !== this._generation) return;
      clearTimeout(this._timers.connect);
      this._timers.connect = null;
      this._socketOpened = true;
      this._lastInbound = now();
      this._pingSentAt = null;
      this._heartbeat(false);
      this._handshake(generation);
    };
    ws.onmessage = (event) => this._receive(generation, event.data);
    ws.onerror = () => {
      if (generation !== this._generation) return;
      this._emit("error", { kind: "socket", error: null, message: `WebSocket error (${this.url})` });
      // A failed opening handshake: some runtimes (Node's undici) never follow
      // it with a close event, so do not wait for one.
      if (!this._socketOpened) this._lost(generation, 1006, "connection failed");
    };
    ws.onclose = (event) => this._lost(generation, event.code, event.reason || "");
  }

  async _handshake(generation) {
    const reconnect = this._everConnected;
    const attempts = this._attempt;
    try {
      const token = await this._resolveToken();
      if (generation !== this._generation) return;
      if (token) {
        let reply;
        try {
          reply = await this._direct(this._authTopic, this._authPayload(token));
        } catch (error) {
          if (generation !== this._generation) return;
          if (error.code === "server" && [401, 403, 409].includes(error.status)) {
            // The token itself is refused: retrying would only be refused again.
            this._emit("error", { kind: "auth", error, message: error.message });
            this._giveUp(`authentication refused: ${error.message}`, error);
            return;
          }
          throw error;
        }
        this.user = reply && reply.user ? reply.user : null;
        this._resumed(reply);
      }
      if (generation !== this._generation) return;
      const info = { reconnect, attempts, downtime: this._lostAt === null ? null : now() - this._lostAt };
      if (this.onConnect) {
        const session = {
          request: (topic, payload, options) => this._direct(topic, payload, options),
          user: this.user,
        };
        try {
          await this.onConnect(session, info);
        } catch (error) {
          if (generation !== this._generation) return;
          // A failed re-join is the app's to report; the connection itself is fine.
          this._emit("error", { kind: "hook", error, message: error && error.message || String(error) });
        }
      }
      if (generation !== this._generation) return;
      this._everConnected = true;
      this._readyAt = now();
      this.stats.connects += 1;
      if (reconnect) this.stats.reconnects += 1;
      this.stats.lastDowntime = info.downtime;
      this._lostAt = null;
      this._setState("open", false);
      // Queued requests go out before anything the listeners below may send.
      const queued = this._queue.splice(0);
      for (const entry of queued) this._transmit(entry);
      this._emit("statechange", { state: "open", previous: this._previousState });
      this._emit("open", { ...info, user: this.user });
    } catch (error) {
      if (generation !== this._generation) return;
      // Auth timed out or the socket failed mid-handshake: try again later.
      this._lost(generation, 1006, `handshake failed: ${error && error.message || error}`);
    }
  }

  async _resolveToken() {
    const token = this._token;
    return typeof token === "function" ? await token() : token;
  }

  /** The socket is gone (or judged dead): clean up and schedule the next attempt. */
  _lost(generation, code, reason) {
    if (generation !== this._generation || this.state === "closed") return;
    const wasOpen = this.state === "open";
    const opened = this._socketOpened;
    this._detach(code === CLOSE_HEARTBEAT_TIMEOUT ? CLOSE_HEARTBEAT_TIMEOUT : 1000, reason);
    if (this._lostAt === null) this._lostAt = now();
    // Replies to requests in flight will never come: retry the idempotent ones, reject the rest.
    const retried = [];
    // With a recovery session the server can tell a re-sent request from a new one (same ackId).
    const resumable = this.options.recover && this._recovery.session !== null;
    for (const entry of [...this._pending.values()].sort((a, b) => a.ackId - b.ackId)) {
      this._pending.delete(entry.ackId);
      if (resumable && !entry.direct) entry.resumeAck = entry.ackId;
      entry.ackId = null;
      if (entry.retry || entry.resumeAck != null) retried.push(entry);
      else this._settle(entry, new FlamigoError(
        `${entry.topic}: connection lost before the reply (${code} ${reason})`,
        { code: "disconnected", topic: entry.topic }));
    }
    this._queue.unshift(...retried);
    if (wasOpen && now() - this._readyAt >= this.options.resetBackoffAfter) this._attempt = 0;
    if (opened || wasOpen) this._emit("close", { code, reason, wasOpen });
    if (!this.options.reconnect || this.options.noReconnectCodes.includes(code)) {
      this._giveUp(`connection closed (${code} ${reason}); not reconnecting`);
      return;
    }
    if (this._attempt >= this.options.maxReconnectAttempts) {
      this._giveUp(`gave up after ${this._attempt} reconnect attempts`);
      return;
    }
    const delay = backoffDelay(this._attempt, this.options);
    this._attempt += 1;
    this.stats.attempts = this._attempt;
    this._setState("reconnecting");
    this._emit("reconnecting", { attempt: this._attempt, delay, code, reason });
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delay);
  }

  _giveUp(reason, error) {
    this._detach(1000, reason);
    this._failAll("closed", reason, error);
    this._setState("closed");
  }

  /** Forget the current socket: later events from it are ignored. */
  _detach(code, reason) {
    this._generation += 1;
    for (const name of Object.keys(this._timers)) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
    const ws = this._ws;
    this._ws = null;
    this._socketOpened = false;
    this._lastInbound = 0;
    this._pingSentAt = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      // A dead peer never completes the closing handshake; we do not wait for it.
      if (ws.readyState === 0 || ws.readyState === 1) {
        try {
          ws.close(code, reason.slice(0, 40));
        } catch (_) {
          try { ws.close(); } catch (__) { /* already closing */ }
        }
      }
    }
  }

  // -- heartbeat --------------------------------------------------------------

  /**
   * Check liveness against the clock and schedule the next check. Any inbound
   * message proves the connection alive; after `heartbeatInterval` of silence
   * a ping is sent, and `heartbeatTimeout` more of silence means dead.
   */
  _heartbeat(urgent) {
    if (!this._ws || this._ws.readyState !== 1) return;
    clearTimeout(this._timers.heartbeat);
    const { heartbeatInterval: interval, heartbeatTimeout: timeout } = this.options;
    const t = now();
    let next;
    if (this._pingSentAt !== null && this._lastInbound < this._pingSentAt) {
      if (t - this._pingSentAt >= timeout) {
        this._lost(this._generation, CLOSE_HEARTBEAT_TIMEOUT,
          `heartbeat timeout: no message from the server for ${t - this._lastInbound} ms`);
        return;
      }
      next = this._pingSentAt + timeout - t;
    } else if (urgent || t - this._lastInbound >= interval) {
      this._pingSentAt = t;
      this.stats.heartbeats += 1;
      this._write(this._pingFrame);
      next = timeout;
    } else {
      this._pingSentAt = null;
      next = this._lastInbound + interval - t;
    }
    this._timers.heartbeat = setTimeout(() => this._heartbeat(false), Math.max(20, next));
  }

  // -- requests and replies ---------------------------------------------------

  _entry(topic, payload, options) {
    const entry = { topic, body: null, ackId: null, retry: !!options.retry, done: false, timer: null };
    entry.promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    try {
      // Serialised now, so a payload that is not JSON fails this call, not a later flush.
      entry.body = JSON.stringify({ topic, payload });
    } catch (error) {
      this._settle(entry, error);
      return entry;
    }
    const timeout = options.timeout ?? this.options.requestTimeout;
    if (timeout > 0 && Number.isFinite(timeout)) {
      entry.timer = setTimeout(() => {
        if (entry.ackId !== null) this._pending.delete(entry.ackId); // a late reply is ignored
        const index = this._queue.indexOf(entry);
        if (index >= 0) this._queue.splice(index, 1);
        this._settle(entry, new FlamigoTimeoutError(topic, timeout));
      }, timeout);
    }
    return entry;
  }

  /** Send a request on the current socket now, bypassing the queue (handshake, hook). */
  _direct(topic, payload, options = {}) {
    const entry = this._entry(topic, payload, options);
    entry.retry = false; // belongs to this connection only
    entry.direct = true;
    if (!this._ws || this._ws.readyState !== 1) {
      this._settle(entry, new FlamigoError(`${topic}: not connected`, { code: "disconnected", topic }));
    } else {
      this._transmit(entry);
    }
    return entry.promise;
  }

  _transmit(entry) {
    if (entry.done) return;
    entry.ackId = entry.resumeAck ?? ++this._nextAck; // a re-sent request keeps its ackId
    entry.resumeAck = null;
    this._pending.set(entry.ackId, entry);
    // {"topic":...,"payload":...} + the ackId of this transmission.
    this._write(`${entry.body.slice(0, -1)},"ackId":${entry.ackId}}`);
  }

  _write(frame) {
    try {
      this._ws.send(frame);
      return true;
    } catch (error) {
      // The socket closed under us; its close event (or the heartbeat) takes over.
      return false;
    }
  }

  _settle(entry, error, value) {
    if (entry.done) return;
    entry.done = true;
    clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(value);
  }

  _failAll(code, reason, cause) {
    const entries = [...this._pending.values(), ...this._queue];
    this._pending.clear();
    this._queue = [];
    for (const entry of entries) {
      this._settle(entry, new FlamigoError(`${entry.topic}: ${reason}`,
        { code, topic: entry.topic, status: cause && cause.status || 0 }));
    }
  }

  _receive(generation, data) {
    if (generation !== this._generation) return;
    this._lastInbound = now();
    if (typeof data !== "string") {
      this._emit("error", { kind: "protocol", error: null, message: "binary message ignored" });
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch (error) {
      this._emit("error", { kind: "protocol", error, message: `malformed message: ${error.message}` });
      return;
    }
    if (message === null || typeof message !== "object") return;
    const { topic, payload } = message;
    if (message.ackId !== undefined) {
      const entry = this._pending.get(message.ackId);
      if (!entry) return; // timed out already: a late reply is ignored
      this._pending.delete(message.ackId);
      if (topic === "error") {
        const p = payload || {};
        this._settle(entry, new FlamigoError(p.message || "error", {
          status: typeof p.status === "number" ? p.status : 0,
          code: "server",
          fieldErrors: p.fieldErrors || null,
          trace: p.trace,
          topic: entry.topic,
        }));
      } else {
        // A subscribe reply may tell where this client starts in a stream (`pos`).
        if (payload && payload.pos && typeof payload.pos.stream === "string") this._fresh(payload.pos);
        this._settle(entry, null, payload);
      }
      return;
    }
    if (topic === this._pingTopic) return; // heartbeat answer: its arrival was the point
    if (topic === "error") {
      const p = payload || {};
      const error = new FlamigoError(p.message || "error", { status: p.status || 0, code: "server" });
      this._emit("error", { kind: "server", error, message: error.message });
      return;
    }
    // A push of a recoverable stream: drop what this client already has (a replay overlap).
    if (message.pos && typeof message.pos.stream === "string" && !this._fresh(message.pos)) return;
    for (const key of [topic, "*"]) {
      const set = this._handlers.get(key);
      if (!set) continue;
      for (const handler of [...set]) {
        try {
          handler(payload, topic);
        } catch (error) {
          // One broken handler must not starve the others.
          setTimeout(() => { throw error; });
        }
      }
    }
  }

  // -- connection-state recovery -------------------------------------------------

  /** The auth payload: opt in, or resume the session with the last positions. */
  _authPayload(token) {
    const { session, positions } = this._recovery;
    if (!this.options.recover) return { token };
    if (session === null) return { token, recover: true };
    return { token, resume: { session, since: Object.fromEntries(positions) } };
  }

  /** The auth reply: keep the session; start over where a stream could not be recovered. */
  _resumed(reply) {
    if (!this.options.recover || !reply || typeof reply.session !== "string") return;
    const recovery = this._recovery;
    const resumed = recovery.session !== null && reply.session === recovery.session;
    recovery.session = reply.session;
    if (!resumed) recovery.positions.clear();
    for (const [stream, info] of Object.entries(reply.streams || {})) {
      if (info && !info.recovered && info.pos) recovery.positions.set(stream, { offset: info.pos.offset, epoch: info.pos.epoch });
    }
    if (!resumed) {
      // No session remembers these requests: a re-send could run them twice.
      for (const entry of [...this._queue]) {
        if (entry.resumeAck == null) continue;
        entry.resumeAck = null;
        if (entry.retry) continue;
        this._queue.splice(this._queue.indexOf(entry), 1);
        this._settle(entry, new FlamigoError(`${entry.topic}: connection lost before the reply`,
          { code: "disconnected", topic: entry.topic }));
      }
    }
    if ("recovered" in reply) {
      this._emit("recovery", { recovered: reply.recovered, streams: reply.streams || {}, reason: reply.reason || null });
    }
  }

  /** Record a stream position; false when this client already had it (at or below the last offset). */
  _fresh(pos) {
    const positions = this._recovery.positions;
    const last = positions.get(pos.stream);
    if (last && last.epoch === pos.epoch && pos.offset <= last.offset) return false;
    positions.set(pos.stream, { offset: pos.offset, epoch: pos.epoch });
    return true;
  }

  // -- events -----------------------------------------------------------------

  _setState(state, emit = true) {
    if (state === this.state) return;
    this._previousState = this.state;
    this.state = state;
    if (emit) this._emit("statechange", { state, previous: this._previousState });
  }

  _emit(type, detail) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(detail);
      } catch (error) {
        setTimeout(() => { throw error; });
      }
    }
  }
}

/**
 * Who is in one topic, kept live: `key -> [meta, ...]` (one key may have several entries,
 * a user in two tabs). Each meta carries the server's unique `ref`: a listing (`sync`) and
 * the diffs (`apply`) may overlap, since the join reply lists an entry whose join diff
 * comes after it, and merge without duplicates; a leave of an unknown ref is ignored.
 *
 * Events (`map.on(type, fn)`, returns an unsubscribe function):
 *  - `"change"`: `{joins, leaves}` as applied (only what changed the map);
 *  - `"join"`: `(key, metas, joined)`; `"leave"`: `(key, metas, left)` (metas: the key's
 *    current metas, empty when the key is gone).
 */
export class PresenceMap {
  /** @param {string} stream the bus topic */
  constructor(stream) {
    this.stream = stream;
    this._entries = new Map(); // key -> [meta]
    this._listeners = new Map();
  }

  /** Keys present now. */
  keys() { return [...this._entries.keys()]; }

  /** The metas of `key` (empty when absent). */
  get(key) { return [...(this._entries.get(key) || [])]; }

  /** Number of keys present. */
  get size() { return this._entries.size; }

  /** A plain copy: `{key: [meta, ...]}`. */
  list() {
    return Object.fromEntries([...this._entries].map(([key, metas]) => [key, [...metas]]));
  }

  /**
   * Replace the state with a listing (`{key: [meta...]}`, e.g. the join reply's `members`);
   * the differences are reported as one change, as if they were a diff.
   */
  sync(members) {
    const fresh = new Set();
    for (const metas of Object.values(members || {})) for (const meta of metas) fresh.add(meta.ref);
    const leaves = {};
    for (const [key, metas] of this._entries) {
      const gone = metas.filter((meta) => !fresh.has(meta.ref));
      if (gone.length) leaves[key] = gone;
    }
    this.apply({ joins: members || {}, leaves });
  }

  /** Apply a diff `{joins, leaves}`: leaves first (by ref), then the joins not known yet. */
  apply({ joins = {}, leaves = {} } = {}) {
    const applied = { joins: {}, leaves: {} };
    for (const [key, metas] of Object.entries(leaves)) {
      const current = this._entries.get(key);
      if (!current) continue;
      const refs = new Set(metas.map((meta) => meta.ref));
      const left = current.filter((meta) => refs.has(meta.ref));
      if (!left.length) continue;
      const kept = current.filter((meta) => !refs.has(meta.ref));
      if (kept.length) this._entries.set(key, kept); else this._entries.delete(key);
      applied.leaves[key] = left;
      this._emit("leave", key, kept, left);
    }
    for (const [key, metas] of Object.entries(joins)) {
      const current = this._entries.get(key) || [];
      const known = new Set(current.map((meta) => meta.ref));
      const joined = metas.filter((meta) => !known.has(meta.ref));
      if (!joined.length) continue;
      const now = [...current, ...joined];
      this._entries.set(key, now);
      applied.joins[key] = joined;
      this._emit("join", key, now, joined);
    }
    if (Object.keys(applied.joins).length || Object.keys(applied.leaves).length) {
      this._emit("change", applied);
    }
  }

  /** Forget everything (e.g. after leaving the topic); reported as leaves. */
  clear() { this.sync({}); }

  /**
   * @param {"change"|"join"|"leave"} type
   * @param {Function} fn
   * @returns {() => void}
   */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  _emit(type, ...args) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try { fn(...args); } catch (error) { console.error("flamigo.js: a presence listener failed", error); }
    }
  }
}

/**
 * Connect to a flamigo_actors server. Returns at once; the client connects,
 * authenticates and reconnects in the background (see {@link FlamigoClient}).
 *
 * @param {string} [url="/ws"] WebSocket URL; relative URLs resolve against the page
 * @param {ClientOptions} [options]
 * @returns {FlamigoClient}
 */
export function connect(url = "/ws", options = {}) {
  return new FlamigoClient(url, options);
}

export default connect;
