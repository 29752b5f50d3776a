// Unit tests of flamigo.js against real demo servers (`python -m app` child processes).
// Run by tests/test_flamigo_js.py (`node --test`); standalone:
//   PYTHON=.venv/bin/python node --experimental-websocket --test tests/js/
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

import {
  CLOSE_CONNECT_TIMEOUT,
  CLOSE_HEARTBEAT_TIMEOUT,
  FlamigoError,
  FlamigoTimeoutError,
  backoffDelay,
  connect,
} from "../../flamigo_actors/static/flamigo.js";
import { DemoServer, waitFor } from "./server.mjs";

const figures = {};
function record(name, value) {
  figures[name] = value;
  if (process.env.FLAMIGO_ARTIFACTS) {
    mkdirSync(process.env.FLAMIGO_ARTIFACTS, { recursive: true });
    writeFileSync(join(process.env.FLAMIGO_ARTIFACTS, "flamigo-js-figures.json"), JSON.stringify(figures, null, 2));
  }
}

/** Every event of a client, in order, for assertions. */
function recorder(client) {
  const events = [];
  for (const type of ["open", "close", "reconnecting", "error", "statechange"]) {
    client.listen(type, (detail) => events.push({ type, ...detail }));
  }
  return events;
}

/** A client that joins `room` on every (re)connect, with the chat texts and recovery answers it saw. */
function roomMember(server, token, room, options) {
  const client = connect(server.wsUrl, {
    token,
    ...options,
    onConnect: (session) => session.request("app::rooms:join", { room }),
  });
  const texts = [];
  client.on("chat:message", (p) => texts.push(p.text));
  const recoveries = [];
  client.listen("recovery", (detail) => recoveries.push(detail));
  return { client, texts, recoveries };
}

const rejection = async (promise) => {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected the promise to reject");
};

describe("backoff", () => {
  test("grows by the factor up to the cap; no jitter is deterministic", () => {
    const options = { reconnectDelay: 100, reconnectDelayMax: 1000, reconnectFactor: 2, reconnectJitter: 0 };
    assert.deepEqual([0, 1, 2, 3, 4, 5, 10].map((n) => backoffDelay(n, options)), [100, 200, 400, 800, 1000, 1000, 1000]);
  });

  test("jitter draws from [delay * (1 - jitter), delay]", () => {
    const options = { reconnectDelay: 1000, reconnectDelayMax: 30000, reconnectJitter: 0.5 };
    assert.equal(backoffDelay(0, options, () => 0), 1000);
    assert.equal(backoffDelay(0, options, () => 0.999999), 500);
    assert.equal(backoffDelay(20, options, () => 0), 30000);
    assert.equal(backoffDelay(20, options, () => 0.999999), 15000);
    assert.equal(backoffDelay(2, { ...options, reconnectJitter: 1 }, () => 0.999999), 0);
  });

  test("a crowd of clients spreads its first retry across the window (no reconnect storm)", () => {
    const options = { reconnectDelay: 1000, reconnectJitter: 0.5 };
    const delays = Array.from({ length: 1000 }, () => backoffDelay(0, options));
    assert.ok(delays.every((d) => d >= 500 && d <= 1000));
    // Bucket into 100 ms slots: every slot gets part of the crowd, none gets most of it.
    const slots = new Array(5).fill(0);
    for (const d of delays) slots[Math.min(4, Math.floor((d - 500) / 100))] += 1;
    assert.ok(slots.every((n) => n > 100 && n < 300), `uneven spread ${slots}`);
  });
});

describe("requests against a live server", () => {
  let server;
  let token;
  let client;

  before(async () => {
    server = await DemoServer.start();
    token = await server.login("alice");
    client = connect(server.wsUrl, { token });
    await client.ready();
  });
  after(async () => {
    client?.close();
    await server?.stop();
  });

  test("the reply resolves the request; the user is known after auth", async () => {
    assert.deepEqual(await client.request("app::echo", { hello: ["world", 1] }), { hello: ["world", 1] });
    assert.deepEqual(client.user, { id: "alice", username: "alice" });
    assert.equal(client.state, "open");
  });

  test("a request without payload works; a payload that is not JSON rejects at once", async () => {
    const { rooms } = await client.request("app::rooms:list");
    assert.ok(rooms.includes("lobby"));
    const error = await rejection(client.request("app::echo", { big: 1n }));
    assert.ok(error instanceof TypeError);
    assert.equal(client.pendingCount, 0);
  });

  test("replies are matched by ackId even when they arrive out of order", async () => {
    const slow = client.request("app::demo:deferred", { seconds: 0.3 });
    const fast = client.request("app::echo", "fast");
    const order = [];
    await Promise.all([slow.then((v) => order.push(["slow", v])), fast.then((v) => order.push(["fast", v]))]);
    assert.deepEqual(order, [["fast", "fast"], ["slow", { slept: 0.3 }]]);
  });

  test("server errors reject with message, status and fieldErrors", async () => {
    const failed = await rejection(client.request("app::demo:fail"));
    assert.ok(failed instanceof FlamigoError);
    assert.equal(failed.status, 500);
    assert.equal(failed.code, "server");
    assert.equal(failed.message, "internal error");
    assert.doesNotMatch(failed.message, /stays on the server/);

    const unknown = await rejection(client.request("app::no:such-strategy", {}));
    assert.equal(unknown.status, 404);

    const invalid = await rejection(client.request("app::rooms:join", { room: "not a room!" }));
    assert.equal(invalid.status, 422);
    assert.ok(Array.isArray(invalid.fieldErrors) && invalid.fieldErrors.length > 0);
    assert.equal(invalid.fieldErrors[0].field, "room");

    const scope = await rejection(client.request("other::x:y"));
    assert.equal(scope.status, 403);
    // The connection carries on after every error.
    assert.equal(await client.request("app::echo", 7), 7);
  });

  test("a timeout rejects with its own error and the late reply is ignored", async () => {
    const late = await rejection(client.request("app::demo:slow", { seconds: 0.4 }, { timeout: 50 }));
    assert.ok(late instanceof FlamigoTimeoutError);
    assert.equal(late.code, "timeout");
    assert.equal(late.status, 0);
    // The mailbox answers in order: this reply comes after the late one, which must not disturb it.
    assert.equal(await client.request("app::echo", "after"), "after");
    assert.equal(client.pendingCount, 0);
  });

  test("pushes reach on() handlers; off() stops them", async () => {
    const bob = connect(server.wsUrl, { token: await server.login("bob") });
    try {
      // The join's own presence diff comes first: wait for it, so "*" below sees the chat only.
      let joinDiff = false;
      const unwatch = client.on("presence:diff", (diff) => { if (diff.stream === "rooms/js-push") joinDiff = true; });
      await client.request("app::rooms:join", { room: "js-push" });
      await waitFor(() => joinDiff, 5000, "the join's presence diff");
      unwatch();
      const seen = [];
      const sentinel = [];
      const any = [];
      const stop = client.on("chat:message", (payload) => seen.push(payload.text));
      client.on("chat:message", (payload) => sentinel.push(payload.text));
      client.on("*", (payload, topic) => any.push(topic));
      await bob.request("app::rooms:send", { room: "js-push", text: "one" });
      await waitFor(() => sentinel.length === 1, 5000, "first push");
      stop();
      await bob.request("app::rooms:send", { room: "js-push", text: "two" });
      await waitFor(() => sentinel.length === 2, 5000, "second push");
      assert.deepEqual(seen, ["one"]);
      assert.deepEqual(sentinel, ["one", "two"]);
      assert.deepEqual(any, ["chat:message", "chat:message"]);
      client.off("chat:message");
      client.off("*");
    } finally {
      bob.close();
    }
  });

  test("without a token the server answers 401, and authenticate() fixes it", async () => {
    const anon = connect(server.wsUrl);
    try {
      await anon.ready();
      assert.equal((await rejection(anon.request("app::echo", 1))).status, 401);
      // The heartbeat strategy is public.
      assert.deepEqual(await anon.request("app::websocket:ping"), { pong: true });
      assert.deepEqual(await anon.authenticate(await server.login("carol")), { id: "carol", username: "carol" });
      assert.equal(await anon.request("app::echo", 2), 2);
    } finally {
      anon.close();
    }
  });

  test("a refused token closes the client and rejects what was queued with 401", async () => {
    const bad = connect(server.wsUrl, { token: "forged" });
    const events = recorder(bad);
    const queued = bad.request("app::echo", 1);
    const error = await rejection(queued);
    assert.equal(error.status, 401);
    assert.equal(error.code, "closed");
    assert.equal(bad.state, "closed");
    assert.ok(events.some((e) => e.type === "error" && e.kind === "auth" && e.error.status === 401));
    assert.equal(events.filter((e) => e.type === "reconnecting").length, 0);
  });

  test("close() rejects later requests and stops for good", async () => {
    const other = connect(server.wsUrl, { token });
    await other.ready();
    other.close();
    assert.equal(other.state, "closed");
    const error = await rejection(other.request("app::echo", 1));
    assert.equal(error.code, "closed");
  });

  test("a long strategy does not make a live connection look dead (ping answered ahead of the mailbox)", async () => {
    const busy = connect(server.wsUrl, { token, heartbeatInterval: 100, heartbeatTimeout: 1000 });
    const events = recorder(busy);
    try {
      await busy.ready();
      const before = busy.stats.heartbeats;
      assert.deepEqual(await busy.request("app::demo:slow", { seconds: 2.5 }), { slept: 2.5 });
      assert.ok(busy.stats.heartbeats > before, "heartbeats were sent during the slow call");
      assert.deepEqual(events.filter((e) => e.type === "close"), []);
      assert.equal(busy.stats.connects, 1);
    } finally {
      busy.close();
    }
  });
});

describe("reconnecting", () => {
  test("after a server restart: re-auth, re-join via the hook, then the offline queue is flushed", async () => {
    let server = await DemoServer.start();
    const port = server.port;
    const token = await server.login("dora");
    const hookCalls = [];
    const client = connect(server.wsUrl, {
      token,
      queueLimit: 2,
      reconnectDelay: 200,
      reconnectDelayMax: 1000,
      onConnect: async (session, info) => {
        hookCalls.push({ reconnect: info.reconnect, user: session.user && session.user.id });
        await session.request("app::rooms:join", { room: "js-restart" });
      },
    });
    const events = recorder(client);
    const messages = [];
    client.on("chat:message", (p) => messages.push(p.text));
    try {
      await client.ready();
      assert.deepEqual(hookCalls, [{ reconnect: false, user: "dora" }]);

      await server.stop();
      await waitFor(() => client.state !== "open", 10000, "client notices the shutdown");
      const close = events.find((e) => e.type === "close");
      assert.equal(close.code, 1001);
      assert.equal(close.wasOpen, true);

      // Offline: requests wait in the bounded queue; the oldest is rejected when it overflows.
      const patient = { timeout: 60000 };
      const dropped = rejection(client.request("app::echo", "dropped", patient));
      const first = client.request("app::rooms:send", { room: "js-restart", text: "queued while offline" }, patient);
      const second = client.request("app::echo", "second", patient);
      assert.equal((await dropped).code, "queue_full");
      assert.equal(client.queuedCount, 2);

      await waitFor(() => events.some((e) => e.type === "reconnecting" && e.attempt >= 2), 10000, "failed attempts");
      server = await DemoServer.start(port);
      await client.ready();
      assert.deepEqual(await first, { room: "js-restart", sent: true });
      assert.equal(await second, "second");
      // The queued send reached the room only because the hook re-joined first.
      await waitFor(() => messages.includes("queued while offline"), 5000, "own message back");
      assert.deepEqual(hookCalls.map((c) => c.reconnect), [false, true]);
      assert.equal(hookCalls[1].user, "dora");

      // And the next message from elsewhere flows (HTTP view on the new server).
      assert.equal(await server.post("js-restart", token, "after restart"), 202);
      await waitFor(() => messages.includes("after restart"), 5000, "push after restart");

      const reconnecting = events.filter((e) => e.type === "reconnecting");
      const delays = reconnecting.map((e) => e.delay);
      assert.ok(delays.every((d, i) => d <= 1000 && d >= (i === 0 ? 100 : 0)), `delays ${delays}`);
      const open = events.filter((e) => e.type === "open");
      assert.equal(open.length, 2);
      assert.equal(open[1].reconnect, true);
      assert.equal(client.stats.reconnects, 1);
      const states = events.filter((e) => e.type === "statechange").map((e) => e.state);
      assert.deepEqual(states.slice(0, 3), ["open", "reconnecting", "connecting"]);
      assert.equal(states.at(-1), "open");
      record("restart_downtime_ms", client.stats.lastDowntime);
      record("restart_attempts", reconnecting.length);
      record("restart_delays_ms", delays);
    } finally {
      client.close();
      await server.stop();
    }
  });

  test("once the server is back up, reconnecting clients are open again after one backoff step", async () => {
    let server = await DemoServer.start();
    const port = server.port;
    const token = await server.login("erin");
    const client = connect(server.wsUrl, { token, reconnectDelay: 100, reconnectDelayMax: 400 });
    const events = recorder(client);
    try {
      await client.ready();
      await server.stop();
      server = await DemoServer.start(port);
      const upAt = Date.now();
      await client.ready();
      record("open_after_server_ready_ms", Date.now() - upAt);
      assert.equal(await client.request("app::echo", "back"), "back");
      assert.ok(events.filter((e) => e.type === "reconnecting").every((e) => e.delay <= 400));
    } finally {
      client.close();
      await server.stop();
    }
  });

  test("the heartbeat finds a frozen server dead, and the client comes back when it thaws", async () => {
    const server = await DemoServer.start();
    const token = await server.login("frank");
    const client = connect(server.wsUrl, {
      token,
      recover: false, // without a recovery session an unanswered request is rejected (see "recovery")
      heartbeatInterval: 200,
      heartbeatTimeout: 400,
      connectTimeout: 500,
      reconnectDelay: 100,
      reconnectDelayMax: 300,
    });
    const events = recorder(client);
    try {
      await client.ready();
      // The socket stays open (the kernel still ACKs) but nothing answers: only a heartbeat sees it.
      server.pause();
      const frozenAt = Date.now();
      const inFlight = rejection(client.request("app::echo", "lost", { timeout: 60000 }));
      const retried = client.request("app::echo", "retried", { timeout: 60000, retry: true });
      await waitFor(() => events.some((e) => e.type === "close"), 20000, "heartbeat timeout");
      record("dead_connection_detected_ms", Date.now() - frozenAt);
      const close = events.find((e) => e.type === "close");
      assert.equal(close.code, CLOSE_HEARTBEAT_TIMEOUT);
      assert.equal((await inFlight).code, "disconnected");
      // New attempts hang on the frozen server: the connect timeout abandons them.
      await waitFor(() => events.some((e) => e.type === "reconnecting" && e.code === CLOSE_CONNECT_TIMEOUT),
        20000, "connect timeout");
      server.resume();
      await client.ready();
      assert.equal(await retried, "retried");
      assert.equal(await client.request("app::echo", "thawed"), "thawed");
    } finally {
      client.close();
      await server.stop();
    }
  });

  test("close codes listed in noReconnectCodes stop the client; its requests reject", async () => {
    const server = await DemoServer.start();
    const client = connect(server.wsUrl, { token: await server.login("gina"), noReconnectCodes: [1001] });
    const events = recorder(client);
    try {
      await client.ready();
      await server.stop();
      await waitFor(() => client.state === "closed", 10000, "closed state");
      assert.equal(events.filter((e) => e.type === "reconnecting").length, 0);
      assert.equal((await rejection(client.request("app::echo", 1))).code, "closed");
    } finally {
      client.close();
      await server.stop();
    }
  });
});

describe("recovery", () => {
  test("after a lost socket the session resumes: missed pushes once, in order; an unanswered request runs once", async () => {
    const server = await DemoServer.start();
    const token = await server.login("ivy");
    const { client, texts, recoveries } = roomMember(server, token, "js-resume", {
      reconnectDelay: 300,
      reconnectDelayMax: 300,
      heartbeatInterval: 200,
      heartbeatTimeout: 400,
    });
    try {
      await client.ready();
      assert.equal(await server.post("js-resume", token, "one"), 202);
      await waitFor(() => texts.length === 1, 5000, "first push");
      // The network drops silently: the server still thinks the socket is open for a while,
      // and messages are said meanwhile (some pushed to the dead socket, some after it).
      server.pause();
      const unanswered = client.request("app::rooms:send", { room: "js-resume", text: "two" }, { timeout: 60000 });
      await waitFor(() => client.state !== "open", 10000, "heartbeat notices");
      server.resume();
      assert.equal(await server.post("js-resume", token, "three"), 202);
      assert.equal(await server.post("js-resume", token, "four"), 202);
      await client.ready();
      assert.deepEqual(await unanswered, { room: "js-resume", sent: true });
      await waitFor(() => texts.length >= 4, 10000, "the missed pushes");
      await new Promise((r) => setTimeout(r, 300)); // anything twice would arrive by now
      assert.equal(recoveries.at(-1).recovered, true);
      // 'two' (buffered in the stopped server's socket, or re-sent after the resume) and
      // 'three' (a new HTTP request after SIGCONT) come from different senders, so the room may
      // order them either way; the contract is that the client sees the stream's own order,
      // every message once, and each sender's messages in the order it sent them.
      const history = await client.request("app::rooms:history", { room: "js-resume" });
      const stream = history.messages.map((m) => m.text);
      assert.deepEqual(texts, stream);
      assert.deepEqual([...stream].sort(), ["four", "one", "three", "two"]);
      assert.equal(stream[0], "one");
      assert.ok(stream.indexOf("three") < stream.indexOf("four"), `three before four: ${stream}`);
    } finally {
      client.close();
      await server.stop();
    }
  });

  test("a restarted server (embedded store) says it could not recover; the client starts over", async () => {
    let server = await DemoServer.start();
    const port = server.port;
    const token = await server.login("jay");
    const { client, texts, recoveries } = roomMember(server, token, "js-lost", {
      reconnectDelay: 200,
      reconnectDelayMax: 400,
    });
    try {
      await client.ready();
      assert.equal(await server.post("js-lost", token, "before"), 202);
      await waitFor(() => texts.length === 1, 5000, "first push");
      await server.stop();
      server = await DemoServer.start(port);
      await waitFor(() => recoveries.length === 1, 15000, "the resume's answer");
      assert.deepEqual(recoveries[0], { recovered: false, streams: {}, reason: "unknown_session" });
      await client.ready();
      assert.equal(await server.post("js-lost", token, "after"), 202);
      await waitFor(() => texts.length === 2, 5000, "a push after the restart (offset 1 again, new epoch)");
      assert.deepEqual(texts, ["before", "after"]);
    } finally {
      client.close();
      await server.stop();
    }
  });
});
