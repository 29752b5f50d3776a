#!/usr/bin/env node
// The load generator of scripts/bench.py: one workload against one server, result as JSON.
//
//   node loadgen.js '{"mode": "roundtrip", "kind": "flamigo", "port": 8080, ...}'
//
// kind: "flamigo" (the demo app: login, app::websocket:auth, app::rooms:join),
//       "raw" (bare gevent-websocket: same envelope, no auth),
//       "socketio" (Flask-SocketIO: an "echo" event with an ack, broadcast by emit).
// mode: "roundtrip"   clients x inflight requests echoed for `duration` s after `warmup` s;
//       "fanout"      `clients` connections in one room, `events` HTTP publishes `interval` ms apart;
//       "connections" `clients` idle (authenticated) connections held for `hold` s;
//       "crowd"       `clients` authenticated connections from one `source` address, all in one
//                     room, for a multi-process run that scripts/bench.py coordinates over stdio:
//                     prints {"phase": "ready", ...} once connected, waits for a "go" line on
//                     stdin, then counts `events` pushes per connection and prints the result
//                     (with `linger`: keeps the connections open until a "close" line).
//
// The generator measures the server too (it gets the server's pid): CPU time
// from /proc/<pid>/stat and RSS from /proc/<pid>/status. Its own CPU use is
// reported so a reader can see it was not the bottleneck. Every loop is
// bounded in count and time; connections go to 127.0.0.1 only.
'use strict';

const fs = require('fs');
const http = require('http');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

const cfg = Object.assign(
  {
    host: '127.0.0.1',
    clients: 1,
    inflight: 1,
    duration: 10,
    warmup: 1,
    events: 20,
    interval: 200,
    hold: 10,
    connectConcurrency: 100,
    timeout: 60,
    room: 'bench',
    users: 100,
  },
  JSON.parse(process.argv[2] || '{}'),
);

const CLK_TCK = 100; // USER_HZ on Linux: /proc/<pid>/stat counts in 1/100 s
const now = () => Number(process.hrtime.bigint()) / 1e6; // milliseconds
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function serverCpuSeconds() {
  if (!cfg.pid) return null;
  const stat = fs.readFileSync(`/proc/${cfg.pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime + stime
}

function serverRssBytes() {
  if (!cfg.pid) return null;
  const status = fs.readFileSync(`/proc/${cfg.pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : null;
}

function cpuMeter() {
  const t0 = now();
  const c0 = process.cpuUsage();
  const s0 = serverCpuSeconds();
  const read = () => {
    const wall = (now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const s1 = serverCpuSeconds();
    return {
      wall_s: wall,
      loadgen_cpu_pct: (100 * (c.user + c.system)) / 1e6 / wall,
      server_cpu_s: s0 === null ? null : s1 - s0,
      server_cpu_pct: s0 === null ? null : (100 * (s1 - s0)) / wall,
    };
  };
  return read;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function httpJson(method, path, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const req = http.request(
      {
        host: cfg.host,
        port: cfg.port,
        method,
        path,
        agent,
        headers: Object.assign(
          data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {},
          headers,
        ),
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode >= 400) return reject(new Error(`${method} ${path}: ${res.statusCode} ${text}`));
          resolve(text ? JSON.parse(text) : null);
        });
      },
    );
    req.setTimeout(cfg.timeout * 1000, () => req.destroy(new Error(`${method} ${path}: timeout`)));
    req.on('error', reject);
    req.end(data);
  });
}

// Tokens for the flamigo demo: `users` users, round robin over the connections.
async function tokens() {
  if (cfg.kind !== 'flamigo') return [];
  const out = [];
  for (let i = 0; i < Math.min(cfg.users, Math.max(1, cfg.clients)); i++) {
    out.push((await httpJson('POST', '/api/login', { username: `bench${i}` })).token);
  }
  return out;
}

// -- one client: connect, (auth), (join), request, receive pushes --------------------------------

// Spread the client side over several loopback addresses: 10,000 connections
// per run, several runs in a row, must not exhaust one address's ephemeral ports.
// A "crowd" generator uses its one `source` address (the caller spreads processes over several).
let nextLocal = 0;
function localAddress() {
  if (cfg.source) return cfg.source;
  nextLocal = (nextLocal % 8) + 1;
  return `127.0.0.${nextLocal}`;
}

// An echo reply of echoLoop's request, exactly (both servers keep key order).
const ECHO_REPLY = /^\{"topic":"app::echo","payload":\{"n":(\d+),"text":"hello, flamigo"\},"ackId":(\d+)\}$/;

class WsClient {
  constructor(token) {
    this.token = token;
    this.pending = new Map(); // ackId -> callback(reply text)
    this.nextAck = 1;
    this.onPush = null;
    this.closed = false;
  }

  open() {
    if (cfg.client !== 'ws') {
      this.ws = new LeanSocket(
        (text) => this.message(text),
        () => {
          this.closed = true;
        },
      );
      return this.ws.connect();
    }
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${cfg.host}:${cfg.port}/ws`, {
        perMessageDeflate: false,
        localAddress: localAddress(),
        handshakeTimeout: cfg.timeout * 1000,
      });
      this.ws = ws;
      ws.on('open', resolve);
      ws.on('error', (err) => {
        this.closed = true;
        reject(err);
      });
      ws.on('close', () => {
        this.closed = true;
      });
      ws.on('message', (data) => this.message(data.toString()));
    });
  }

  message(text) {
    // Replies carry an ackId; pushes do not. Echo replies (the hot path) are
    // matched by their numeric ackId without a JSON parse; anything else is parsed.
    if (this.pending.size) {
      const m = ECHO_REPLY.exec(text);
      if (m !== null && m[1] === m[2]) {
        const ack = Number(m[1]);
        const cb = this.pending.get(ack);
        if (cb !== undefined) {
          this.pending.delete(ack);
          cb(null);
          return;
        }
      } else if (text.includes('"ackId"')) {
        const reply = JSON.parse(text);
        const cb = this.pending.get(reply.ackId);
        if (cb !== undefined) {
          this.pending.delete(reply.ackId);
          cb(reply);
          return;
        }
      }
    }
    if (this.onPush) this.onPush(text);
  }

  request(topic, payload) {
    return new Promise((resolve, reject) => {
      const ack = this.nextAck++;
      this.pending.set(ack, (reply) =>
        reply.topic === 'error' ? reject(new Error(`${topic}: ${JSON.stringify(reply.payload)}`)) : resolve(reply.payload),
      );
      this.ws.send(JSON.stringify({ topic, payload, ackId: ack }));
    });
  }

  // The round-trip loop: the callback form, without a promise per request.
  // The request text is built by concatenation (what JSON.stringify would give);
  // the reply must be the echo (ECHO_REPLY), else it is parsed and reported.
  echoLoop(inflight, record, running) {
    const send = () => {
      const ack = this.nextAck++;
      const t0 = now();
      this.pending.set(ack, (reply) => {
        if (reply !== null) throw new Error(`app::echo: unexpected reply ${JSON.stringify(reply)}`);
        record(now() - t0);
        if (running()) send();
      });
      this.ws.send(`{"topic":"app::echo","payload":{"n":${ack},"text":"hello, flamigo"},"ackId":${ack}}`);
    };
    for (let i = 0; i < inflight; i++) send();
  }

  async ready(join) {
    await this.open();
    if (cfg.kind === 'flamigo') await this.request('app::websocket:auth', { token: this.token });
    if (join) await this.request('app::rooms:join', { room: cfg.room });
  }

  close() {
    if (!this.closed) {
      if (this.ws instanceof LeanSocket) this.ws.end();
      else this.ws.terminate();
    }
    this.closed = true;
  }
}

// A lean WebSocket client (RFC 6455 over net.Socket) for the "raw" and "flamigo" kinds.
// `ws` spends about 0.4 ms of CPU per handshake (http.request, key checks), which
// made the generator, not the server, the limit of the connections workload. This
// one writes a fixed upgrade request, parses server frames in place and masks
// with a zero key (legal: the key is sent, XOR with zeros leaves the payload as is;
// the server still unmasks). Select `"client": "ws"` to cross-check with `ws`.
const net = require('net');
const UPGRADE_KEY = 'dGhlIHNhbXBsZSBub25jZQ=='; // RFC 6455's sample key
const UPGRADE_ACCEPT = 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=';

class LeanSocket {
  constructor(onMessage, onClose) {
    this.onMessage = onMessage;
    this.onClose = onClose;
    this.buf = null;
    this.upgraded = false;
    this.closed = false;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: cfg.host, port: cfg.port, localAddress: localAddress() });
      this.sock = sock;
      sock.setNoDelay(true);
      let settled = false;
      const timer = setTimeout(() => fail(new Error('handshake timeout')), cfg.timeout * 1000);
      const fail = (err) => {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          reject(err);
        }
        this.end();
      };
      sock.on('connect', () =>
        sock.write(
          `GET /ws HTTP/1.1\r\nHost: ${cfg.host}:${cfg.port}\r\nUpgrade: websocket\r\n` +
            `Connection: Upgrade\r\nSec-WebSocket-Key: ${UPGRADE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        ),
      );
      sock.on('data', (chunk) => {
        this.buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
        if (!this.upgraded) {
          const end = this.buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          const head = this.buf.toString('latin1', 0, end);
          if (!head.startsWith('HTTP/1.1 101') || !head.includes(UPGRADE_ACCEPT)) {
            return fail(new Error(`upgrade refused: ${head.split('\r\n')[0]}`));
          }
          this.upgraded = true;
          this.buf = this.buf.length > end + 4 ? this.buf.subarray(end + 4) : null;
          settled = true;
          clearTimeout(timer);
          resolve();
        }
        if (this.buf) this.frames();
      });
      sock.on('error', (err) => fail(err));
      sock.on('close', () => {
        fail(new Error('connection closed'));
        this.end();
      });
    });
  }

  frames() {
    let buf = this.buf;
    let at = 0;
    while (buf.length - at >= 2) {
      const b0 = buf[at];
      let len = buf[at + 1] & 0x7f;
      let head = 2;
      if (len === 126) {
        if (buf.length - at < 4) break;
        len = buf.readUInt16BE(at + 2);
        head = 4;
      } else if (len === 127) {
        if (buf.length - at < 10) break;
        len = Number(buf.readBigUInt64BE(at + 2));
        head = 10;
      }
      if (buf.length - at < head + len) break;
      const op = b0 & 0x0f;
      const start = at + head;
      at = start + len;
      if (op === 0x1) this.onMessage(buf.toString('utf8', start, at));
      else if (op === 0x9) this.sendFrame(0x8a, buf.subarray(start, at)); // pong
      else if (op === 0x8) return this.end();
    }
    this.buf = at < buf.length ? buf.subarray(at) : null;
  }

  sendFrame(b0, payload) {
    const n = payload.length;
    let header;
    if (n < 126) {
      header = Buffer.from([b0, 0x80 | n, 0, 0, 0, 0]);
    } else {
      header = Buffer.alloc(8);
      header[0] = b0;
      header[1] = 0x80 | 126;
      header.writeUInt16BE(n, 2);
    }
    this.sock.write(Buffer.concat([header, payload]));
  }

  // A text frame written straight into one buffer (the hot path of the round trips).
  send(text) {
    if (this.closed) return;
    const n = Buffer.byteLength(text);
    const head = n < 126 ? 6 : 8;
    const frame = Buffer.allocUnsafe(head + n);
    frame[0] = 0x81;
    if (n < 126) {
      frame[1] = 0x80 | n;
    } else {
      frame[1] = 0x80 | 126;
      frame.writeUInt16BE(n, 2);
    }
    frame.writeUInt32BE(0, head - 4); // the zero masking key
    frame.write(text, head);
    this.sock.write(frame);
  }

  end() {
    if (this.closed) return;
    this.closed = true;
    this.sock.destroy();
    this.onClose();
  }
}

class SioClient {
  constructor() {
    this.onPush = null;
    this.closed = false;
  }

  ready() {
    return new Promise((resolve, reject) => {
      const socket = io(`http://${cfg.host}:${cfg.port}`, {
        transports: ['websocket'],
        reconnection: false,
        forceNew: true,
        timeout: cfg.timeout * 1000,
        localAddress: localAddress(),
      });
      this.socket = socket;
      socket.on('connect', resolve);
      socket.on('connect_error', (err) => {
        this.closed = true;
        reject(err);
      });
      socket.on('disconnect', () => {
        this.closed = true;
      });
      socket.on('chat:message', (data) => this.onPush && this.onPush(data));
    });
  }

  echoLoop(inflight, record, running) {
    const body = { n: 0, text: 'hello, flamigo' };
    const send = () => {
      const t0 = now();
      body.n++;
      this.socket.emit('echo', { topic: 'app::echo', payload: body, ackId: body.n }, () => {
        record(now() - t0);
        if (running()) send();
      });
    };
    for (let i = 0; i < inflight; i++) send();
  }

  close() {
    this.socket.disconnect();
    this.closed = true;
  }
}

function makeClient(i, toks) {
  return cfg.kind === 'socketio' ? new SioClient() : new WsClient(toks.length ? toks[i % toks.length] : null);
}

// Connect `n` clients, at most `connectConcurrency` handshakes at a time.
async function connectAll(n, toks, join, openOnly = false) {
  const clients = new Array(n);
  let next = 0;
  let failed = 0;
  const errors = [];
  const worker = async () => {
    while (next < n) {
      const i = next++;
      const c = makeClient(i, toks);
      clients[i] = c;
      try {
        if (openOnly && c.open) await c.open();
        else await c.ready(join);
      } catch (err) {
        failed++;
        if (errors.length < 3) errors.push(String(err && err.message ? err.message : err));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.connectConcurrency, n) }, worker));
  return { clients, failed, errors };
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// -- workloads -------------------------------------------------------------------------------

async function roundtrip() {
  const toks = await tokens();
  const { clients, failed, errors } = await connectAll(cfg.clients, toks, false);
  if (failed) throw new Error(`${failed} clients failed to connect: ${errors.join('; ')}`);
  let measuring = false;
  let stopping = false;
  const latencies = [];
  const record = (ms) => {
    if (measuring) latencies.push(ms);
  };
  const running = () => !stopping;
  for (const c of clients) c.echoLoop(cfg.inflight, record, running);
  await sleep(cfg.warmup * 1000);
  measuring = true;
  const meter = cpuMeter();
  await sleep(cfg.duration * 1000);
  measuring = false;
  const usage = meter();
  stopping = true;
  await sleep(200); // let the requests in flight answer before the sockets close
  for (const c of clients) c.close();
  latencies.sort((a, b) => a - b);
  return Object.assign(usage, {
    requests: latencies.length,
    rps: latencies.length / usage.wall_s,
    server_cpu_us_per_request: usage.server_cpu_s === null || !latencies.length ? null : (1e6 * usage.server_cpu_s) / latencies.length,
    p50_ms: percentile(latencies, 50),
    p99_ms: percentile(latencies, 99),
    max_ms: latencies.length ? latencies[latencies.length - 1] : null,
  });
}

async function fanout() {
  const toks = await tokens();
  const t0 = now();
  const { clients, failed, errors } = await connectAll(cfg.clients, toks, true);
  if (failed) throw new Error(`${failed} clients failed to connect: ${errors.join('; ')}`);
  const connectS = (now() - t0) / 1000;
  const n = clients.length;
  const received = new Int32Array(cfg.events);
  const last = new Float64Array(cfg.events);
  const sentAt = new Float64Array(cfg.events);
  let duplicates = 0;
  const seen = clients.map(() => new Uint8Array(cfg.events));
  const mark = (i, k) => {
    if (!(k >= 0 && k < cfg.events)) return;
    if (seen[i][k]) {
      duplicates++;
      return;
    }
    seen[i][k] = 1;
    received[k]++;
    last[k] = now();
  };
  const marker = /"text":"e(\d+)"/;
  clients.forEach((c, i) => {
    c.onPush =
      cfg.kind === 'socketio'
        ? (data) => mark(i, Number(String(data.text).slice(1)))
        : (text) => {
            const m = marker.exec(text);
            if (m) mark(i, Number(m[1]));
          };
  });
  const path = cfg.kind === 'flamigo' ? `/api/rooms/${cfg.room}/messages` : '/broadcast';
  const headers = cfg.kind === 'flamigo' ? { Authorization: `Bearer ${toks[0]}` } : {};
  const meter = cpuMeter();
  for (let k = 0; k < cfg.events; k++) {
    const tick = now();
    sentAt[k] = now();
    await httpJson('POST', path, { text: `e${k}` }, headers);
    const rest = cfg.interval - (now() - tick);
    if (rest > 0) await sleep(rest);
  }
  // Wait until every delivery arrived, or give up after `timeout` seconds.
  const deadline = now() + cfg.timeout * 1000;
  const total = () => received.reduce((a, b) => a + b, 0);
  while (total() < n * cfg.events && now() < deadline) await sleep(20);
  const usage = meter();
  const spans = [];
  for (let k = 0; k < cfg.events; k++) spans.push(received[k] ? last[k] - sentAt[k] : null);
  const complete = spans.filter((s) => s !== null).sort((a, b) => a - b);
  const span = percentile(complete, 50);
  const deliveries = total();
  for (const c of clients) c.close();
  return Object.assign(usage, {
    connections: n,
    connect_s: connectS,
    events: cfg.events,
    delivered: deliveries,
    missing: n * cfg.events - deliveries,
    duplicates,
    span_ms: span,
    span_max_ms: complete.length ? complete[complete.length - 1] : null,
    spans_ms: spans,
    deliveries_per_s: span ? n / (span / 1000) : null,
    server_cpu_us_per_delivery: usage.server_cpu_s === null || !deliveries ? null : (1e6 * usage.server_cpu_s) / deliveries,
  });
}

async function connections() {
  const toks = await tokens();
  // Warm the server's code paths (and allocator) before the baseline.
  const warm = await connectAll(Math.min(10, cfg.clients), toks, false);
  for (const c of warm.clients) c.close();
  await sleep(500);
  const rssBase = serverRssBytes();
  const meter = cpuMeter();
  const cpuStart = serverCpuSeconds();
  // Phase 1: open every WebSocket (the handshake: what every server does).
  const t0 = now();
  const opened = await connectAll(cfg.clients, toks, false, true);
  const connectS = (now() - t0) / 1000;
  const connectCpu = serverCpuSeconds();
  // Phase 2 (flamigo): authenticate every connection (app::websocket:auth).
  const t1 = now();
  let authFailed = 0;
  if (cfg.kind === 'flamigo') {
    let next = 0;
    const worker = async () => {
      while (next < opened.clients.length) {
        const c = opened.clients[next++];
        if (c.closed) continue;
        try {
          await c.request('app::websocket:auth', { token: c.token });
        } catch (err) {
          authFailed++;
        }
      }
    };
    await Promise.all(Array.from({ length: cfg.connectConcurrency }, worker));
  }
  const authS = (now() - t1) / 1000;
  const usage = meter();
  const rssReady = serverRssBytes();
  await sleep(cfg.hold * 1000);
  const rssHeld = serverRssBytes();
  const clients = opened.clients;
  const held = clients.filter((c) => !c.closed).length;
  for (const c of clients) c.close();
  return Object.assign(usage, {
    connections: cfg.clients,
    failed: opened.failed + authFailed,
    errors: opened.errors,
    held,
    connect_s: connectS,
    auth_s: cfg.kind === 'flamigo' ? authS : null, // the peers have no auth step
    ready_s: connectS + (cfg.kind === 'flamigo' ? authS : 0),
    connects_per_s: cfg.clients / connectS,
    server_cpu_us_per_connect: cpuStart === null ? null : (1e6 * (connectCpu - cpuStart)) / cfg.clients,
    rss_base_mib: rssBase / 1048576,
    rss_ready_mib: rssReady / 1048576,
    rss_held_mib: rssHeld / 1048576,
    rss_per_conn_kib: rssBase === null ? null : (rssHeld - rssBase) / 1024 / cfg.clients,
  });
}

// The line scripts/bench.py writes when the broadcast starts (stdin, one line).
function waitForLine() {
  return new Promise((resolve) => {
    let text = '';
    const onData = (chunk) => {
      text += chunk.toString();
      if (text.includes('\n')) {
        process.stdin.off('data', onData);
        process.stdin.pause();
        resolve(text.trim());
      }
    };
    process.stdin.on('data', onData);
    process.stdin.once('end', () => resolve(text.trim()));
    process.stdin.resume(); // paused by the previous line's read
  });
}

// One of several generator processes of conns75000. Timestamps are CLOCK_MONOTONIC
// milliseconds (process.hrtime), the clock of Python's time.monotonic(): the caller
// compares them with the moments it published.
async function crowd() {
  const toks = await tokens();
  const meter = cpuMeter();
  const t0 = now();
  const { clients, failed, errors } = await connectAll(cfg.clients, toks, true);
  const connectS = (now() - t0) / 1000;
  const received = new Int32Array(cfg.events);
  const last = new Float64Array(cfg.events);
  let duplicates = 0;
  const seen = clients.map(() => new Uint8Array(cfg.events));
  const marker = /"text":"e(\d+)"/;
  clients.forEach((c, i) => {
    c.onPush = (text) => {
      const m = marker.exec(text);
      if (!m) return;
      const k = Number(m[1]);
      if (!(k >= 0 && k < cfg.events)) return;
      if (seen[i][k]) {
        duplicates++;
        return;
      }
      seen[i][k] = 1;
      received[k]++;
      last[k] = now();
    };
  });
  const connected = clients.filter((c) => !c.closed).length;
  process.stdout.write(
    JSON.stringify(Object.assign(meter(), { phase: 'ready', connected, failed, errors, connect_s: connectS })) + '\n',
  );
  const command = await waitForLine();
  if (command !== 'go') throw new Error(`expected "go" on stdin, got ${JSON.stringify(command)}`);
  const deadline = now() + cfg.timeout * 1000;
  const total = () => received.reduce((a, b) => a + b, 0);
  while (total() < cfg.clients * cfg.events && now() < deadline) await sleep(20);
  const held = clients.filter((c) => !c.closed).length;
  const delivered = total();
  const report = Object.assign(meter(), {
    phase: 'done',
    source: cfg.source || null,
    connections: cfg.clients,
    connected,
    failed,
    errors,
    held,
    connect_s: connectS,
    events: cfg.events,
    delivered,
    missing: cfg.clients * cfg.events - delivered, // a connection that failed misses every event
    duplicates,
    received: Array.from(received),
    last_ms: Array.from(last, (t, k) => (received[k] ? t : null)),
  });
  if (cfg.linger) {
    // The caller reads the servers' CPU before the connections close (closing costs server CPU too).
    process.stdout.write(JSON.stringify(Object.assign({ mode: cfg.mode, kind: cfg.kind }, report)) + '\n');
    const closing = await waitForLine();
    if (closing !== 'close') throw new Error(`expected "close" on stdin, got ${JSON.stringify(closing)}`);
    for (const c of clients) c.close();
    return { phase: 'closed' };
  }
  for (const c of clients) c.close();
  return report;
}

const modes = { roundtrip, fanout, connections, crowd };

async function main() {
  const run = modes[cfg.mode];
  if (!run) throw new Error(`unknown mode ${cfg.mode}: use one of ${Object.keys(modes).join(', ')}`);
  const result = await run();
  process.stdout.write(JSON.stringify(Object.assign({ mode: cfg.mode, kind: cfg.kind }, result)) + '\n');
}

// The whole run is bounded: a generator that hangs must not outlive its caller's patience.
const watchdog = setTimeout(() => {
  process.stderr.write(`loadgen: gave up after ${cfg.timeout * 4} s\n`);
  process.exit(3);
}, cfg.timeout * 4 * 1000);
watchdog.unref();

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`loadgen: ${err && err.stack ? err.stack : err}\n`);
    process.exit(2);
  },
);
