#!/usr/bin/env node
// Reconnect storm of scripts/bench_recovery.py: every client drops at once and comes back while
// events are published; result as JSON.
//
//   node storm.js '{"ports": [8080, 8081], "clients": 5000, "rate": 100, "recover": true, "pids": [..]}'
//
// 1. `clients` connections (spread over `ports`) authenticate (with "recover": true when
//    `recover`) and join `room`; 2. events are posted over HTTP at `rate`/s (each a numbered
//    text) for the whole run; 3. after `before` s every socket is destroyed at once (no close
//    frame); 4. all reconnect at once (at most `connectConcurrency` handshakes in flight):
//    with `recover`, a resume with the session and last position, else a plain auth + join;
//    5. publishing goes on `after` s once all are back, then stops, and deliveries settle.
// Reported: time from the drop until every client is back (its auth, plus the join when plain),
// missing and duplicate deliveries over all clients (expected: every event posted), and the
// servers' CPU during the storm per client. Connections go to 127.0.0.1 only; every wait is bounded.
'use strict';

const fs = require('fs');
const http = require('http');
const WebSocket = require('ws');

const cfg = Object.assign(
  { host: '127.0.0.1', ports: [], pids: [], clients: 100, rate: 100, before: 2, after: 2, settle: 3,
    recover: true, room: 'storm', users: 50, connectConcurrency: 200, timeout: 120 },
  JSON.parse(process.argv[2] || '{}'),
);

const now = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

function cpuSeconds() {
  let total = 0;
  for (const pid of cfg.pids) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    total += (Number(fields[11]) + Number(fields[12])) / 100;
  }
  return total;
}

function httpJson(port, path, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request({ host: cfg.host, port, path, method: 'POST', agent, timeout: 30000,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data), ...headers } },
    (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, body: text ? JSON.parse(text) : null }));
    });
    req.on('timeout', () => req.destroy(new Error('HTTP timeout')));
    req.on('error', reject);
    req.end(data);
  });
}

async function limited(items, concurrency, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]);
  });
  await Promise.all(workers);
}

class Client {
  constructor(index, token) {
    this.index = index;
    this.port = cfg.ports[index % cfg.ports.length];
    this.token = token;
    this.session = null;
    this.pos = null;
    this.seen = new Map(); // event number -> deliveries shown to the app
    this.dropped = 0; // pushes at or below the last position (flamigo.js drops them too)
    this.ack = 0;
    this.waiting = new Map();
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${cfg.host}:${this.port}/ws`, { perMessageDeflate: false });
      this.ws = ws;
      ws.on('open', () => resolve());
      ws.on('error', reject);
      ws.on('message', (data) => this.receive(JSON.parse(data)));
      ws.on('close', () => { for (const w of this.waiting.values()) w.reject(new Error('closed')); this.waiting.clear(); });
    });
  }

  request(topic, payload) {
    const ackId = ++this.ack;
    return new Promise((resolve, reject) => {
      this.waiting.set(ackId, { resolve, reject });
      this.ws.send(JSON.stringify({ topic, payload, ackId }));
    });
  }

  receive(message) {
    if (message.ackId !== undefined) {
      const w = this.waiting.get(message.ackId);
      if (!w) return;
      this.waiting.delete(message.ackId);
      if (message.topic === 'error') w.reject(new Error(JSON.stringify(message.payload)));
      else w.resolve(message.payload);
      return;
    }
    if (message.topic !== 'chat:message') return;
    if (message.pos) {
      if (this.pos && this.pos.epoch === message.pos.epoch && message.pos.offset <= this.pos.offset) {
        this.dropped += 1;
        return;
      }
      this.pos = message.pos;
    }
    const n = Number(message.payload.text.slice(1));
    this.seen.set(n, (this.seen.get(n) || 0) + 1);
  }

  async start() {
    await this.connect();
    const auth = await this.request('app::websocket:auth', cfg.recover ? { token: this.token, recover: true } : { token: this.token });
    this.session = auth.session || null;
    const joined = await this.request('app::rooms:join', { room: cfg.room });
    if (joined.pos) this.pos = joined.pos;
  }

  async back() {
    await this.connect();
    if (cfg.recover) {
      const since = this.pos ? { [this.pos.stream]: { offset: this.pos.offset, epoch: this.pos.epoch } } : {};
      const reply = await this.request('app::websocket:auth', { token: this.token, resume: { session: this.session, since } });
      this.recovered = reply.recovered === true;
    } else {
      await this.request('app::websocket:auth', { token: this.token });
      await this.request('app::rooms:join', { room: cfg.room });
    }
  }
}

async function main() {
  const deadline = setTimeout(() => { console.error('storm: timed out'); process.exit(2); }, cfg.timeout * 1000);
  const tokens = [];
  for (let u = 0; u < cfg.users; u += 1) {
    const reply = await httpJson(cfg.ports[0], '/api/login', { username: `storm${u}` });
    tokens.push(reply.body.token);
  }
  const clients = Array.from({ length: cfg.clients }, (_, i) => new Client(i, tokens[i % tokens.length]));
  await limited(clients, cfg.connectConcurrency, (c) => c.start());

  // Events at `rate`/s, one at a time, numbered; each acknowledged (202) once stored and published.
  let published = 0;
  let publishing = true;
  const bearer = { Authorization: `Bearer ${tokens[0]}` };
  const publisher = (async () => {
    const interval = 1000 / cfg.rate;
    let due = now();
    while (publishing) {
      const n = published + 1;
      const port = cfg.ports[n % cfg.ports.length];
      const res = await httpJson(port, `/api/rooms/${cfg.room}/messages`, { text: `e${n}` }, bearer);
      if (res.status !== 202) throw new Error(`publish ${n}: ${res.status} ${JSON.stringify(res.body)}`);
      published = n;
      due += interval;
      const wait = due - now();
      if (wait > 0) await sleep(wait);
    }
  })();

  await sleep(cfg.before * 1000);
  const cpu0 = cpuSeconds();
  const t0 = now();
  for (const c of clients) c.ws._socket.destroy(); // every socket gone at once, no close frame
  await limited(clients, cfg.connectConcurrency, async (c) => {
    for (let attempt = 0; ; attempt += 1) {
      try {
        await c.back();
        return;
      } catch (error) {
        if (attempt > 20) throw error;
        await sleep(50 + Math.random() * 200);
      }
    }
  });
  const resumedMs = now() - t0;
  const cpu = cpuSeconds() - cpu0;
  await sleep(cfg.after * 1000);
  publishing = false;
  await publisher;
  await sleep(cfg.settle * 1000);

  let missing = 0;
  let duplicates = 0;
  let dropped = 0;
  let notRecovered = 0;
  for (const c of clients) {
    for (let n = 1; n <= published; n += 1) {
      const k = c.seen.get(n) || 0;
      if (k === 0) missing += 1;
      if (k > 1) duplicates += k - 1;
    }
    dropped += c.dropped;
    if (cfg.recover && !c.recovered) notRecovered += 1;
  }
  clearTimeout(deadline);
  console.log(JSON.stringify({
    recover: cfg.recover, servers: cfg.ports.length, clients: cfg.clients, rate: cfg.rate,
    events: published, all_back_ms: Math.round(resumedMs), missing, duplicates,
    overlap_dropped_by_client: dropped, not_recovered: notRecovered,
    server_cpu_ms_per_client: cfg.pids.length ? (1000 * cpu) / cfg.clients : null,
  }));
  for (const c of clients) c.ws.terminate();
  agent.destroy();
}

main().catch((error) => { console.error(error && error.stack || error); process.exit(1); });
