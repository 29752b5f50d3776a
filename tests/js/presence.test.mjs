// flamigo.js's live presence map, against a real demo server (`python -m app`).
// Run by tests/test_presence.py (`node --test`).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { PresenceMap, connect } from "../../flamigo_actors/static/flamigo.js";
import { DemoServer, waitFor } from "./server.mjs";

let server;
before(async () => { server = await DemoServer.start(); });
after(async () => { await server.stop(); });

const counts = (map) => Object.fromEntries(map.keys().sort().map((key) => [key, map.get(key).length]));

test("a listing and overlapping diffs merge without duplicates; unknown leaves are ignored", () => {
  const map = new PresenceMap("rooms/x");
  const events = [];
  map.on("join", (key, metas, joined) => events.push(["join", key, metas.length, joined.length]));
  map.on("leave", (key, metas, left) => events.push(["leave", key, metas.length, left.length]));
  map.sync({ ann: [{ id: "ann", ref: "a1" }] });
  map.apply({ joins: { ann: [{ id: "ann", ref: "a1" }], ben: [{ id: "ben", ref: "b1" }] }, leaves: {} });
  map.apply({ joins: { ann: [{ id: "ann", ref: "a2" }] }, leaves: { cat: [{ id: "cat", ref: "c1" }] } });
  assert.deepEqual(counts(map), { ann: 2, ben: 1 });
  map.apply({ joins: {}, leaves: { ann: [{ id: "ann", ref: "a1" }], ben: [{ id: "ben", ref: "b1" }] } });
  assert.deepEqual(map.list(), { ann: [{ id: "ann", ref: "a2" }] });
  assert.deepEqual(events, [
    ["join", "ann", 1, 1], ["join", "ben", 1, 1], ["join", "ann", 2, 1],
    ["leave", "ann", 1, 1], ["leave", "ben", 0, 1],
  ]);
  map.sync({});
  assert.equal(map.size, 0);
});

test("the map follows a room live: a second client joins and leaves", async () => {
  const room = "presence-js";
  const ann = connect(server.wsUrl, {
    token: await server.login("ann"),
    onConnect: async (session) => {
      const reply = await session.request("app::rooms:join", { room });
      ann.presence(`rooms/${room}`).sync(reply.members);
    },
  });
  const map = ann.presence(`rooms/${room}`);
  assert.equal(ann.presence(`rooms/${room}`), map, "one map per topic");
  const changes = [];
  map.on("change", (change) => changes.push(change));
  await ann.ready();
  await waitFor(() => map.get("ann").length === 1, 5000, "ann sees herself");
  const ben = connect(server.wsUrl, {
    token: await server.login("ben"),
    onConnect: async (session) => { await session.request("app::rooms:join", { room }); },
  });
  await waitFor(() => map.get("ben").length === 1, 5000, "ben's join reaches ann");
  assert.deepEqual(counts(map), { ann: 1, ben: 1 });
  ben.close();
  await waitFor(() => map.get("ben").length === 0, 5000, "ben's leave reaches ann");
  assert.deepEqual(counts(map), { ann: 1 });
  assert.ok(changes.some((change) => change.leaves.ben), "a change event carried the leave");
  const { members } = await ann.request("app::rooms:members", { room });
  assert.deepEqual(members, map.list());
  ann.close();
});
