// The flamigo_actors live dashboard: polls the inspection endpoint every second
// and renders it. Plain DOM, no dependencies; text goes in through textContent
// only (user names and topics are client-controlled).
"use strict";

(function () {
  const INTERVAL_MS = 1000;
  const ROWS = 100;
  const HISTORY = 120;
  const history = { in: [], out: [] };

  const $ = (id) => document.getElementById(id);

  function text(id, value) {
    const node = $(id);
    if (node) node.textContent = value;
  }

  function duration(seconds) {
    if (seconds == null) return "–";
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
  }

  function userName(user) {
    if (!user) return "–";
    return user.username || user.id || "?";
  }

  function cell(row, value, className) {
    const td = document.createElement("td");
    td.textContent = value == null || value === "" ? "–" : String(value);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function fill(tableId, rows, columns, empty, decorate) {
    const body = $(tableId).tBodies[0];
    const fresh = document.createElement("tbody");
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, empty, "empty");
      td.colSpan = columns;
      fresh.appendChild(tr);
    }
    for (const row of rows) fresh.appendChild(decorate(row));
    body.replaceWith(fresh);
  }

  function spark(points, id, max) {
    const step = 120 / (HISTORY - 1);
    const offset = HISTORY - points.length;
    $(id).setAttribute("points", points.map((v, i) =>
      ((offset + i) * step).toFixed(2) + "," + (29 - (v / max) * 28).toFixed(2)).join(" "));
  }

  // The server keeps 10 minutes of one-second samples (doc.history): one line per chart,
  // time on x (the last 600 s), 0 to the window's maximum on y. Gaps (no value) are skipped.
  const WINDOW_S = 600;

  function chart(figure, samples, now) {
    const key = figure.dataset.key;
    const points = samples.filter((s) => s[key] != null && now - s.t <= WINDOW_S);
    const max = Math.max(0, ...points.map((s) => s[key]));
    const scale = max || 1;
    const line = figure.querySelector("polyline");
    line.setAttribute("points", points.map((s) =>
      (300 - ((now - s.t) / WINDOW_S) * 300).toFixed(1) + "," + (58 - (s[key] / scale) * 56).toFixed(1)).join(" "));
    figure.querySelector("svg").dataset.points = String(points.length);
    const last = points.length ? points[points.length - 1][key] : null;
    const fmt = (v) => Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) < 10 ? 2 : 1);
    figure.querySelector(".last").textContent = last == null ? "–"
      : fmt(last) + figure.dataset.unit + " · max " + fmt(max);
  }

  function render(doc) {
    const stats = doc.stats;
    const rates = stats.rates_per_second || {};
    text("app-name", doc.app ? doc.app + " · pid " + doc.pid : "pid " + doc.pid);
    for (const key of ["connections", "authenticated", "actors", "subscription_entries", "bus_mailbox", "slow_consumers"]) {
      text("stat-" + key, stats[key]);
    }
    text("stat-uptime", duration(stats.uptime));
    text("stat-queued", doc.actor_kinds.reduce((sum, kind) => sum + kind.mailbox, 0));
    for (const key of ["messages_in", "messages_out", "events_published", "events_delivered", "events_refused"]) {
      text("rate-" + key, (rates[key] || 0).toFixed(1) + "/s");
      text("total-" + key, (stats[key] || 0) + " total");
    }
    text("rate-window", "(per second, over the last " + (stats.rate_window || 0).toFixed(1) + " s)");

    history.in.push(rates.messages_in || 0);
    history.out.push(rates.messages_out || 0);
    while (history.in.length > HISTORY) { history.in.shift(); history.out.shift(); }
    const max = Math.max(1, ...history.in, ...history.out);
    spark(history.in, "spark-in", max);
    spark(history.out, "spark-out", max);

    const samples = doc.history || [];
    const now = samples.length ? samples[samples.length - 1].t : doc.time;
    for (const figure of document.querySelectorAll("figure.chart")) chart(figure, samples, now);
    text("history-shown", "(" + samples.length + " samples, one a second)");

    const busiest = doc.domain_busiest || [];
    text("domain-shown", "(" + busiest.length + " with queued messages)");
    fill("domain-busiest", busiest, 3, "no queued messages", (a) => {
      const tr = document.createElement("tr");
      if (a.mailbox > 0) tr.className = a.mailbox >= 10 ? "backlog" : "busy";
      cell(tr, a.kind);
      cell(tr, a.key, "mono");
      cell(tr, a.mailbox, "num mailbox");
      return tr;
    });

    const shown = doc.connections.length;
    text("connections-shown", shown < doc.connections_total
      ? "(deepest mailboxes first: " + shown + " of " + doc.connections_total + ")"
      : "(" + doc.connections_total + ")");
    fill("connections", doc.connections, 10, "no connections", (c) => {
      const tr = document.createElement("tr");
      tr.dataset.id = c.id;
      if (c.mailbox > 0) tr.className = c.mailbox >= 10 ? "backlog" : "busy";
      cell(tr, c.id, "mono");
      cell(tr, userName(c.user), "user");
      cell(tr, c.remote, "mono");
      cell(tr, c.state);
      cell(tr, (c.subscriptions || []).join(", "), "mono");
      cell(tr, c.mailbox, "num mailbox");
      cell(tr, c.outbound, "num");
      cell(tr, c.messages_in, "num");
      cell(tr, c.messages_out, "num");
      cell(tr, duration(c.age), "num");
      return tr;
    });

    fill("actor-kinds", doc.actor_kinds, 4, "no actors", (k) => {
      const tr = document.createElement("tr");
      cell(tr, k.kind);
      cell(tr, k.count, "num");
      cell(tr, k.mailbox, "num");
      cell(tr, k.max_mailbox, "num");
      return tr;
    });

    text("subscriptions-shown", "(" + doc.subscriptions_total + " patterns)");
    fill("subscriptions", doc.subscriptions, 2, "no subscriptions", (s) => {
      const tr = document.createElement("tr");
      cell(tr, s.pattern, "mono");
      cell(tr, (s.subscribers || []).join(", "), "mono");
      return tr;
    });
  }

  function status(message, ok) {
    const node = $("status");
    node.textContent = message;
    node.className = "status " + (ok ? "ok" : "error");
  }

  async function poll() {
    try {
      const response = await fetch("inspect?limit=" + ROWS, { cache: "no-store", credentials: "same-origin" });
      const doc = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(doc.error || "HTTP " + response.status);
      render(doc);
      status("live · updated " + new Date(doc.time * 1000).toLocaleTimeString(), true);
    } catch (err) {
      status("cannot reach the server: " + err.message + " (retrying)", false);
    } finally {
      setTimeout(poll, INTERVAL_MS);
    }
  }

  poll();
})();
