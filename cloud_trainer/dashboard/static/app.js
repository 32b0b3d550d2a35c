// The fleet dashboard's page: one server-sent-event stream (/events) keeps `state` up to
// date; what changed is drawn at the next animation frame, touching only the cells whose
// text changed (32 cars at 10 Hz must not rebuild the table 320 times a second).
"use strict";
(() => {
  const STALE_S = 5;
  const MAX_POINTS = 600;
  const PROBE_MAX = 5000;
  const SECTIONS = ["cars", "edges", "models", "runs", "registry", "bus"];
  const state = {cars: {}, edges: {}, models: {}, runs: {}, registry: {}, bus: {}, points: []};
  const dirty = new Set();
  let skew = 0; // the server's clock minus this one, in seconds
  let frame = 0;
  let ticked = false; // a second passed: redraw what depends on the clock
  let access = {logged_in: false, open_reads: true, store: true};

  // For the benchmark and the browser tests: when the page showed what. `changes`: a car's
  // state, model or mode cell took a new value (at: when the car said it, shown: when the
  // page showed it; both ms on the wall clock); `ages`: each newly drawn telemetry's age.
  const probe = (window.dashProbe = {changes: [], ages: [], render_ms: [], snapshots: 0, deltas: 0, frames: 0});
  const record = (list, item) => {
    list.push(item);
    if (list.length > 2 * PROBE_MAX) list.splice(0, PROBE_MAX); // now and then, not every push
  };
  const wallMs = () => performance.timeOrigin + performance.now();

  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  };
  const serverNow = () => Date.now() / 1000 + skew;
  const fmt = (x, d = 1) => (x == null ? "–" : Number(x).toFixed(d));
  const pct = (x) => (x == null ? "–" : `${(100 * x).toFixed(0)}%`);
  const ago = (t) => {
    if (t == null) return "–";
    const s = Math.max(0, serverNow() - t);
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${(s / 60).toFixed(0)} min`;
    if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  };
  const when = (t) => (t == null ? "–" : new Date(t * 1000).toLocaleString());
  const set = (cell, text, cls) => {
    if (cell.textContent !== text) cell.textContent = text;
    if (cls !== undefined && cell.className !== cls) cell.className = cls;
  };

  // -- the stream ---------------------------------------------------------------------------
  function merge(msg) {
    if (msg.now) skew = msg.now - Date.now() / 1000;
    for (const sec of SECTIONS) {
      const d = msg[sec];
      if (!d) continue;
      for (const [k, v] of Object.entries(d)) {
        if (v === null) delete state[sec][k];
        else state[sec][k] = v;
      }
      dirty.add(sec);
    }
    if (msg.points && msg.points.length) {
      state.points.push(...msg.points);
      if (state.points.length > MAX_POINTS) state.points.splice(0, state.points.length - MAX_POINTS);
      dirty.add("points");
    }
    schedule();
  }

  function schedule() {
    if (!frame) frame = requestAnimationFrame(render);
  }

  // The live feed: a snapshot, then deltas; each acknowledged once drawn, so the server
  // sends the next only then (a page that cannot keep up gets fresher, fewer updates).
  let socket = null;
  let unacked = false;

  function connect() {
    const ws = (socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/live`));
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "snapshot") {
        for (const sec of SECTIONS) state[sec] = {};
        state.points = [];
        probe.snapshots++;
        set($("#stream"), "live", "pill ok");
      } else {
        probe.deltas++;
      }
      merge(msg);
      unacked = true;
    };
    ws.onclose = async () => {
      set($("#stream"), "reconnecting…", "pill warn");
      await loadAccess();
      if (!access.open_reads && !access.logged_in) location.href = "/login";
      else setTimeout(connect, 1000);
    };
  }

  function ack() {
    if (unacked && socket && socket.readyState === WebSocket.OPEN) {
      socket.send('{"ack":1}');
      unacked = false;
    }
  }

  async function loadAccess() {
    try {
      access = await (await fetch("/api/access")).json();
    } catch (e) {
      return;
    }
    $("#login").hidden = access.logged_in;
    $("#logout").hidden = !access.logged_in;
    set($("#who"), access.logged_in ? "operator" : access.open_reads ? "read-only" : "");
    $("#no-store").hidden = access.store;
  }

  // -- drawing ------------------------------------------------------------------------------
  function render() {
    const t0 = performance.now();
    frame = 0;
    probe.frames++;
    const d = new Set(dirty);
    dirty.clear();
    const tick = ticked;
    ticked = false;
    if (d.has("bus")) renderBus();
    if (d.has("cars") || tick) renderCars(tick);
    if (d.has("edges") || tick) renderEdges();
    if (d.has("registry") || d.has("models")) renderRegistry();
    if (d.has("cars") || d.has("registry") || d.has("models")) renderOnModel();
    if (d.has("runs")) renderRuns();
    if (d.has("points")) renderCharts();
    record(probe.render_ms, performance.now() - t0);
    ack();
  }

  function renderBus() {
    const b = state.bus.broker;
    if (b) {
      const who = b.user ? ` as ${b.user}` : "";
      set($("#broker"), b.connected ? `broker ${b.url}${who}` : `broker ${b.url}: not connected${b.error ? ` (${b.error})` : ""}`, b.connected ? "pill ok" : "pill bad");
    }
    const bad = state.bus.bad;
    $("#bad").hidden = !bad;
    if (bad) {
      set($("#bad"), `${bad.count} bad message${bad.count === 1 ? "" : "s"}`);
      $("#bad").title = `last on ${bad.topic}: ${bad.error}`;
    }
    const st = state.bus.store;
    if (st && st.error) {
      $("#no-store").hidden = false;
      set($("#no-store"), `The store cannot be read: ${st.error}`);
    }
  }

  // rows keyed by id, reused between frames
  function syncRows(tbody, rows, ids, make) {
    for (const id of ids) if (!rows.has(id)) rows.set(id, make(id));
    for (const [id, row] of rows) {
      if (!ids.includes(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    const want = ids.map((id) => rows.get(id).tr);
    const have = Array.from(tbody.children);
    if (want.length !== have.length || want.some((tr, i) => tr !== have[i])) tbody.replaceChildren(...want);
  }

  // a table row of named cells (data-col), the numeric ones right-aligned
  function makeRow(kind, id, names, numeric) {
    const tr = el("tr", {[`data-${kind}`]: id});
    const cells = {};
    for (const name of names) {
      cells[name] = el("td", {"data-col": name, class: numeric.includes(name) ? "num" : ""});
      tr.append(cells[name]);
    }
    cells.id.textContent = id;
    return {tr, cells};
  }

  const carRows = new Map();
  const CAR_CELLS = ["id", "state", "model", "mode", "hz", "exits", "offload", "used", "rtt", "takeovers", "upload", "heard"];
  function makeCarRow(id) {
    const {tr, cells} = makeRow("car", id, CAR_CELLS, ["hz", "offload", "used", "rtt", "takeovers", "heard"]);
    const bar = el("span", {class: "bar"});
    cells.exits.append(bar, el("span", {class: "muted"}));
    return {tr, cells, bar, at: null};
  }

  function carModel(car) {
    const t = car.telemetry || {};
    const s = car.status;
    if (s && (!car.telemetry || (s.at || 0) >= (t.at || 0))) return {version: s.version, at: s.at, status: s};
    return {version: t.model, at: t.at, status: s};
  }

  function carState(car) {
    const t = car.telemetry;
    if (!t) return "unknown";
    if (t.state !== "offline" && serverNow() - car.seen > STALE_S) return "stale";
    return t.state;
  }

  function fillCar(id, row, car) {
    const c = row.cells;
    const t = car.telemetry || {};
    const st = carState(car);
    const m = carModel(car);
    const shown = wallMs();
    const before = {state: c.state.textContent, model: c.model.dataset.version, mode: c.mode.textContent};
    set(c.state, st, `state-${st}`);
    let modelText = m.version || "none";
    let modelCls = "mono";
    const s = m.status;
    if (s && s.state === "fetching" && s.offered && s.offered !== m.version) modelText += ` → ${s.offered} (fetching)`;
    if (s && s.state === "refused") {
      modelText += ` (refused ${s.offered || "an update"})`;
      modelCls += " state-refused";
      c.model.title = s.error || "";
    }
    c.model.dataset.version = m.version || "";
    set(c.model, modelText, modelCls);
    set(c.mode, t.mode || "–");
    set(c.hz, fmt(t.loop_hz));
    fillExits(row, t.exit_rate || {});
    set(c.offload, pct(t.offload_rate));
    set(c.used, pct(t.edge_used_rate));
    const rtt = t.edge_rtt_ms || {};
    set(c.rtt, rtt.p50 == null ? "–" : `${fmt(rtt.p50)} / ${fmt(rtt.p99)} ms`);
    set(c.takeovers, `${t.takeovers ?? 0} / ${t.interventions ?? 0}`);
    set(c.upload, t.last_upload ? `${t.last_upload} (${ago(t.last_upload_at)} ago)` : "–");
    set(c.heard, `${ago(car.seen)} ago`);
    const now = {state: st, model: m.version || "", mode: c.mode.textContent};
    for (const f of ["state", "model", "mode"]) {
      if (before[f] !== now[f]) {
        const at = f === "model" ? m.at : t.at;
        record(probe.changes, {car: id, field: f, value: now[f], at: at ? at * 1000 : null, shown});
      }
    }
    if (t.at && t.at !== row.at) {
      row.at = t.at;
      record(probe.ages, shown - t.at * 1000);
    }
  }

  function fillExits(row, rates) {
    const keys = Object.keys(rates).sort((a, b) => Number(a) - Number(b));
    const shares = keys.map((k) => (100 * rates[k]).toFixed(0));
    const sig = shares.join("/");
    if (row.exitSig === sig) return;
    row.exitSig = sig;
    while (row.bar.children.length < keys.length) row.bar.append(el("span", {class: `e${Math.min(row.bar.children.length, 3)}`}));
    while (row.bar.children.length > keys.length) row.bar.lastChild.remove();
    keys.forEach((k, i) => (row.bar.children[i].style.width = `${shares[i]}%`));
    const last = keys.length - 1;
    row.bar.title = keys.map((k, i) => `${i === last && i > 0 ? "final" : `exit ${k}`} ${shares[i]}%`).join(", ");
    set(row.bar.nextSibling, keys.length ? ` ${sig}` : "–");
  }

  function renderCars(tick) {
    const all = Object.keys(state.cars).sort();
    const online = all.filter((id) => !["offline", "stale", "unknown"].includes(carState(state.cars[id])));
    const ids = $("#hide-offline-cars").checked ? online : all;
    syncRows($("#cars tbody"), carRows, ids, makeCarRow);
    for (const id of ids) {
      const row = carRows.get(id);
      const car = state.cars[id];
      if (row.car === car && !tick) continue; // nothing new for this car
      row.car = car;
      fillCar(id, row, car);
    }
    set($("#cars-count"), all.length ? `${online.length} of ${all.length} online` : "");
    $("#no-cars").hidden = all.length > 0;
  }

  const edgeRows = new Map();
  const EDGE_CELLS = ["id", "health", "model", "requests", "answered", "inflight", "dropped", "errors", "batches", "latency", "tails", "up"];
  function makeEdgeRow(id) {
    return makeRow("edge", id, EDGE_CELLS, ["requests", "answered", "inflight", "dropped", "errors", "latency", "tails", "up"]);
  }

  function edgeHealth(e) {
    const health = (e.health || {}).status || "unknown";
    return health !== "offline" && serverNow() - e.seen > STALE_S ? "stale" : health;
  }

  function renderEdges() {
    const all = Object.keys(state.edges).sort();
    const up = all.filter((id) => edgeHealth(state.edges[id]) === "up");
    const ids = $("#hide-offline-edges").checked ? up : all;
    syncRows($("#edges tbody"), edgeRows, ids, makeEdgeRow);
    for (const id of ids) {
      const e = state.edges[id];
      const h = e.health || {};
      const c = edgeRows.get(id).cells;
      const health = edgeHealth(e);
      set(c.health, health, `state-${health}`);
      set(c.model, h.model || "–", "mono");
      set(c.requests, String(h.requests ?? "–"));
      set(c.answered, String(h.answered ?? "–"));
      const inflight = (h.requests ?? 0) - (h.answered ?? 0) - (h.dropped_expired ?? 0) - (h.errors ?? 0);
      set(c.inflight, String(Math.max(0, inflight)));
      set(c.dropped, String(h.dropped_expired ?? "–"));
      set(c.errors, String(h.errors ?? "–"), h.errors ? "num fail" : "num");
      const sizes = Object.entries(h.batch_sizes || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
      const total = sizes.reduce((n, [, k]) => n + k, 0);
      const mean = total ? sizes.reduce((n, [s, k]) => n + Number(s) * k, 0) / total : null;
      set(c.batches, sizes.length ? `mean ${fmt(mean)}: ${sizes.map(([s, k]) => `${s}×${k}`).join(" ")}` : "–");
      set(c.latency, h.latency_p50_ms == null ? "–" : `${fmt(h.latency_p50_ms)} / ${fmt(h.latency_p99_ms)} ms`);
      set(c.tails, String((h.tails || []).length));
      set(c.up, h.uptime_s == null ? "–" : `${fmt(h.uptime_s / 60, 0)} min`);
    }
    set($("#edges-count"), all.length ? `${up.length} of ${all.length} up` : "");
    $("#no-edges").hidden = all.length > 0;
  }

  // -- registry -----------------------------------------------------------------------------
  function renderRegistry() {
    const reg = state.registry.store;
    const box = $("#registry");
    if (!reg) {
      box.replaceChildren();
      return;
    }
    box.replaceChildren(...Object.entries(reg).map(([target, r]) => registryTarget(target, r)));
  }

  function registryTarget(target, r) {
    const ann = state.models[target];
    const prev = r.history.length ? r.history[r.history.length - 1] : null;
    const rollback = el("button", {type: "button", class: "danger", "data-action": "rollback", "data-target": target, text: prev ? `Roll back to ${prev}` : "Roll back"});
    rollback.disabled = !prev;
    if (!prev) rollback.title = "no earlier current model to go back to";
    const busLine = ann
      ? `announced on the bus: ${ann.version}${ann.rollback ? " (a rollback)" : ""}, ${ago(ann.at)} ago`
      : "nothing announced on the bus";
    const head = el("h3", {}, `${target} model: current `, el("span", {class: "mono", text: r.current || "none"}), " ", rollback);
    const rows = r.versions
      .slice()
      .reverse()
      .map((v) => {
        const current = v.version === r.current;
        const promote = el("button", {type: "button", "data-action": "promote", "data-target": target, "data-version": v.version, text: "Promote"});
        promote.disabled = current;
        const gate = v.gate == null ? "–" : v.gate ? "passed" : "failed";
        return el(
          "tr",
          {class: current ? "current" : "", "data-version": v.version},
          el("td", {class: "mono", text: v.version + (current ? "  (current)" : "")}),
          el("td", {text: when(v.registered)}),
          el("td", {class: "mono", text: v.parent || "–"}),
          el("td", {text: `${v.arch || "–"} ${v.quant || ""}`}),
          el("td", {class: "num", text: v.size == null ? "–" : `${(v.size / 1024).toFixed(0)} KiB`}),
          el("td", {class: "num", text: fmt(v.val_steering_mae, 4)}),
          el("td", {class: v.gate === false ? "fail" : v.gate ? "pass" : "", text: gate}),
          el("td", {class: "num", text: String(v.sessions)}),
          el("td", {}, promote),
        );
      });
    const table = el(
      "table",
      {},
      el("thead", {}, el("tr", {}, ...["version", "registered", "parent", "arch", "size", "val MAE", "gate", "sessions", ""].map((h) => el("th", {text: h})))),
      el("tbody", {}, ...rows),
    );
    return el("div", {class: "target", "data-target": target}, head, el("p", {class: "bus muted", text: busLine}, el("span", {class: "on-model", "data-target": target})), el("div", {class: "scroll"}, table));
  }

  function renderOnModel() {
    const cars = Object.values(state.cars).filter((c) => !["offline", "unknown"].includes(carState(c)));
    for (const span of document.querySelectorAll(".on-model")) {
      const target = span.dataset.target;
      const ann = state.models[target];
      if (target !== "car" || !ann) {
        set(span, "");
        continue;
      }
      const on = cars.filter((c) => carModel(c).version === ann.version).length;
      set(span, `; ${on} of ${cars.length} online cars run it`);
    }
  }

  // -- runs -----------------------------------------------------------------------------------
  function renderRuns() {
    const runs = state.runs.store || [];
    const bus = state.runs.bus;
    const err = $("#run-error");
    err.hidden = !(bus && bus.error);
    if (bus && bus.error) set(err, `The last retraining run failed: ${bus.error}`);
    $("#no-runs").hidden = runs.length > 0 || !!(bus && bus.run);
    const cards = runs.map(runCard);
    if (!runs.length && bus && bus.run) cards.push(busRunCard(bus));
    $("#runs").replaceChildren(...cards);
  }

  function runCard(run) {
    if (run.error) return el("div", {class: "run"}, el("h3", {class: "mono", text: run.run}), el("p", {class: "error", text: run.error}));
    const verdict = run.promoted.length ? `promoted ${run.promoted.join(", ")}` : "nothing promoted";
    const head = el("h3", {}, el("span", {class: "mono", text: run.run}), ` — ${verdict}${run.elapsed_s ? `, ${fmt(run.elapsed_s, 0)} s` : ""}`);
    const data = el(
      "details",
      {},
      el("summary", {text: `trained on ${run.train.length} session${run.train.length === 1 ? "" : "s"}, evaluated on ${run.heldout.length} held out`}),
      el("p", {class: "mono", text: `training: ${run.train.join(", ")}`}),
      el("p", {class: "mono", text: `held out: ${run.heldout.join(", ")}`}),
    );
    const targets = Object.entries(run.targets).map(([t, g]) => runTarget(t, g));
    const plots = el(
      "div",
      {class: "plots"},
      ...(run.plots || []).map((name) => {
        const src = `/store/runs/${encodeURIComponent(run.run)}/${encodeURIComponent(name)}`;
        const a = el("a", {href: src, target: "_blank", rel: "noopener"}, el("img", {src, alt: name, loading: "lazy"}));
        return el("figure", {}, a, el("figcaption", {text: name.replace(/\.png$/, "")}));
      }),
    );
    return el("div", {class: "run", "data-run": run.run}, head, data, ...targets, plots);
  }

  const FIGURES = [
    ["held-out steering MAE", "steering_mae", 4],
    ["latency p50 (ms)", "latency_p50_ms", 2],
    ["sim autonomy", "autonomy", 3],
    ["sim mean |CTE| (m)", "mean_abs_cte_m", 3],
    ["offload rate", "offload_rate", 3],
  ];

  function runTarget(target, g) {
    const checks = new Map(g.checks.map((c) => [c.check, c]));
    const limitOf = {steering_mae: "heldout_steering_mae", latency_p50_ms: "latency_p50_ms", autonomy: "sim_autonomy", mean_abs_cte_m: "sim_mean_abs_cte_m"};
    const rows = FIGURES.filter(([, key]) => (g.candidate && g.candidate[key] != null) || (g.current && g.current[key] != null)).map(([label, key, d]) => {
      const c = checks.get(limitOf[key]);
      return el(
        "tr",
        {},
        el("td", {text: label}),
        el("td", {class: "num", text: fmt(g.candidate && g.candidate[key], d)}),
        el("td", {class: "num", text: fmt(g.current && g.current[key], d)}),
        el("td", {class: "num", text: c ? fmt(c.limit, d) : "–"}),
        el("td", {class: c ? (c.passed ? "pass" : "fail") : "", text: c ? (c.passed ? "yes" : "NO") : ""}),
      );
    });
    const cand = g.candidate ? g.candidate.version : "?";
    const table = el(
      "table",
      {},
      el("thead", {}, el("tr", {}, ...["", `candidate ${cand}`, `current ${g.against || "(none)"}`, "limit", "passed"].map((h) => el("th", {text: h})))),
      el("tbody", {}, ...rows),
    );
    const pair = g.with_car ? withCar(g.with_car) : [];
    return el("div", {"data-target": target}, el("p", {class: `why ${g.passed ? "passed" : "failed"}`, text: `${target}: ${g.why}`}), el("div", {class: "scroll"}, table), ...pair);
  }

  // an edge candidate's checks with the fleet's car: open loop on the frames it would
  // offload, and (with evaluation tracks) the car's drives alone and with this edge
  function withCar(w) {
    const out = [];
    const o = w.offloaded;
    if (o) {
      const mae = o.edge_mae !== undefined ? `: MAE edge ${fmt(o.edge_mae, 4)}, car's own ${fmt(o.car_mae, 4)}` : "";
      out.push(el("p", {class: "muted offloaded", text: `car ${w.car} would offload ${o.frames} of ${o.of} held-out frames${mae}`}));
    }
    if (w.with_edge) {
      out.push(el("p", {class: "muted with-car", text: `with car ${w.car}: autonomy ${fmt(w.with_edge.autonomy, 3)} (alone ${fmt(w.alone.autonomy, 3)}), mean |CTE| ${fmt(w.with_edge.mean_abs_cte_m, 3)} m (alone ${fmt(w.alone.mean_abs_cte_m, 3)} m)`}));
    }
    return out;
  }

  function busRunCard(r) {
    const verdict = r.promoted.length ? `promoted ${r.promoted.join(", ")}` : "nothing promoted";
    return el("div", {class: "run"}, el("h3", {}, el("span", {class: "mono", text: r.run}), ` — ${verdict}`), el("p", {class: "muted", text: "(details need the store)"}));
  }

  // -- charts (uPlot) ---------------------------------------------------------------------------
  const charts = {};
  function chartSpecs() {
    const axis = (label, scale, side) => ({label, scale, side, size: 50, grid: {show: side !== 1}});
    return {
      "chart-cars": {
        title: "cars",
        series: [
          {label: "online", stroke: "#2a7ab0", scale: "n", min: 4, value: (p) => p.online},
          {label: "driving", stroke: "#1f8a4c", scale: "n", min: 4, value: (p) => p.driving},
          {label: "mean loop Hz", stroke: "#c56a3b", scale: "hz", value: (p) => p.loop_hz},
        ],
        axes: [axis("cars", "n", 3), axis("Hz", "hz", 1)],
      },
      "chart-offload": {
        title: "offloading (driving cars, mean)",
        series: [
          {label: "offloaded %", stroke: "#2a7ab0", scale: "pct", min: 10, value: (p) => (p.offload == null ? null : 100 * p.offload)},
          {label: "edge answer used %", stroke: "#1f8a4c", scale: "pct", value: (p) => (p.edge_used == null ? null : 100 * p.edge_used)},
        ],
        axes: [axis("%", "pct", 3)],
      },
      "chart-rtt": {
        title: "edge round trip (cars) and edge latency (nodes)",
        series: [
          {label: "cars' RTT p50 (median)", stroke: "#2a7ab0", scale: "ms", value: (p) => p.rtt_p50},
          {label: "cars' RTT p99 (max)", stroke: "#c53030", scale: "ms", value: (p) => p.rtt_p99},
          {label: "edge latency p50 (mean)", stroke: "#1f8a4c", scale: "ms", value: (p) => meanOf(Object.values(p.edges || {}).map((e) => e.p50))},
        ],
        axes: [axis("ms", "ms", 3)],
      },
    };
  }
  const meanOf = (xs) => {
    const v = xs.filter((x) => x != null);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  };

  function renderCharts() {
    if (!window.uPlot) return;
    for (const [id, spec] of Object.entries(chartSpecs())) {
      const data = [state.points.map((p) => p.t), ...spec.series.map((s) => state.points.map(s.value))];
      if (!charts[id]) {
        const box = document.getElementById(id);
        const opts = {
          title: spec.title,
          width: Math.max(300, box.clientWidth),
          height: 200,
          scales: {x: {time: true}, ...Object.fromEntries(spec.series.map((s) => [s.scale, {range: (u, lo, hi) => [0, Math.max(hi == null ? 1 : hi * 1.1, s.min || 1)]}]))},
          series: [{}, ...spec.series.map((s) => ({label: s.label, stroke: s.stroke, scale: s.scale, width: 1.5}))],
          axes: [{}, ...spec.axes],
        };
        charts[id] = new uPlot(opts, data, box);
      } else {
        charts[id].setData(data);
      }
    }
  }

  window.addEventListener("resize", () => {
    for (const [id, chart] of Object.entries(charts)) chart.setSize({width: Math.max(300, document.getElementById(id).clientWidth), height: 200});
  });

  // -- changes: confirm, send, report -------------------------------------------------------------
  let pending = null;

  function ask(action, target, version) {
    const reg = (state.registry.store || {})[target] || {};
    const prev = reg.history && reg.history.length ? reg.history[reg.history.length - 1] : null;
    const who = target === "car" ? "every car that follows the fleet" : "every edge node";
    if (action === "promote") {
      set($("#confirm-title"), `Promote ${target} model ${version}?`);
      set($("#confirm-text"), `The cloud trainer makes ${version} the current ${target} model (now ${reg.current || "none"}) and announces it: ${who} fetches it and swaps to it.`);
    } else {
      set($("#confirm-title"), `Roll the ${target} model back?`);
      set($("#confirm-text"), `The cloud trainer puts ${prev} back in place of ${reg.current} and announces it as a rollback: ${who} swaps back.`);
    }
    pending = {action, target, version};
    $("#token-row").hidden = access.logged_in;
    $("#confirm-token").value = "";
    set($("#confirm-error"), "");
    $("#confirm-ok").disabled = false;
    set($("#confirm-ok"), "Confirm");
    $("#confirm").showModal();
  }

  async function confirmChange(ev) {
    ev.preventDefault();
    if (!pending) return;
    const body = {...pending};
    if (!access.logged_in) body.token = $("#confirm-token").value;
    $("#confirm-ok").disabled = true;
    set($("#confirm-ok"), "asking the cloud trainer…");
    set($("#confirm-error"), "");
    let resp;
    let out = {};
    try {
      resp = await fetch("/api/change", {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-Edgepilot-Dashboard": "1"},
        body: JSON.stringify(body),
      });
      out = await resp.json().catch(() => ({}));
    } catch (e) {
      out = {error: `the dashboard did not answer: ${e}`};
    }
    $("#confirm-ok").disabled = false;
    set($("#confirm-ok"), "Confirm");
    if (resp && resp.ok) {
      $("#confirm").close();
      pending = null;
      toast(`${out.target} model: ${out.previous || "none"} → ${out.current}${out.pushed ? ", announced to the fleet" : ", NOT announced (the cloud could not publish)"}`);
      return;
    }
    set($("#confirm-error"), `Refused: ${out.error || `HTTP ${resp ? resp.status : "?"}`}`);
  }

  function toast(text, bad = false) {
    const t = el("div", {class: bad ? "bad" : "", text});
    $("#toast").append(t);
    setTimeout(() => t.remove(), 8000);
  }

  // -- wiring ---------------------------------------------------------------------------------------
  $("#registry").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (b && !b.disabled) ask(b.dataset.action, b.dataset.target, b.dataset.version);
  });
  $("#confirm-form").addEventListener("submit", confirmChange);
  for (const [box, sec] of [["#hide-offline-cars", "cars"], ["#hide-offline-edges", "edges"]]) {
    $(box).addEventListener("change", () => {
      dirty.add(sec);
      schedule();
    });
  }
  $("#confirm-cancel").addEventListener("click", () => {
    pending = null;
    $("#confirm").close();
  });
  $("#login").addEventListener("click", () => (location.href = "/login"));
  $("#logout").addEventListener("click", async () => {
    await fetch("/logout", {method: "POST", headers: {"X-Edgepilot-Dashboard": "1"}});
    await loadAccess();
  });
  // ages ("heard 3 s ago") and staleness move with the clock, not only with messages
  setInterval(() => {
    ticked = true;
    schedule();
  }, 1000);

  loadAccess().then(connect);
})();
