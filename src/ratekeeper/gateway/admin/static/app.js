// ratekeeper's live page: polls GET /admin/live once a second and draws it. Every figure in a
// snapshot is the whole gateway's (all workers), and request counts are cumulative counters
// read from /metrics: the chart plots the difference between successive snapshots.
"use strict";

(() => {
  const POLL_MS = 1000;
  const HISTORY = 301; // snapshots kept: five minutes of one-second points
  const KINDS = ["allowed", "refused", "unenforced"];
  const COLOURS = { allowed: "#2e7d32", refused: "#c62828", unenforced: "#e08a00" };
  const TOKEN_KEY = "ratekeeper.adminToken";

  const $ = (selector, root = document) => root.querySelector(selector);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    history: [], // [{at, totals: Map("rule\tzone" -> {allowed, refused, unenforced})}]
    last: null,
    plot: null,
    timer: null,
  };

  // -- talking to the admin API ------------------------------------------------------------

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = { message: "not a JSON answer" };
    }
    return { status: response.status, data };
  }

  async function poll() {
    clearTimeout(state.timer);
    try {
      const { status, data } = await call("GET", "/admin/live?top=10");
      if (status === 401) {
        askForToken(state.token ? "The token was refused." : "");
        return;
      }
      if (status !== 200) throw new Error(data.message || "status " + status);
      $("#login").hidden = true;
      $("#live").hidden = false;
      show(data);
    } catch (err) {
      $("#status").textContent = "disconnected: " + err.message + " (retrying)";
      $("#status").className = "bad";
    }
    state.timer = setTimeout(poll, POLL_MS);
  }

  function askForToken(error) {
    $("#live").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = error;
    $("#status").textContent = "token needed";
    $("#token").focus();
  }

  async function act(label, method, path, body) {
    const { status, data } = await call(method, path, body);
    const ok = status < 400;
    toast(ok ? label + ": done" : label + ": " + (data.message || "status " + status), !ok);
    if (status === 401) askForToken("The token was refused.");
    poll();
    return ok;
  }

  function toast(text, bad) {
    const el = $("#toast");
    el.textContent = text;
    el.className = bad ? "bad" : "";
    el.hidden = false;
    clearTimeout(el.timer);
    el.timer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  // -- small DOM helpers (text only: labels and reasons are never parsed as HTML) ----------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      tr.append(cell instanceof Node ? cell : el("td", cell));
    }
    return tr;
  }

  function button(text, onClick, className) {
    const b = el("button", text, className);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  function cellOf(...nodes) {
    const td = document.createElement("td");
    td.append(...nodes);
    return td;
  }

  function clock(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString();
  }

  function inSeconds(epoch, now) {
    const s = Math.max(0, Math.round(epoch - now));
    if (s < 120) return "in " + s + " s";
    if (s < 7200) return "in " + Math.round(s / 60) + " min";
    return "at " + new Date(epoch * 1000).toLocaleString();
  }

  function callerName(entry) {
    const label = entry.label || entry.key;
    return label.length > 16 && label.startsWith("k:") ? label.slice(0, 10) + "…" : label;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
    const empty = tbody.closest("section")?.querySelector(".empty");
    if (empty) empty.hidden = rows.length > 0;
  }

  // -- request counts and the chart ----------------------------------------------------------

  function totalsOf(snapshot) {
    const totals = new Map();
    for (const r of snapshot.requests) {
      const id = r.rule + "\t" + r.zone;
      if (!totals.has(id)) totals.set(id, { allowed: 0, refused: 0, unenforced: 0 });
      totals.get(id)[r.kind] += r.count;
    }
    return totals;
  }

  function sumFor(totals, filter) {
    const out = { allowed: 0, refused: 0, unenforced: 0 };
    for (const [id, t] of totals) {
      if (filter && id !== filter) continue;
      for (const k of KINDS) out[k] += t[k];
    }
    return out;
  }

  function record(snapshot) {
    const totals = totalsOf(snapshot);
    const history = state.history;
    const previous = history[history.length - 1];
    if (previous && snapshot.at <= previous.at) return;
    if (previous) {
      const before = sumFor(previous.totals, "");
      const now = sumFor(totals, "");
      // The gateway restarted (single worker, counters from zero): start the chart afresh.
      if (KINDS.some((k) => now[k] < before[k])) history.length = 0;
    }
    history.push({ at: snapshot.at, totals });
    if (history.length > HISTORY) history.shift();
  }

  // Per-interval counts and rates of the selected rule and zone, from successive snapshots.
  function chartSeries() {
    const filter = $("#zone-filter").value;
    const history = state.history;
    const x = [], counts = { allowed: [], refused: [], unenforced: [] };
    const rates = { allowed: [], refused: [], unenforced: [] };
    for (let i = 1; i < history.length; i++) {
      const a = sumFor(history[i - 1].totals, filter), b = sumFor(history[i].totals, filter);
      const dt = history[i].at - history[i - 1].at;
      x.push(history[i].at);
      for (const k of KINDS) {
        counts[k].push(b[k] - a[k]);
        rates[k].push((b[k] - a[k]) / dt);
      }
    }
    const base = history.length ? sumFor(history[0].totals, filter) : null;
    return { filter, x, counts, rates, base };
  }

  function drawChart() {
    const series = chartSeries();
    const data = [series.x, ...KINDS.map((k) => series.rates[k])];
    const box = $("#chart");
    const width = Math.max(300, box.clientWidth);
    if (!state.plot) {
      state.plot = new uPlot(
        {
          width,
          height: 240,
          scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
          series: [
            { label: "time" },
            ...KINDS.map((k) => ({
              label: k + "/s",
              stroke: COLOURS[k],
              width: 2,
              fill: k === "allowed" ? "rgba(46,125,50,0.08)" : undefined,
              dash: k === "unenforced" ? [6, 4] : undefined,
              value: (u, v) => (v == null ? "–" : v.toFixed(1)),
            })),
          ],
          axes: [{}, { label: "requests per second", size: 60 }],
        },
        data,
        box,
      );
      window.addEventListener("resize", () => {
        state.plot.setSize({ width: Math.max(300, box.clientWidth), height: 240 });
      });
    } else {
      state.plot.setData(data);
    }
    window.ratekeeperLive.chart = series;
  }

  function showZones(snapshot) {
    const totals = state.history[state.history.length - 1].totals;
    const previous = state.history[state.history.length - 2];
    const select = $("#zone-filter");
    const known = new Set([...select.options].map((o) => o.value));
    const rows = [];
    for (const [id, t] of [...totals].sort()) {
      const [rule, zone] = id.split("\t");
      if (!known.has(id)) select.append(new Option(rule + " / " + (zone || "(none)"), id));
      let rate = "–";
      if (previous) {
        const before = previous.totals.get(id) || { allowed: 0, refused: 0, unenforced: 0 };
        const dt = snapshot.at - previous.at;
        rate = (KINDS.reduce((s, k) => s + t[k] - before[k], 0) / dt).toFixed(1);
      }
      const tr = row([
        rule,
        zone || "(none)",
        ...KINDS.map((k) => {
          const td = el("td", t[k], "n " + k);
          td.dataset.kind = k;
          return td;
        }),
        el("td", rate, "n"),
      ]);
      tr.dataset.rule = rule;
      tr.dataset.zone = zone;
      rows.push(tr);
    }
    if (!snapshot.metrics) rows.push(row(["metrics are off in this policy", "", "", "", "", ""]));
    replaceRows($("#zones tbody"), rows);
  }

  // -- callers, lockouts, blocks -------------------------------------------------------------

  function keyActions(entry) {
    const td = cellOf();
    const [scope, value] = [entry.key.slice(0, entry.key.indexOf(":")), entry.key.slice(entry.key.indexOf(":") + 1)];
    if (scope === "k") {
      td.append(
        button("reset", () => act("reset " + callerName(entry), "POST", "/admin/keys/" + value + "/reset")),
        " ",
        button("block 1 h", () => act("block " + callerName(entry), "POST", "/admin/blocks",
          { kind: "key", value, for_s: 3600, reason: "blocked from the live page" }), "danger"),
      );
    } else if (scope === "ip") {
      td.append(button("block 1 h", () => act("block " + value, "POST", "/admin/blocks",
        { kind: "address", value, for_s: 3600, reason: "blocked from the live page" }), "danger"));
    }
    return td;
  }

  function showNear(snapshot) {
    const box = $("#near-lists");
    const parts = [];
    for (const [limit, entries] of Object.entries(snapshot.near)) {
      const table = el("table");
      table.dataset.limit = limit;
      const head = row(["caller", "used / limit", "", "resets", ""].map((h) => el("th", h)));
      const body = document.createElement("tbody");
      for (const e of entries) {
        const meter = document.createElement("meter");
        meter.min = 0;
        meter.max = e.limit;
        meter.value = e.used;
        meter.high = e.limit * 0.8;
        meter.optimum = 0;
        const tr = row([
          el("td", callerName(e), "mono"),
          el("td", e.used + " / " + e.limit, "n"),
          cellOf(meter),
          inSeconds(e.reset_at, snapshot.at),
          keyActions(e),
        ]);
        tr.dataset.key = e.key;
        tr.title = e.key;
        body.append(tr);
      }
      table.append(el("thead"), body);
      table.tHead.append(head);
      parts.push(el("h3", limit), table);
    }
    if (parts.length) box.replaceChildren(...parts);
    else box.replaceChildren(el("p", "No caller counted in a window still open.", "muted"));
  }

  function showLockouts(snapshot) {
    replaceRows($("#lockouts tbody"), snapshot.lockouts.map((e) => {
      const [scope, value] = [e.key.slice(0, e.key.indexOf(":")), e.key.slice(e.key.indexOf(":") + 1)];
      const body = scope === "ip" ? { address: value } : scope === "k" ? { hash: value } : null;
      const tr = row([
        el("td", callerName(e), "mono"),
        clock(e.reset_at),
        cellOf(body ? button("lift", () => act("lift lockout", "POST", "/admin/lockouts/lift", body)) : ""),
      ]);
      tr.dataset.key = e.key;
      return tr;
    }));
  }

  function showBlocks(snapshot) {
    replaceRows($("#blocks tbody"), snapshot.blocks.map((b) => {
      const query = "?kind=" + encodeURIComponent(b.kind) + "&value=" + encodeURIComponent(b.value);
      const tr = row([
        b.kind,
        el("td", b.kind === "key" ? b.value.slice(0, 12) + "…" : b.value, "mono"),
        b.until ? clock(b.until) : "until lifted",
        b.reason || "",
        cellOf(button("lift", () => act("lift block", "DELETE", "/admin/blocks" + query))),
      ]);
      tr.dataset.value = b.value;
      return tr;
    }));
  }

  // -- store and policy ----------------------------------------------------------------------

  function fill(dl, pairs) {
    dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", k), v instanceof Node ? v : el("dd", v)]));
  }

  function ms(v) {
    return v == null ? "–" : v < 1 ? (v * 1000).toFixed(0) + " µs" : v.toFixed(2) + " ms";
  }

  function showStore(snapshot) {
    const s = snapshot.store;
    const health = el("dd", s.healthy ? "healthy" : "DOWN: decisions follow on_store_error", s.healthy ? "good" : "bad");
    const l = s.latency;
    const over = l ? (l.over_s == null ? "since start" : "last " + Math.round(l.over_s) + " s") : "";
    fill($("#store dl"), [
      ["kind", s.kind],
      ["store", s.url],
      ["health", health],
      ["on store error", s.on_store_error],
      ["decision latency", l ? "p50 " + ms(l.p50_ms) + " · p99 " + ms(l.p99_ms) + " (" + over + ", " + l.decisions + " calls)" : "–"],
      ["errors", s.errors ?? "–"],
      ["outages", s.outages ?? "–"],
    ]);
  }

  function showPolicy(snapshot) {
    const p = snapshot.policy;
    fill($("#policy dl"), [
      ["file", p.source],
      ["loaded", p.loaded_at ? clock(p.loaded_at) + " (generation " + p.generation + ")" : "at start"],
      ["unknown keys", p.unknown_keys ?? "–"],
      ["plans", (p.plans || []).join(", ") || "none"],
    ]);
    const rates = p.limits || {};
    replaceRows($("#policy tbody"), p.rules.map((r) => row([
      r.name + (r.exempt ? " (exempt)" : "") + (r.shadow ? " (shadow)" : ""),
      el("td", (r.methods ? r.methods.join(",") + " " : "") + r.routes.join(" "), "mono"),
      r.limits.map((name) => name + " " + (rates[name] || []).join(" + ")).join("; ") || "none",
    ])));
  }

  function show(snapshot) {
    state.last = snapshot;
    record(snapshot);
    $("#status").className = "";
    const missing = snapshot.unavailable || [];
    $("#unavailable").hidden = missing.length === 0;
    $("#unavailable").textContent = missing.length ? "Unavailable while the store is down: " + missing.join("; ") : "";
    const workers = snapshot.workers ?? "?";
    $("#status").textContent = workers + " worker" + (workers === 1 ? "" : "s") +
      " · " + (snapshot.store.healthy ? "store healthy" : "STORE DOWN") + " · " + clock(snapshot.at);
    drawChart();
    showZones(snapshot);
    showNear(snapshot);
    showLockouts(snapshot);
    showBlocks(snapshot);
    showStore(snapshot);
    showPolicy(snapshot);
  }

  // -- start ---------------------------------------------------------------------------------

  window.ratekeeperLive = { state, chart: null };
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    poll();
  });
  $("#block-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const body = { kind: form.kind.value, value: form.value.value.trim(), reason: form.reason.value };
    if (form.for_s.value) body.for_s = Number(form.for_s.value);
    if (await act("block " + body.value, "POST", "/admin/blocks", body)) form.reset();
  });
  $("#zone-filter").addEventListener("change", drawChart);
  poll();
})();
