// cloudclear view: the page. Hand-written, no third-party code, works offline.
// It reads the token from its own URL and sends it with every API call (query and header).
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (sel) => document.querySelector(sel);

const app = {
  state: null,        // /api/state
  place: null,        // selected place
  date: null,         // selected date (YYYY-MM-DD)
  outputId: null,     // shown output id
  bands: "rgb",
  showStatus: false,
  compare: false,
  swipe: 50,
  view: null,         // {crs, cx, cy, scale (CRS units per screen px), minScale, maxScale}
  infos: new Map(),   // "kind:id" -> /api/info
  runTimer: null,
  refInfo: null,      // /api/info of the item the view was fitted to
  version: 0,         // bumped after a run: an output replaced under the same id is fetched anew
};

function apiUrl(path, params) {
  const q = new URLSearchParams(params || {});
  q.set("token", TOKEN);
  return `${path}?${q.toString()}`;
}

async function api(path, params, init) {
  const opts = Object.assign({ headers: {} }, init || {});
  opts.headers["X-Cloudclear-Token"] = TOKEN;
  const resp = await fetch(apiUrl(path, params), opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const err = new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function message(text) { $("#message").textContent = text || ""; }

// ---------------------------------------------------------------------------------------- state

function scenesOfPlace() {
  return app.state.scenes.filter((s) => s.place === app.place);
}
function sceneOfDate() {
  return scenesOfPlace().find((s) => s.date === app.date) || null;
}
function outputsOfDate() {
  return app.state.outputs.filter((o) => o.date === app.date && (!o.place || o.place === app.place));
}
function outputDates() {
  return new Set(app.state.outputs.filter((o) => !o.place || o.place === app.place).map((o) => o.date));
}

async function loadState() {
  app.state = await api("/api/state");
  const places = app.state.places && app.state.places.length
    ? app.state.places : [...new Set(app.state.scenes.map((s) => s.place))];
  const sel = $("#place");
  sel.innerHTML = "";
  for (const p of places) sel.add(new Option(p, p));
  if (!places.includes(app.place)) app.place = places[0] || null;
  sel.value = app.place || "";
  const methods = $("#run-method");
  const keep = methods.value;
  methods.innerHTML = "";
  for (const m of app.state.methods || []) methods.add(new Option(m, m));
  if (keep && (app.state.methods || []).includes(keep)) methods.value = keep;
}

function defaultDate() {
  const scenes = scenesOfPlace();
  if (!scenes.length) return null;
  const withOut = outputDates();
  const first = scenes.find((s) => withOut.has(s.date));
  return (first || scenes[0]).date;
}

// ---------------------------------------------------------------------------------------- map

function drawMap() {
  const svg = $("#map");
  svg.innerHTML = "";
  const byPlace = new Map();
  for (const s of app.state.scenes) {
    if (s.footprint && s.footprint.length && !byPlace.has(s.place)) byPlace.set(s.place, s.footprint);
  }
  if (!byPlace.size) return;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const ring of byPlace.values()) for (const [lon, lat] of ring) {
    x0 = Math.min(x0, lon); x1 = Math.max(x1, lon); y0 = Math.min(y0, lat); y1 = Math.max(y1, lat);
  }
  const k = Math.cos(((y0 + y1) / 2) * Math.PI / 180) || 1;
  const w = Math.max((x1 - x0) * k, 1e-6), h = Math.max(y1 - y0, 1e-6);
  const pad = 14, W = 260, H = 180;
  const s = Math.min((W - 2 * pad) / w, (H - 2 * pad) / h);
  const ox = (W - w * s) / 2, oy = (H - h * s) / 2;
  const px = (lon) => ox + (lon - x0) * k * s;
  const py = (lat) => oy + (y1 - lat) * s;
  const NS = "http://www.w3.org/2000/svg";
  for (const [place, ring] of byPlace) {
    const poly = document.createElementNS(NS, "polygon");
    poly.setAttribute("points", ring.map(([lon, lat]) => `${px(lon).toFixed(1)},${py(lat).toFixed(1)}`).join(" "));
    poly.setAttribute("class", place === app.place ? "fp selected" : "fp");
    poly.dataset.place = place;
    const title = document.createElementNS(NS, "title");
    title.textContent = place;
    poly.appendChild(title);
    poly.addEventListener("click", () => selectPlace(place));
    svg.appendChild(poly);
    const cx = ring.reduce((a, p) => a + px(p[0]), 0) / ring.length;
    const cy = ring.reduce((a, p) => a + py(p[1]), 0) / ring.length;
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", cx.toFixed(1)); label.setAttribute("y", cy.toFixed(1));
    label.setAttribute("text-anchor", "middle");
    label.textContent = place;
    svg.appendChild(label);
  }
}

// ---------------------------------------------------------------------------------------- timeline

function drawTimeline() {
  const tl = $("#timeline");
  tl.innerHTML = "";
  const scenes = scenesOfPlace();
  const withOut = outputDates();
  for (const s of scenes) {
    const bar = document.createElement("div");
    bar.className = "date-bar";
    if (s.date === app.date) bar.classList.add("selected");
    if (withOut.has(s.date)) bar.classList.add("has-output");
    bar.dataset.date = s.date;
    const pct = s.cloud_pct == null ? null : Math.max(0, Math.min(100, s.cloud_pct));
    bar.title = `${s.date}: ${pct == null ? "cloud cover unknown" : pct.toFixed(1) + " % cloud"}`
      + (withOut.has(s.date) ? " (has an output)" : "");
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.height = `${pct == null ? 2 : Math.max(2, pct)}%`;
    bar.appendChild(fill);
    bar.addEventListener("click", () => selectDate(s.date));
    tl.appendChild(bar);
  }
  const axis = $("#timeline-axis");
  axis.innerHTML = "";
  if (scenes.length) {
    for (const t of [scenes[0].date, scenes[scenes.length - 1].date]) {
      const span = document.createElement("span");
      span.textContent = t;
      axis.appendChild(span);
    }
  }
}

// ---------------------------------------------------------------------------------------- panels

class Layer {
  // One image of a panel: kind + id, positioned in the shared view by its own bbox.
  constructor(parent, kind, viewEl) {
    this.kind = kind;
    this.viewEl = viewEl;      // the panel's view: positions are relative to it (parent may be a clip)
    this.id = null;
    this.info = null;
    this.bbox = null;          // bbox of the image currently shown
    this.img = document.createElement("img");
    this.img.alt = kind;
    this.img.hidden = true;
    this.img.draggable = false;
    parent.appendChild(this.img);
    this.seq = 0;
  }
  set(id, info) {
    if (id !== this.id) { this.bbox = null; this.img.hidden = true; this.img.removeAttribute("src"); }
    this.id = id;
    this.info = info;
  }
  place(view, rect) {
    if (!this.bbox || !view) return;
    const [l, b, r, t] = this.bbox;
    const left = rect.width / 2 + (l - view.cx) / view.scale;
    const top = rect.height / 2 + (view.cy - t) / view.scale;
    Object.assign(this.img.style, {
      left: `${left}px`, top: `${top}px`,
      width: `${(r - l) / view.scale}px`, height: `${(t - b) / view.scale}px`,
    });
  }
  load(view, rect, bands) {
    if (!this.id || !this.info || !view || rect.width < 2 || rect.height < 2) {
      this.img.hidden = true;
      return;
    }
    const hw = rect.width / 2 * view.scale, hh = rect.height / 2 * view.scale;
    const [il, ib, ir, it] = this.info.bounds;
    const l = Math.max(il, view.cx - hw), r = Math.min(ir, view.cx + hw);
    const b = Math.max(ib, view.cy - hh), t = Math.min(it, view.cy + hh);
    if (r <= l || t <= b) { this.img.hidden = true; return; }
    const w = Math.max(1, Math.min(2048, Math.round((r - l) / view.scale)));
    const h = Math.max(1, Math.min(2048, Math.round((t - b) / view.scale)));
    const params = { kind: this.kind, id: this.id, bbox: [l, b, r, t].join(","), width: w, height: h };
    if (this.kind === "scene" || this.kind === "output") params.bands = bands;
    if (app.version && (this.kind === "output" || this.kind === "status")) params.v = app.version;
    const url = apiUrl("/api/image", params);
    if (url === this.img.getAttribute("src")) return;
    const seq = ++this.seq;
    const pre = new Image();
    pre.onload = () => {
      if (seq !== this.seq) return;
      this.img.src = url;
      this.bbox = [l, b, r, t];
      this.img.hidden = false;
      this.place(app.view, this.viewEl.getBoundingClientRect());
    };
    pre.onerror = () => { if (seq === this.seq) message(`could not render ${this.kind} ${this.id}`); };
    pre.src = url;
  }
}

class Panel {
  constructor(el, kinds) {
    this.el = el;
    this.viewEl = el.querySelector(".view");
    this.layers = {};
    this.empty = document.createElement("div");
    this.empty.className = "empty";
    for (const k of kinds) {
      if (k === "swipe") {
        this.clip = document.createElement("div");
        this.clip.className = "swipe-clip";
        this.clip.id = "swipe-overlay";
        this.viewEl.appendChild(this.clip);
        this.layers.output = new Layer(this.clip, "output", this.viewEl);
      } else {
        this.layers[k] = new Layer(this.viewEl, k, this.viewEl);
      }
    }
    this.viewEl.appendChild(this.empty);
    attachNavigation(this.viewEl);
  }
  rect() { return this.viewEl.getBoundingClientRect(); }
  visible() { return this.viewEl.offsetParent !== null; }
  setEmpty(text) { this.empty.textContent = text || ""; this.empty.hidden = !text; }
  place() {
    const rect = this.rect();
    if (this.clip) this.clip.style.width = `${app.swipe}%`;
    // The output inside the clip is placed relative to the panel, which the clip shares at left 0.
    for (const layer of Object.values(this.layers)) layer.place(app.view, rect);
  }
  load() {
    if (!this.visible()) return;
    const rect = this.rect();
    for (const layer of Object.values(this.layers)) {
      if (layer.kind === "status" && !app.showStatus) { layer.img.hidden = true; continue; }
      layer.load(app.view, rect, app.bands);
    }
  }
}

const panels = {};

function allPanels() { return Object.values(panels); }

function placeAll() { for (const p of allPanels()) p.place(); }

let loadTimer = null;
function scheduleLoad(delay) {
  clearTimeout(loadTimer);
  loadTimer = setTimeout(() => { for (const p of allPanels()) p.load(); }, delay == null ? 120 : delay);
}

async function info(kind, id) {
  const key = `${kind}:${id}`;
  if (!app.infos.has(key)) app.infos.set(key, await api("/api/info", { kind, id }));
  return app.infos.get(key);
}

function fitView(inf) {
  const rect = panels.input.visible() ? panels.input.rect() : panels.compare.rect();
  const [l, b, r, t] = inf.bounds;
  const res = Math.min((r - l) / inf.width, (t - b) / inf.height);
  const scale = Math.max((r - l) / Math.max(rect.width, 1), (t - b) / Math.max(rect.height, 1)) * 1.02;
  app.view = { crs: inf.crs, cx: (l + r) / 2, cy: (b + t) / 2, scale, minScale: res / 8, maxScale: scale * 4 };
}

async function showDate() {
  const scene = sceneOfDate();
  const outs = outputsOfDate();
  const osel = $("#output-select");
  osel.innerHTML = "";
  for (const o of outs) osel.add(new Option(`${o.method || "?"}${o.hidden ? " (hidden)" : ""}: ${o.name}`, o.id));
  if (!outs.some((o) => o.id === app.outputId)) app.outputId = outs.length ? outs[outs.length - 1].id : null;
  osel.value = app.outputId || "";
  osel.disabled = !outs.length;
  $("#selected-date").textContent = app.date ? `${app.place} · ${app.date}` : "no scenes";
  $("#run-date").value = app.date || "";
  try {
    const sceneInfo = scene ? await info("scene", scene.id) : null;
    const maskInfo = scene && scene.has_mask ? await info("mask", scene.id) : null;
    const out = outs.find((o) => o.id === app.outputId) || null;
    const outInfo = out ? await info("output", out.id) : null;
    const statusInfo = out && out.has_status ? await info("status", out.id) : null;
    const ref = sceneInfo || outInfo;
    app.refInfo = ref;
    if (ref && (!app.view || app.view.crs !== ref.crs)) fitView(ref);
    panels.input.layers.scene.set(scene && scene.id, sceneInfo);
    panels.mask.layers.mask.set(maskInfo ? scene.id : null, maskInfo);
    panels.output.layers.output.set(out && out.id, outInfo);
    panels.output.layers.status.set(statusInfo ? out.id : null, statusInfo);
    panels.compare.layers.scene.set(scene && scene.id, sceneInfo);
    panels.compare.layers.output.set(out && out.id, outInfo);
    panels.input.setEmpty(scene ? "" : "no S2 scene for this date");
    panels.mask.setEmpty(maskInfo ? "" : "no mask for this date");
    panels.output.setEmpty(out ? "" : "no reconstruction for this date: run one below");
    panels.compare.setEmpty(out ? "" : "no reconstruction to compare");
    message("");
  } catch (e) {
    message(e.message);
  }
  placeAll();
  scheduleLoad(0);
  showScores();
}

async function showScores() {
  const box = $("#scores");
  const id = app.outputId;
  if (!id) { box.textContent = "no output for this date"; return; }
  const out = app.state.outputs.find((o) => o.id === id);
  if (out && out.has_reference === false) { box.textContent = "no reference"; return; }
  box.textContent = "…";
  try {
    const s = await api("/api/scores", { id });
    if (id !== app.outputId) return;
    const fmt = (v, d) => (typeof v === "number" ? v.toFixed(d) : String(v));
    const rows = [["PSNR", fmt(s.psnr, 2) + " dB"], ["SSIM", fmt(s.ssim, 4)], ["SAM", fmt(s.sam, 2) + "°"],
      ["RMSE", fmt(s.rmse, 4)], ["MAE", fmt(s.mae, 4)], ["pixels", s.pixels], ["reference", s.reference]];
    box.innerHTML = "";
    const table = document.createElement("table");
    for (const [k, v] of rows) {
      const tr = table.insertRow();
      tr.insertCell().textContent = k;
      tr.insertCell().textContent = v == null ? "" : String(v);
    }
    box.appendChild(table);
  } catch (e) {
    if (id !== app.outputId) return;
    box.textContent = e.status === 404 ? "no reference" : `scores: ${e.message}`;
  }
}

function selectDate(date) {
  app.date = date;
  app.outputId = null;
  drawTimeline();
  showDate();
}

function selectPlace(place) {
  if (place === app.place) return;
  app.place = place;
  $("#place").value = place;
  app.view = null;
  app.date = defaultDate();
  app.outputId = null;
  drawMap();
  drawTimeline();
  showDate();
}

// ---------------------------------------------------------------------------------------- zoom / pan

function attachNavigation(el) {
  el.addEventListener("wheel", (ev) => {
    if (!app.view) return;
    ev.preventDefault();
    const rect = el.getBoundingClientRect();
    const mx = ev.clientX - rect.left - rect.width / 2, my = ev.clientY - rect.top - rect.height / 2;
    const v = app.view;
    const wx = v.cx + mx * v.scale, wy = v.cy - my * v.scale;   // the point under the cursor stays put
    const factor = Math.exp(Math.sign(ev.deltaY) * Math.min(Math.abs(ev.deltaY), 200) / 400);
    v.scale = Math.max(v.minScale, Math.min(v.maxScale, v.scale * factor));
    v.cx = wx - mx * v.scale;
    v.cy = wy + my * v.scale;
    placeAll();
    scheduleLoad();
  }, { passive: false });
  let drag = null;
  el.addEventListener("pointerdown", (ev) => {
    if (!app.view) return;
    drag = { x: ev.clientX, y: ev.clientY, cx: app.view.cx, cy: app.view.cy };
    el.setPointerCapture(ev.pointerId);
    el.classList.add("dragging");
  });
  el.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    app.view.cx = drag.cx - (ev.clientX - drag.x) * app.view.scale;
    app.view.cy = drag.cy + (ev.clientY - drag.y) * app.view.scale;
    placeAll();
  });
  const end = () => {
    if (!drag) return;
    drag = null;
    el.classList.remove("dragging");
    scheduleLoad(0);
  };
  el.addEventListener("pointerup", end);
  el.addEventListener("pointercancel", end);
}

// ---------------------------------------------------------------------------------------- run form

async function startRun(ev) {
  ev.preventDefault();
  const method = $("#run-method").value;
  if (!app.date || !method) return;
  const status = $("#run-status");
  const button = $("#run-button");
  const bar = $("#run-progress");
  status.classList.remove("failed");
  status.textContent = `starting ${method} on ${app.date}…`;
  button.disabled = true;
  try {
    const body = JSON.stringify({ date: app.date, method, place: app.place });
    const res = await api("/api/run", null, {
      method: "POST", body, headers: { "Content-Type": "application/json" },
    });
    bar.hidden = false;
    bar.value = 0;
    pollRun(res.run);
  } catch (e) {
    status.classList.add("failed");
    status.textContent = `run refused: ${e.message}`;
    button.disabled = false;
  }
}

async function pollRun(runId) {
  const status = $("#run-status");
  const button = $("#run-button");
  const bar = $("#run-progress");
  let r;
  try {
    r = await api(`/api/run/${encodeURIComponent(runId)}`);
  } catch (e) {
    status.classList.add("failed");
    status.textContent = `run ${runId}: ${e.message}`;
    button.disabled = false;
    return;
  }
  bar.value = r.progress || 0;
  if (r.state === "running") {
    status.textContent = `running ${Math.round((r.progress || 0) * 100)} %${r.message ? ": " + r.message : ""}`;
    app.runTimer = setTimeout(() => pollRun(runId), 500);
    return;
  }
  button.disabled = false;
  bar.hidden = true;
  if (r.state === "done") {
    status.dataset.state = "done";
    status.textContent = `done${r.message ? ": " + r.message : ""}`;
    await loadState();
    app.version += 1;
    app.outputId = r.output || null;
    for (const key of [...app.infos.keys()]) if (key.startsWith("output:") || key.startsWith("status:")) app.infos.delete(key);
    const out = app.state.outputs.find((o) => o.id === r.output);
    if (out) { app.date = out.date; if (out.place) app.place = out.place; }
    drawTimeline();
    await showDate();
    // showDate keeps app.outputId when it belongs to the date
  } else {
    status.dataset.state = "failed";
    status.classList.add("failed");
    status.textContent = `failed: ${r.message || "unknown error"}`;
  }
}

// ---------------------------------------------------------------------------------------- wiring

function setCompare(on) {
  app.compare = on;
  $("#compare-toggle").classList.toggle("on", on);
  $("#panels").hidden = on;
  $("#compare").hidden = !on;
  if (app.refInfo) fitView(app.refInfo);   // the compare panel has another shape than the three
  placeAll();
  scheduleLoad(0);
}

async function main() {
  panels.input = new Panel($("#panel-input"), ["scene"]);
  panels.mask = new Panel($("#panel-mask"), ["mask"]);
  panels.output = new Panel($("#panel-output"), ["output", "status"]);
  panels.compare = new Panel($("#panel-compare"), ["scene", "swipe"]);
  $("#bands").addEventListener("change", (ev) => { app.bands = ev.target.value; scheduleLoad(0); });
  $("#status-toggle").addEventListener("change", (ev) => { app.showStatus = ev.target.checked; scheduleLoad(0); });
  $("#compare-toggle").addEventListener("click", () => setCompare(!app.compare));
  $("#swipe").addEventListener("input", (ev) => { app.swipe = Number(ev.target.value); placeAll(); });
  $("#place").addEventListener("change", (ev) => selectPlace(ev.target.value));
  $("#output-select").addEventListener("change", (ev) => { app.outputId = ev.target.value; showDate(); });
  $("#fit").addEventListener("click", () => { app.view = null; showDate(); });
  $("#run-form").addEventListener("submit", startRun);
  window.addEventListener("resize", () => { placeAll(); scheduleLoad(); });
  try {
    await loadState();
  } catch (e) {
    message(`cannot load state: ${e.message}`);
    return;
  }
  app.date = defaultDate();
  drawMap();
  drawTimeline();
  await showDate();
  document.body.dataset.ready = "1";
}

main();
