// A real demo server (`python -m app`) in a child process, for the client's tests.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { dirname, resolve } from "node:path";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const PYTHON = process.env.PYTHON || "python3";

// Servers still running when this process exits (a crashed test) are killed with it.
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export function freePort() {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => done(port));
    });
  });
}

/** Poll `check` until it returns a truthy value (or throw after `timeout` ms). */
export async function waitFor(check, timeout = 15000, what = "condition") {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeout} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export class DemoServer {
  constructor(port) {
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.wsUrl = `ws://127.0.0.1:${port}/ws`;
    this.log = "";
    this.process = null;
  }

  /** Start `python -m app --port P` and wait for /healthz. */
  static async start(port) {
    const server = new DemoServer(port ?? (await freePort()));
    await server.start();
    return server;
  }

  async start() {
    this.log = "";
    const child = spawn(PYTHON, ["-m", "app", "--port", String(this.port)], {
      cwd: REPO,
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.process = child;
    running.add(child);
    child.once("exit", () => running.delete(child));
    child.stdout.on("data", (d) => { this.log += d; });
    child.stderr.on("data", (d) => { this.log += d; });
    let exited = null;
    child.once("exit", (code) => { exited = code; });
    await waitFor(async () => {
      if (exited !== null) throw new Error(`server exited with ${exited}:\n${this.log}`);
      try {
        return (await fetch(`${this.url}/healthz`)).status === 200;
      } catch {
        return false;
      }
    }, 30000, "server ready");
    return this;
  }

  /** Graceful stop (SIGTERM: connections are closed with 1001), waits for the exit. */
  async stop() {
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGCONT"); // in case a test left it paused
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 15000);
    await exited;
    clearTimeout(timer);
  }

  /** Freeze the process: its sockets stay open but nothing answers (a dead peer). */
  pause() { this.process.kill("SIGSTOP"); }
  resume() { this.process.kill("SIGCONT"); }

  async login(username) {
    const response = await fetch(`${this.url}/api/login`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username }),
    });
    if (response.status !== 200) throw new Error(`login ${username}: ${response.status}`);
    return (await response.json()).token;
  }

  async post(room, token, text) {
    const response = await fetch(`${this.url}/api/rooms/${room}/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ text }),
    });
    return response.status;
  }
}
