// The car's web controller: camera view, HUD, and the driver's inputs (keyboard, touch
// pad, gamepad) sent over one WebSocket. No library: the car serves this file itself.
// The command is sent on every change and repeated at the car's send_hz: the repeats are
// the deadman's heartbeat, so a page that goes silent stops the car.
"use strict";

const $ = (id) => document.getElementById(id);
const STEER_RATE = 4.0;     // keyboard: full lock in 0.25 s (as the car's own window)
const THROTTLE_RATE = 2.5;
const MODES = ["user", "local_angle", "local"];

const st = {
  ws: null, hello: null, role: "-", hud: {}, backoff: 500,
  keys: new Set(), kb: { s: 0, t: 0 }, touch: { on: false, s: 0, t: 0 }, pad: { on: false, s: 0, t: 0 },
  padButtons: [], cmd: { s: 0, t: 0 }, sentCmd: null, lastSend: 0, lastUpdate: performance.now(),
  frames: [], ping: null,
};
// what tests and the benchmark read (counters only: nothing here drives the car)
const probe = window.edgepilot = {
  connected: false, role: "-", framesReceived: 0, lastFrameAgeMs: null, viewFps: 0, ages: [], arrivalAges: [],
  lastKeyEpochMs: null, sent: 0, lastSendEpochMs: null, errors: [], deadman: null, hud: {}, rttMs: null,
};

function clientId() {
  let id = sessionStorage.getItem("edgepilot-client");
  if (!id) {
    id = Math.random().toString(36).slice(2) + Date.now().toString(36);
    sessionStorage.setItem("edgepilot-client", id);
  }
  return id;
}

// -- the socket ----------------------------------------------------------------------
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws?client=${clientId()}`);
  ws.binaryType = "arraybuffer";
  st.ws = ws;
  ws.onopen = () => {
    st.backoff = 500;
    setConn(true);
    if (!$("video").checked) send({ type: "video", on: false });
  };
  ws.onclose = () => {
    setConn(false);
    st.ws = null;
    setTimeout(connect, st.backoff);
    st.backoff = Math.min(st.backoff * 2, 4000);
  };
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onFrame(ev.data));
}

function send(obj) {
  if (st.ws && st.ws.readyState === WebSocket.OPEN) {
    st.ws.send(JSON.stringify(obj));
    probe.sent++;
    probe.lastSendEpochMs = Date.now();
    return true;
  }
  return false;
}

function setConn(ok) {
  probe.connected = ok;
  $("conn").textContent = ok ? "connected" : "disconnected: retrying";
  $("conn").className = "pill " + (ok ? "ok" : "bad");
}

function onText(m) {
  if (m.type === "hello") {
    st.hello = m;
    $("car").textContent = m.car_id;
    $("erase-s").textContent = m.delete_seconds;
    setRole(m.role);
  } else if (m.type === "state") {
    onState(m);
  } else if (m.type === "role") {
    setRole(m.role);
  } else if (m.type === "deadman") {
    probe.deadman = m;
    const why = m.reason === "lost" ? "the driving page closed" : `no command for ${Math.round(m.silent_ms)} ms`;
    $("deadman-text").textContent = `The car went to neutral at ${new Date(m.at).toLocaleTimeString()}: ${why}. Let go of the controls to drive again.`;
    $("banner-deadman").hidden = false;
    letGo();  // a key still held is not a new command: press it again to drive
  } else if (m.type === "error") {
    probe.errors.push(m.error);
    if (probe.errors.length > 20) probe.errors.shift();
    $("banner-error").textContent = m.error;
    $("banner-error").hidden = false;
    clearTimeout(st.errTimer);
    st.errTimer = setTimeout(() => { $("banner-error").hidden = true; }, 4000);
  } else if (m.type === "pong") {
    probe.rttMs = performance.now() - m.t;
    $("rtt").textContent = probe.rttMs.toFixed(0);
  }
}

function setRole(role) {
  st.role = probe.role = role;
  $("role").textContent = role;
  $("banner-viewer").hidden = role !== "viewer";
}

const fmt = (v, d = 2) => (v === null || v === undefined ? "-" : typeof v === "number" ? v.toFixed(d) : String(v));

function onState(m) {
  st.hud = probe.hud = m;
  if (m.role !== st.role) setRole(m.role);
  $("h-mode").textContent = m.mode || "-";
  $("h-loop").textContent = fmt(m.loop_hz, 1);
  $("h-steering").textContent = fmt(m.steering);
  $("h-throttle").textContent = fmt(m.throttle);
  $("h-exit").textContent = fmt(m.exit, 0);
  $("h-confidence").textContent = fmt(m.confidence);
  $("h-offloaded").textContent = m.offloaded ? (m.edge_used ? "yes (edge drove)" : "yes (late)") : "no";
  $("h-edge").textContent = fmt(m.edge_rtt_ms, 1);
  $("h-model").textContent = m.model_version || "none";
  $("h-rec").textContent = m.recording ? "REC" : "off";
  $("h-records").textContent = fmt(m.records, 0);
  for (const b of document.querySelectorAll("#modes button")) b.classList.toggle("active", b.dataset.mode === m.mode);
  $("record").classList.toggle("rec-on", !!m.recording);
  $("record").textContent = m.recording ? "Stop recording" : "Record";
  $("banner-estop").hidden = !m.estop;
  $("constant").checked = !!m.constant_throttle;
  if (document.activeElement !== $("scale")) {
    $("scale").value = Math.round((m.throttle_scale ?? 1) * 100);
    $("scale-v").textContent = $("scale").value;
  }
}

// -- the camera view ------------------------------------------------------------------------
function onFrame(buf) {
  const dv = new DataView(buf);
  const sentMs = dv.getFloat64(0, true);
  probe.arrivalAges.push(Date.now() - sentMs);  // loop frame -> here: the transport's share
  if (probe.arrivalAges.length > 600) probe.arrivalAges.shift();
  const blob = new Blob([buf.slice(12)], { type: "image/jpeg" });
  createImageBitmap(blob).then((bmp) => {
    const c = $("cam");
    if (c.width !== bmp.width) { c.width = bmp.width; c.height = bmp.height; }
    c.getContext("2d").drawImage(bmp, 0, 0);
    bmp.close();
    const now = Date.now();
    probe.framesReceived++;
    probe.lastFrameAgeMs = now - sentMs;
    probe.ages.push(probe.lastFrameAgeMs);
    if (probe.ages.length > 600) probe.ages.shift();
    st.frames.push(now);
    while (st.frames.length && now - st.frames[0] > 2000) st.frames.shift();
    probe.viewFps = st.frames.length > 1 ? (st.frames.length - 1) * 1000 / (now - st.frames[0]) : 0;
    $("viewfps").textContent = probe.viewFps.toFixed(0);
  }).catch(() => {});
}

// -- inputs -> one command ---------------------------------------------------------------------------
function slew(v, target, step) {
  if (target === 0) step *= 2;  // released: recentre quickly
  return v < target ? Math.min(target, v + step) : Math.max(target, v - step);
}

function update(now) {
  const dt = Math.min(0.1, Math.max((now - st.lastUpdate) / 1000, 1 / 60));
  st.lastUpdate = now;
  const k = st.keys;
  const steerTo = (k.has("right") ? 1 : 0) - (k.has("left") ? 1 : 0);
  const thrTo = (k.has("up") ? 1 : 0) - (k.has("down") ? 1 : 0);
  st.kb.s = slew(st.kb.s, steerTo, STEER_RATE * dt);
  st.kb.t = slew(st.kb.t, thrTo, THROTTLE_RATE * dt);
  pollGamepad();
  const src = st.pad.on ? st.pad : st.touch.on ? st.touch : st.kb;
  st.cmd = { s: clamp(src.s), t: clamp(src.t) };
}

const clamp = (v) => Math.max(-1, Math.min(1, Number.isFinite(v) ? v : 0));
const round3 = (v) => Math.round(v * 1000) / 1000;

function sendCommand(force) {
  const now = performance.now();
  const c = { s: round3(st.cmd.s), t: round3(st.cmd.t) };
  const changed = !st.sentCmd || c.s !== st.sentCmd.s || c.t !== st.sentCmd.t;
  const due = now - st.lastSend >= 1000 / ((st.hello && st.hello.send_hz) || 20);
  if (st.role !== "driver" || !(force || due || (changed && now - st.lastSend >= 16))) return;
  if (send({ type: "drive", steering: c.s, throttle: c.t })) {
    st.sentCmd = c;
    st.lastSend = now;
  }
}

function frameLoop(now) {
  update(now);
  sendCommand(false);
  requestAnimationFrame(frameLoop);
}
// the repeat must not depend on animation frames: a hidden tab gets none
setInterval(() => { update(performance.now()); sendCommand(false); }, 25);
setInterval(() => send({ type: "ping", t: performance.now() }), 1000);

const KEYMAP = { w: "up", arrowup: "up", s: "down", arrowdown: "down", a: "left", arrowleft: "left", d: "right", arrowright: "right" };

window.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT" && ev.target.type !== "checkbox") return;
  const key = ev.key.toLowerCase();
  if (KEYMAP[key]) {
    ev.preventDefault();
    if (ev.repeat) return;
    probe.lastKeyEpochMs = performance.timeOrigin + ev.timeStamp;
    st.keys.add(KEYMAP[key]);
    update(performance.now());
    sendCommand(true);
    return;
  }
  if (ev.repeat) return;
  if (key === " ") { ev.preventDefault(); estop(); }
  else if (key === "r") send({ type: "record", on: !st.hud.recording });
  else if (key === "m") cycleMode();
  else if (key === "backspace" || key === "delete") { ev.preventDefault(); send({ type: "erase" }); }
});
window.addEventListener("keyup", (ev) => {
  const k = KEYMAP[ev.key.toLowerCase()];
  if (k) { st.keys.delete(k); update(performance.now()); sendCommand(true); }
});

function letGo() {  // the page loses the user's hands: nothing stays held
  st.keys.clear();
  st.touch = { on: false, s: 0, t: 0 };
  moveKnob(0, 0);
  st.kb = { s: 0, t: 0 };
  update(performance.now());
  sendCommand(true);
}
window.addEventListener("blur", letGo);
document.addEventListener("visibilitychange", () => { if (document.hidden) letGo(); });
window.addEventListener("pagehide", () => { if (st.ws) st.ws.close(); });

// touch pad (pointer events: a finger, a pen, or a mouse)
const pad = $("pad");
function padPoint(ev) {
  const r = pad.getBoundingClientRect();
  let x = (ev.clientX - r.left) / (r.width / 2) - 1;
  let y = (ev.clientY - r.top) / (r.height / 2) - 1;
  const n = Math.hypot(x, y);
  if (n > 1) { x /= n; y /= n; }
  st.touch = { on: true, s: x, t: -y };
  moveKnob(x, y);
  update(performance.now());
  sendCommand(false);
}
function moveKnob(x, y) {
  $("knob").style.transform = `translate(${x * 130}%, ${y * 130}%)`;
}
pad.addEventListener("pointerdown", (ev) => { pad.setPointerCapture(ev.pointerId); padPoint(ev); });
pad.addEventListener("pointermove", (ev) => { if (st.touch.on) padPoint(ev); });
for (const t of ["pointerup", "pointercancel", "lostpointercapture"]) pad.addEventListener(t, letGo);

// gamepad (the browser's Gamepad API, the car profile's [gamepad] mapping)
function pollGamepad() {
  const map = st.hello && st.hello.gamepad;
  const pads = navigator.getGamepads ? navigator.getGamepads() : [];
  const gp = map && Array.from(pads || []).find((p) => p && p.connected);
  if (!gp) { st.pad.on = false; return; }
  const axis = (i) => (i < gp.axes.length ? gp.axes[i] : 0);
  const dz = (v) => (Math.abs(v) < map.deadzone ? 0 : clamp(v));
  const s = dz(axis(map.steering_axis));
  const t = dz(map.invert_throttle ? -axis(map.throttle_axis) : axis(map.throttle_axis));
  st.pad = { on: s !== 0 || t !== 0, s, t };
  const pressed = gp.buttons.map((b) => b.pressed);
  const edge = (i) => pressed[i] && !st.padButtons[i];
  if (edge(map.record_button)) send({ type: "record", on: !st.hud.recording });
  if (edge(map.mode_button)) cycleMode();
  if (edge(map.estop_button)) estop();
  if (edge(map.delete_button)) send({ type: "erase" });
  st.padButtons = pressed;
}

// -- buttons -------------------------------------------------------------------------------------------
function cycleMode() {
  const auto = st.hello && st.hello.autopilot;
  const i = MODES.indexOf(st.hud.mode || "user");
  send({ type: "mode", mode: auto ? MODES[(i + 1) % MODES.length] : "user" });
}
function estop() { send({ type: "estop", on: true }); }

for (const b of document.querySelectorAll("#modes button")) b.onclick = () => send({ type: "mode", mode: b.dataset.mode });
$("record").onclick = () => send({ type: "record", on: !st.hud.recording });
$("erase").onclick = () => send({ type: "erase" });
$("estop").onclick = estop;
$("release").onclick = () => send({ type: "estop", on: false });
$("takeover").onclick = () => send({ type: "takeover" });
$("deadman-ok").onclick = () => { $("banner-deadman").hidden = true; };
$("scale").oninput = () => {
  $("scale-v").textContent = $("scale").value;
  send({ type: "throttle_scale", value: Number($("scale").value) / 100 });
};
$("constant").onchange = () => send({ type: "constant_throttle", on: $("constant").checked });
$("video").onchange = () => send({ type: "video", on: $("video").checked });  // saves a phone's data

// a clicked button keeps no focus: Space is the e-stop key, not "press the last button"
document.addEventListener("click", (ev) => { if (ev.target.tagName === "BUTTON") ev.target.blur(); });

connect();
requestAnimationFrame(frameLoop);
