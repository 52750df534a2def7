"""The viewer's page: HTML, CSS and JavaScript written for getlocal, filled with one capture's data.

Everything is inline (no CDN, no request of any kind), so the file opens from
disk and can be mailed. ``window.getlocalView`` lets a test (or a curious user
in the browser console) read back exactly what the page shows.
"""
import html
import json
from typing import Any, Dict

_CSS = r"""
:root { --bg: #ffffff; --fg: #1d1d1f; --muted: #5f6368; --panel: #f5f6f8; --line: #d0d4da; --accent: #d01c8b;
        color-scheme: light dark; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #17181b; --fg: #e8e8ea; --muted: #a5a9b0; --panel: #222428; --line: #3d4047; --accent: #ff5fb8; }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 12px 16px 24px; background: var(--bg); color: var(--fg);
       font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 18px; margin: 0 0 2px; }
h2 { font-size: 14px; margin: 0 0 6px; }
p { margin: 2px 0; }
.muted { color: var(--muted); font-size: 12.5px; }
nav { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; margin: 10px 0 6px; }
nav label { font-size: 13px; }
select { font: inherit; padding: 2px 4px; background: var(--panel); color: var(--fg); border: 1px solid var(--line);
         border-radius: 4px; }
#status { font-weight: 600; margin: 4px 0 10px; }
.note { border-left: 3px solid var(--accent); padding: 2px 8px; margin: 6px 0; }
main { display: grid; grid-template-columns: minmax(320px, 1fr) minmax(320px, 1fr); gap: 12px; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; min-width: 0; }
#cameras { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; }
figcaption { font-size: 12.5px; color: var(--muted); }
canvas { display: block; }
canvas.clickable { cursor: crosshair; }
.legend { display: flex; align-items: center; gap: 6px; font-size: 12px; margin: 6px 0 2px; flex-wrap: wrap; }
.legend .bar { width: 160px; height: 12px; border: 1px solid var(--line); }
.legend .ticks { display: flex; justify-content: space-between; width: 160px; font-variant-numeric: tabular-nums; }
.kinds { display: flex; flex-wrap: wrap; gap: 4px 10px; font-size: 12px; margin-top: 4px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; vertical-align: -1px; margin-right: 3px; }
#strip { display: flex; flex-wrap: wrap; gap: 2px; align-items: flex-end; max-height: 260px; overflow: auto; }
.seg { display: flex; flex-wrap: wrap; gap: 1px; align-items: flex-end; padding: 2px 3px 0; border-radius: 3px;
       border-bottom: 4px solid var(--kind); margin-right: 3px; max-width: 100%; }
.seg-name { width: 100%; font-size: 11px; color: var(--muted); }
.tok { min-width: 9px; height: 18px; font-size: 11px; line-height: 18px; padding: 0 2px; border-radius: 2px;
       cursor: pointer; white-space: pre; font-family: ui-monospace, Menlo, Consolas, monospace; border: 1px solid transparent; }
.tok.patch { min-width: 7px; width: 7px; height: 12px; padding: 0; }
.tok.query { outline: 2px solid var(--accent); outline-offset: 1px; }
.tok.noquery { cursor: default; }
#matrix-wrap { position: relative; display: inline-grid; grid-template-columns: 8px auto; grid-template-rows: 8px auto; gap: 2px; }
#matrix-wrap canvas { image-rendering: pixelated; }
#row-mark { position: absolute; left: 10px; right: 0; height: 0; border-top: 2px solid var(--accent); pointer-events: none; }
table.labels { border-collapse: collapse; font-size: 12px; }
table.labels td, table.labels th { padding: 0; text-align: center; }
table.labels th { font-weight: normal; color: var(--muted); padding: 0 4px; }
table.labels td button { width: 26px; height: 20px; border: 1px solid var(--bg); font: 600 11px/1 system-ui, sans-serif;
                         cursor: pointer; color: #111; }
table.labels td button.current { outline: 3px solid var(--accent); outline-offset: -2px; }
footer { margin-top: 12px; }
kbd { border: 1px solid var(--line); border-radius: 3px; padding: 0 3px; font-size: 12px; }
"""

_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__ - getlocal viewer</title>
<style>__CSS__</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <p id="info" class="muted"></p>
</header>
<p id="random" class="note" hidden></p>
<nav aria-label="what to show">
  <label>tower <select id="tower"></select></label>
  <label>step <select id="step"></select></label>
  <label id="variant-label">call <select id="variant"></select></label>
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <label>colours <select id="scale"><option value="uniform" selected>x uniform (as the figures)</option><option value="zero">0 to largest</option><option value="range">smallest to largest</option></select></label>
  <span class="muted"><kbd>&larr;</kbd><kbd>&rarr;</kbd> layer &nbsp; <kbd>&uarr;</kbd><kbd>&darr;</kbd> head &nbsp; click a patch, a token or a matrix row to choose the query</span>
</nav>
<p id="status" role="status" aria-live="polite"></p>
<p id="hover" class="muted" aria-live="off">Hover over a camera image or the matrix to read a value.</p>
<main>
  <div>
    <section id="cameras-panel" aria-label="attention over the camera images">
      <h2>Query &rarr; image patches</h2>
      <p id="no-images" class="note" hidden></p>
      <div id="cameras"></div>
      <div class="legend" id="legend-image"></div>
    </section>
    <section id="strip-panel" aria-label="token strip" style="margin-top:12px">
      <h2>Query &rarr; every key token</h2>
      <div id="strip"></div>
      <div class="legend" id="legend-strip"></div>
      <div class="kinds" id="kinds"></div>
    </section>
  </div>
  <div>
    <section id="matrix-panel" aria-label="attention matrix">
      <h2>[queries &times; keys] matrix</h2>
      <div id="matrix-wrap">
        <span></span><canvas id="kbands" height="1" title="key token kinds"></canvas>
        <canvas id="qbands" width="1" title="query token kinds"></canvas><canvas id="matrix" class="clickable"></canvas>
        <div id="row-mark"></div>
      </div>
      <div class="legend" id="legend-matrix"></div>
    </section>
    <section id="labels-panel" aria-label="head pattern labels" style="margin-top:12px">
      <h2>Head patterns by layer (click to jump)</h2>
      <div id="labels"></div>
      <p class="muted">A head is labelled after the pattern that holds at least half of its attention mass
        (<code>getlocal.patterns.classify_heads</code>): D diagonal (itself), S stripe (grid neighbours),
        V vertical (the same few keys for every query), B block (its own segment), M mixed (none of them);
        the colours are those of the PNG figures.</p>
    </section>
  </div>
</main>
<footer>
  <p id="quant" class="muted"></p>
</footer>
<script type="application/json" id="data">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""

#: The figures' 'uniform' colour scale, one piece of script in both pages (inside each page's function, after ``D``):
#: the same 256 colours as matplotlib writes them, the same fixed log range, grey for what is not seen.
_UNIFORM_JS = r"""const LUT = D.uniform.colors, RANGE = D.uniform.range, LOG_RANGE = Math.log(RANGE);
const GREY = [217, 217, 217];  // keys a query cannot see (excluded keys on the episode page), as on the PNGs
function uniformColor(ratio) {  // matplotlib's LogNorm(1/range, range) then ListedColormap lookup
  const t = (Math.log(ratio) + LOG_RANGE) / (2 * LOG_RANGE);
  return LUT[Math.min(LUT.length - 1, Math.max(0, Math.floor(t * LUT.length)))];
}"""

_JS = r"""
"use strict";
(function () {
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const KIND_COLORS = { bos: "#8c8c8c", text: "#ff7f0e", generated: "#d62728", action: "#d62728", state: "#8c564b",
                      cls: "#2ca02c", register: "#bcbd22", context: "#c7c7c7" };
const CAMERA_COLORS = ["#1f77b4", "#17becf", "#9467bd", "#e377c2", "#393b79", "#637939"];
const LABEL_COLORS = D.label_colors;  // the figures' one table of label colours
__UNIFORM__
// the colour of value x for a query that sees n keys (0: this key is hidden from it) on the chosen scale
function paint(x, n, e) {
  if (n === 0) return GREY;
  return S.scale === "uniform" ? uniformColor(x * n) : ramp(unit(x, e));
}
const seen = (m, qi, k) => (k <= m.until[qi] ? m.until[qi] + 1 : 0);  // keys query qi sees, or 0 if k is hidden
const ratioText = (x, n) => (n === 0 ? "not visible to this query" : `${fmt(x)} = ${(x * n).toPrecision(3)}x uniform`);
// a dark-to-light perceptual ramp (purple, blue, teal, green, yellow): readable in both themes
const RAMP = [[27, 12, 65], [59, 47, 128], [44, 111, 163], [33, 160, 138], [127, 205, 90], [245, 227, 75]];

function ramp(t) {
  t = Math.min(1, Math.max(0, t || 0)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(t)), f = t - i, a = RAMP[i], b = RAMP[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}
const css = (c) => `rgb(${c[0] | 0},${c[1] | 0},${c[2] | 0})`;
const fmt = (v) => (v === 0 ? "0" : Math.abs(v) >= 0.01 ? v.toFixed(3) : v.toExponential(1));

// ------------------------------------------------------------------ data

const cameraKeys = [];
function cameraKey(seg, map) { return seg.camera ?? map.camera ?? ""; }
D.maps.forEach((m) => m.keys.filter((s) => s.kind === "image").forEach((s) => {
  const key = cameraKey(s, m);
  if (!cameraKeys.includes(key)) cameraKeys.push(key);
}));
function kindColor(seg, map) {
  if (seg.kind !== "image") return KIND_COLORS[seg.kind] || "#999";
  return CAMERA_COLORS[cameraKeys.indexOf(cameraKey(seg, map)) % CAMERA_COLORS.length];
}

const decoded = new Map();
function bytes(b64) {
  const s = atob(b64), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
function values(mi) {  // the dequantised [H, Q, K] values of map mi, decoded on first use
  if (decoded.has(mi)) return decoded.get(mi);
  const m = D.maps[mi], raw = bytes(m.data);
  const ints = D.bits === 16 ? new Uint16Array(raw.buffer) : raw;
  const sc = new Float32Array(bytes(m.scales).buffer), K = m.k, rows = m.heads * m.q;
  const out = new Float32Array(rows * K);
  for (let r = 0; r < rows; r++) {
    const lo = sc[2 * r], step = sc[2 * r + 1];
    for (let k = 0; k < K; k++) out[r * K + k] = lo + step * ints[r * K + k];
  }
  decoded.set(mi, out);
  return out;
}
function headRow(mi, head, qi) {  // one query's row over all keys, for a head or the mean / max of all
  const m = D.maps[mi], v = values(mi), K = m.k, out = new Float32Array(K);
  if (typeof head === "number") return v.slice((head * m.q + qi) * K, (head * m.q + qi + 1) * K);
  for (let h = 0; h < m.heads; h++) {
    const base = (h * m.q + qi) * K;
    for (let k = 0; k < K; k++) {
      const x = v[base + k];
      out[k] = head === "max" ? (h === 0 ? x : Math.max(out[k], x)) : out[k] + x / m.heads;
    }
  }
  return out;
}
function matrixOf(mi, head) {
  const m = D.maps[mi], out = new Float32Array(m.q * m.k);
  for (let q = 0; q < m.q; q++) out.set(headRow(mi, head, q), q * m.k);
  return out;
}

// which maps exist: tower -> "step" -> variant -> layer -> map index
const index = new Map();
D.maps.forEach((m, i) => {
  if (!index.has(m.tower)) index.set(m.tower, new Map());
  const steps = index.get(m.tower);
  if (!steps.has(m.step)) steps.set(m.step, { phase: m.phase, variants: new Map() });
  const variants = steps.get(m.step).variants;
  if (!variants.has(m.variant)) variants.set(m.variant, new Map());
  variants.get(m.variant).set(m.layer, i);
});

// ------------------------------------------------------------------ state

const S = { tower: null, step: null, variant: null, layer: null, head: "mean", query: null, mi: null, message: "",
            scale: "uniform" };
function extent(values) {  // the colour scale's ends: from 0, or from the smallest value shown (weak contrasts)
  let lo = Infinity, hi = 0;
  for (const x of values) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
  return S.scale === "range" && lo < hi ? [lo, hi] : [0, hi];
}
const unit = (x, e) => (e[1] > e[0] ? (x - e[0]) / (e[1] - e[0]) : 0);

function layersHere() { return [...index.get(S.tower).get(S.step).variants.get(S.variant).keys()].sort((a, b) => a - b); }
function heads() { const m = D.maps[S.mi]; return [...Array(m.heads).keys(), "mean", "max"]; }
function offset(m) { return m.k - m.q; }  // query i sits at key position k - q + i (decode steps see every earlier key)

function defaultQuery(m) {
  const late = m.queries.filter((s) => ["action", "generated", "text"].includes(s.kind));
  if (late.length) return late[late.length - 1].stop - 1;
  const img = m.queries.find((s) => s.kind === "image" && s.grid);
  if (img) return img.start + Math.floor(img.grid[0] / 2) * img.grid[1] + Math.floor(img.grid[1] / 2);
  return m.q - 1;
}

function resolve() {  // make every choice valid after one of them changed
  const steps = index.get(S.tower);
  if (!steps.has(S.step)) S.step = steps.keys().next().value;
  const variants = steps.get(S.step).variants;
  if (!variants.has(S.variant)) S.variant = variants.keys().next().value;
  const layers = layersHere();
  if (!layers.includes(S.layer)) S.layer = layers[0];
  const before = S.mi === null ? null : D.maps[S.mi];
  S.mi = variants.get(S.variant).get(S.layer);
  const m = D.maps[S.mi];
  if (typeof S.head === "number" && S.head >= m.heads) S.head = "mean";
  if (before === null || before.q !== m.q || before.k !== m.k || S.query === null || S.query >= m.q) S.query = defaultQuery(m);
}

function fillSelect(el, options, current) {
  el.innerHTML = "";
  for (const [value, text] of options) {
    const o = document.createElement("option");
    o.value = String(value); o.textContent = text; o.selected = String(value) === String(current);
    el.appendChild(o);
  }
}

// ------------------------------------------------------------------ drawing

function legend(el, e, what) {
  if (S.scale === "uniform") {
    const stops = [...Array(17).keys()].map((i) => `${css(LUT[Math.min(LUT.length - 1, Math.floor((i / 16) * LUT.length))])} ${(100 * i) / 16}%`).join(",");
    const r = D.uniform.range;
    el.innerHTML = `<span>attention ${what}, x uniform (attention × keys the query sees; grey: hidden):</span>` +
      `<span><span class="bar" style="display:block;background:linear-gradient(90deg,${stops})"></span>` +
      `<span class="ticks"><span>1/${r}x</span><span>1x</span><span>${r}x</span></span></span>`;
    el.dataset.vmin = String(1 / r); el.dataset.vmax = String(r);
    return;
  }
  const stops = RAMP.map((c, i) => `${css(c)} ${(100 * i) / (RAMP.length - 1)}%`).join(",");
  el.innerHTML = `<span>attention ${what}:</span><span><span class="bar" style="display:block;background:linear-gradient(90deg,${stops})"></span>` +
    `<span class="ticks"><span>${fmt(e[0])}</span><span>${fmt((e[0] + e[1]) / 2)}</span><span>${fmt(e[1])}</span></span></span>`;
  el.dataset.vmin = String(e[0]); el.dataset.vmax = String(e[1]);
}

function heatCanvas(grid, heat, e, alpha, n) {  // one pixel per patch; drawImage scales it up bilinearly
  const c = document.createElement("canvas");
  c.width = grid[1]; c.height = grid[0];
  const ctx = c.getContext("2d"), img = ctx.createImageData(c.width, c.height);
  for (let i = 0; i < heat.length; i++) {
    const col = paint(heat[i], n(i), e);
    img.data.set([col[0], col[1], col[2], 255 * alpha], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

const pictures = {};
const shownHeat = {};
function imageGeometry(key, seg) {  // where the model's square (letterbox) or picture lies on the canvas
  const pic = D.images[key];
  return pic ? { w: pic.w, h: pic.h, pad: pic.pad } : { w: seg.grid[1] * 24, h: seg.grid[0] * 24, pad: false };
}
function squareOf(g) {  // the rectangle the patch grid covers, in picture pixels
  if (!g.pad) return { x: 0, y: 0, w: g.w, h: g.h };
  const side = Math.max(g.w, g.h);
  return { x: -Math.floor((side - g.w) / 2), y: -Math.floor((side - g.h) / 2), w: side, h: side };
}

function drawCameras(row) {
  const m = D.maps[S.mi], box = $("cameras");
  const segs = m.keys.filter((s) => s.kind === "image" && s.grid);
  box.innerHTML = "";
  for (const key of Object.keys(shownHeat)) delete shownHeat[key];
  const e = extent(segs.flatMap((s) => Array.from(row.slice(s.start, s.stop))));
  const missing = segs.filter((s) => !D.images[cameraKey(s, m)]);
  $("no-images").hidden = !(segs.length === 0 || missing.length);
  $("no-images").textContent = segs.length === 0
    ? `This ${S.tower} map has no image tokens: see the token strip and the matrix.`
    : Object.keys(D.images).length === 0
      ? "This capture has no images (save it with images={camera: picture}): the heat is shown on the patch grid."
      : `No picture saved for ${missing.map((s) => cameraKey(s, m) || "the image").join(", ")}: the heat is shown on the patch grid.`;
  for (const s of segs) {
    const key = cameraKey(s, m), g = imageGeometry(key, s), sq = squareOf(g);
    const width = Math.min(480, Math.max(384, g.w)), scale = width / g.w;  // 24 px a patch on a 16 x 16 grid
    const fig = document.createElement("figure"), c = document.createElement("canvas");
    c.width = Math.round(g.w * scale); c.height = Math.round(g.h * scale);
    c.className = "clickable"; c.dataset.camera = key;
    c.setAttribute("aria-label", `attention over ${key || "the image"}; click a patch to make it the query`);
    const ctx = c.getContext("2d");
    const heat = row.slice(s.start, s.stop);
    shownHeat[key] = heat;
    const pic = pictures[key];
    if (pic) ctx.drawImage(pic, 0, 0, c.width, c.height);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(heatCanvas(s.grid, heat, e, pic ? 0.6 : 1, (i) => seen(m, S.query, s.start + i)),
                  sq.x * scale, sq.y * scale, sq.w * scale, sq.h * scale);
    const qpos = offset(m) + S.query;
    if (qpos >= s.start && qpos < s.stop) {  // outline the query patch
      const i = qpos - s.start, r = Math.floor(i / s.grid[1]), col = i % s.grid[1];
      const cw = (sq.w * scale) / s.grid[1], ch = (sq.h * scale) / s.grid[0];
      for (const [w, colour] of [[4, "#000"], [2, "#fff"]]) {  // a dark ring round a light one, as on the PNGs
        ctx.lineWidth = w; ctx.strokeStyle = colour;
        ctx.strokeRect(sq.x * scale + col * cw, sq.y * scale + r * ch, cw, ch);
      }
    }
    const patchAt = (ev) => {
      const rect = c.getBoundingClientRect();
      const u = ((ev.clientX - rect.left) / rect.width) * g.w - sq.x, v = ((ev.clientY - rect.top) / rect.height) * g.h - sq.y;
      const col = Math.floor((u / sq.w) * s.grid[1]), r = Math.floor((v / sq.h) * s.grid[0]);
      return col < 0 || r < 0 || col >= s.grid[1] || r >= s.grid[0] ? null : [r, col];
    };
    c.addEventListener("mousemove", (ev) => {
      const p = patchAt(ev);
      if (!p) return;
      const k = s.start + p[0] * s.grid[1] + p[1];
      const text = `${key || "image"} patch row ${p[0]}, column ${p[1]} (key ${k}): ${ratioText(heat[k - s.start], seen(m, S.query, k))}`;
      c.title = text; $("hover").textContent = text;
    });
    c.addEventListener("click", (ev) => {
      const rect = c.getBoundingClientRect();
      const u = ((ev.clientX - rect.left) / rect.width) * g.w - sq.x, v = ((ev.clientY - rect.top) / rect.height) * g.h - sq.y;
      const col = Math.floor((u / sq.w) * s.grid[1]), r = Math.floor((v / sq.h) * s.grid[0]);
      if (col < 0 || r < 0 || col >= s.grid[1] || r >= s.grid[0]) return;
      chooseKeyPosition(s.start + r * s.grid[1] + col);
    });
    const cap = document.createElement("figcaption");
    cap.textContent = `${key || "image"}: ${s.grid[0]}\u00d7${s.grid[1]} patches, tokens ${s.start}:${s.stop}` +
      (g.pad ? ", letterbox undone" : "") + (pic ? "" : " (no picture)");
    fig.append(c, cap); box.appendChild(fig);
  }
  if (segs.length) legend($("legend-image"), e, "over the image patches");
  else $("legend-image").innerHTML = "";
}

function tokenText(pos, seg) {
  const strings = D.tokens[S.tower] || {};
  if (strings[pos] !== undefined) return strings[pos];
  return seg.kind === "image" ? "" : String(pos);
}

let stripBuiltFor = null;
function buildStrip() {
  const m = D.maps[S.mi], box = $("strip"), sig = `${S.tower}|${JSON.stringify(m.keys)}|${m.q}`;
  if (stripBuiltFor === sig) return;
  stripBuiltFor = sig;
  box.innerHTML = "";
  for (const s of m.keys) {
    const seg = document.createElement("div");
    seg.className = "seg"; seg.style.setProperty("--kind", kindColor(s, m));
    const name = document.createElement("span");
    name.className = "seg-name";
    const cam = s.kind === "image" ? cameraKey(s, m) : "";
    name.textContent = `${s.kind}${cam ? " " + cam : ""} ${s.start}:${s.stop}`;
    seg.appendChild(name);
    for (let p = s.start; p < s.stop; p++) {
      const t = document.createElement("span");
      t.className = "tok" + (s.kind === "image" && !(D.tokens[S.tower] || {})[p] ? " patch" : "") +
        (p < offset(m) ? " noquery" : "");
      t.dataset.pos = String(p); t.textContent = tokenText(p, s);
      t.addEventListener("click", () => chooseKeyPosition(p));
      seg.appendChild(t);
    }
    box.appendChild(seg);
  }
  const kinds = $("kinds"); kinds.innerHTML = "";
  const seen = new Set();
  for (const s of m.keys) {
    const label = s.kind === "image" ? `image ${cameraKey(s, m)}`.trim() : s.kind;
    if (seen.has(label)) continue;
    seen.add(label);
    kinds.insertAdjacentHTML("beforeend", `<span><span class="swatch" style="background:${kindColor(s, m)}"></span>${label}</span>`);
  }
}

function paintStrip(row) {
  const m = D.maps[S.mi], strings = D.tokens[S.tower] || {};
  const e = extent(row), qpos = offset(m) + S.query;
  for (const t of $("strip").querySelectorAll(".tok")) {
    const p = Number(t.dataset.pos), x = row[p], n = seen(m, S.query, p), c = paint(x, n, e);
    t.style.background = css(c);
    t.style.color = c[0] * 0.299 + c[1] * 0.587 + c[2] * 0.114 > 140 ? "#111" : "#fff";
    t.classList.toggle("query", p === qpos);
    const seg = m.keys.find((s) => p >= s.start && p < s.stop);
    t.title = `position ${p} (${seg.kind}${seg.camera ? " " + seg.camera : ""})` +
      (strings[p] !== undefined ? ` "${strings[p]}"` : "") + `: ${ratioText(x, n)}`;
  }
  legend($("legend-strip"), e, "over all key tokens");
}

function drawBands(canvas, segs, m, n, horizontal) {
  if (horizontal) { canvas.width = n; canvas.height = 1; } else { canvas.width = 1; canvas.height = n; }
  const ctx = canvas.getContext("2d");
  for (const s of segs) {
    ctx.fillStyle = kindColor(s, m);
    if (horizontal) ctx.fillRect(s.start, 0, s.stop - s.start, 1); else ctx.fillRect(0, s.start, 1, s.stop - s.start);
  }
}

let matrixShown = null;
function drawMatrix() {
  const m = D.maps[S.mi], mat = matrixOf(S.mi, S.head), c = $("matrix");
  matrixShown = mat;
  c.width = m.k; c.height = m.q;
  const ctx = c.getContext("2d"), img = ctx.createImageData(m.k, m.q);
  const e = extent(mat);
  for (let i = 0; i < mat.length; i++) {
    const q = Math.floor(i / m.k), col = paint(mat[i], seen(m, q, i % m.k), e);
    img.data.set([col[0], col[1], col[2], 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  const width = Math.min(440, Math.max(200, m.k * 2));
  const height = Math.max(Math.min(80, 12 * m.q), Math.min(440, (width * m.q) / m.k));
  c.style.width = `${width}px`; c.style.height = `${height}px`;
  drawBands($("kbands"), m.keys, m, m.k, true);
  drawBands($("qbands"), m.queries, m, m.q, false);
  $("kbands").style.width = `${width}px`; $("kbands").style.height = "8px";
  $("qbands").style.width = "8px"; $("qbands").style.height = `${height}px`;
  const mark = $("row-mark");
  mark.style.top = `${10 + ((S.query + 0.5) * height) / m.q}px`; mark.style.width = `${width}px`;
  legend($("legend-matrix"), e, `in the matrix (${m.q} queries \u00d7 ${m.k} keys; the bands are the token kinds)`);
}
$("matrix").addEventListener("mousemove", (ev) => {
  const m = D.maps[S.mi], rect = $("matrix").getBoundingClientRect();
  const q = Math.min(m.q - 1, Math.max(0, Math.floor(((ev.clientY - rect.top) / rect.height) * m.q)));
  const k = Math.min(m.k - 1, Math.max(0, Math.floor(((ev.clientX - rect.left) / rect.width) * m.k)));
  const text = `query ${offset(m) + q}, key ${k}: ${ratioText(matrixShown[q * m.k + k], seen(m, q, k))}`;
  $("matrix").title = text; $("hover").textContent = text;
});
$("matrix").addEventListener("click", (ev) => {
  const m = D.maps[S.mi], rect = $("matrix").getBoundingClientRect();
  S.query = Math.min(m.q - 1, Math.max(0, Math.floor(((ev.clientY - rect.top) / rect.height) * m.q)));
  S.message = ""; render();
});

function drawLabels() {
  const variants = index.get(S.tower).get(S.step).variants.get(S.variant);
  const layers = layersHere(), box = $("labels");
  const any = layers.some((l) => D.maps[variants.get(l)].labels);
  if (!any) {
    const m = D.maps[S.mi];
    const labelled = [...index.get(S.tower).entries()].find(([, v]) =>
      [...v.variants.values()].some((ls) => [...ls.values()].some((i) => D.maps[i].labels)));
    box.innerHTML = `<p class="muted">Labels are computed for square (prompt) maps; step ${S.step} (${m.phase}) has ` +
      `${m.q} query row(s) over ${m.k} keys: ` + (labelled ? `choose step ${labelled[0]} (${labelled[1].phase}) to see them.`
      : `no step of ${S.tower} has square maps.`) + "</p>";
    return;
  }
  const most = Math.max(...layers.map((l) => D.maps[variants.get(l)].heads));
  let h = `<table class="labels"><tr><th>layer</th>${[...Array(most).keys()].map((i) => `<th>${i}</th>`).join("")}</tr>`;
  for (const l of layers) {
    const m = D.maps[variants.get(l)];
    h += `<tr><th>${l}</th>`;
    for (let i = 0; i < m.heads; i++) {
      const lab = m.labels ? m.labels[i] : null;
      const cur = l === S.layer && (S.head === i || typeof S.head !== "number");
      h += `<td><button data-layer="${l}" data-head="${i}" class="${cur ? "current" : ""}" ` +
        `style="background:${lab ? LABEL_COLORS[lab] : "transparent"}" title="layer ${l}, head ${i}: ${lab || "no label"}">` +
        `${lab ? lab[0].toUpperCase() : "-"}</button></td>`;
    }
    h += "</tr>";
  }
  box.innerHTML = h + "</table>" + `<div class="kinds">${Object.entries(LABEL_COLORS).map(([k, c]) =>
    `<span><span class="swatch" style="background:${c}"></span>${k}</span>`).join("")}</div>`;
  for (const b of box.querySelectorAll("button")) {
    b.addEventListener("click", () => { S.layer = Number(b.dataset.layer); S.head = Number(b.dataset.head); update(); });
  }
}

function describeQuery(m) {
  const pos = offset(m) + S.query, seg = m.keys.find((s) => pos >= s.start && pos < s.stop);
  const word = (D.tokens[S.tower] || {})[pos];
  let where = `${seg.kind}${seg.camera ?? m.camera ? " " + (seg.camera ?? m.camera) : ""}`;
  if (seg.kind === "image" && seg.grid) {
    const i = pos - seg.start;
    where += ` patch row ${Math.floor(i / seg.grid[1])}, column ${i % seg.grid[1]}`;
  }
  const head = typeof S.head === "number" ? `head ${S.head}` : `${S.head} over ${m.heads} heads`;
  return `Query: token ${pos} (${where}${word !== undefined ? `, "${word}"` : ""}) \u2014 ${S.tower} layer ${S.layer}, ` +
    `step ${S.step} ${m.phase}${S.variant ? ", " + S.variant : ""}, ${head}`;
}

function chooseKeyPosition(pos) {
  const m = D.maps[S.mi], qi = pos - offset(m);
  if (qi < 0) {
    S.message = `Token ${pos} is a key but not a query of this ${m.phase} map (its queries are tokens ${offset(m)}` +
      `\u2013${m.k - 1}); the query stays.`;
  } else { S.query = qi; S.message = ""; }
  render();
}

function render() {
  const m = D.maps[S.mi];
  buildStrip();
  const row = headRow(S.mi, S.head, S.query);
  shownRow = row;
  drawCameras(row);
  paintStrip(row);
  drawMatrix();
  drawLabels();
  $("status").textContent = describeQuery(m) + (S.message ? ". " + S.message : "");
  const b = document.body.dataset;
  b.tower = S.tower; b.step = String(S.step); b.layer = String(S.layer); b.head = String(S.head);
  b.query = String(offset(m) + S.query); b.map = String(S.mi);
}
let shownRow = null;

function update() {  // after a control changed: fix the choices, refill the selects, draw
  resolve();
  const steps = index.get(S.tower);
  fillSelect($("tower"), [...index.keys()].map((t) => [t, t]), S.tower);
  fillSelect($("step"), [...steps.entries()].map(([s, v]) => [s, `${s} ${v.phase}`]), S.step);
  const variants = [...steps.get(S.step).variants.keys()];
  fillSelect($("variant"), variants.map((v) => [v, v || "-"]), S.variant);
  $("variant-label").hidden = variants.length < 2;
  fillSelect($("layer"), layersHere().map((l) => [l, l]), S.layer);
  fillSelect($("head"), heads().map((h) => [h, typeof h === "number" ? h : `${h} of all`]), S.head);
  render();
}

$("tower").addEventListener("change", (e) => { S.tower = e.target.value; S.message = ""; update(); });
$("step").addEventListener("change", (e) => { S.step = Number(e.target.value); S.message = ""; update(); });
$("variant").addEventListener("change", (e) => { S.variant = e.target.value; update(); });
$("layer").addEventListener("change", (e) => { S.layer = Number(e.target.value); update(); });
$("scale").addEventListener("change", (e) => { S.scale = e.target.value; render(); });
$("head").addEventListener("change", (e) => { const v = e.target.value; S.head = /^\d+$/.test(v) ? Number(v) : v; update(); });
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "SELECT" || e.altKey || e.ctrlKey || e.metaKey) return;  // a select steps itself
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -1, ArrowDown: 1 }[e.key];
  if (!step) return;
  e.preventDefault();
  const list = e.key === "ArrowLeft" || e.key === "ArrowRight" ? layersHere() : heads();
  const cur = e.key === "ArrowLeft" || e.key === "ArrowRight" ? S.layer : S.head;
  const next = list[Math.min(list.length - 1, Math.max(0, list.indexOf(cur) + step))];
  if (e.key === "ArrowLeft" || e.key === "ArrowRight") S.layer = next; else S.head = next;
  update();
});

// ------------------------------------------------------------------ start

$("title").textContent = D.title;
document.title = `${D.title} - getlocal viewer`;
const infoParts = Object.entries(D.info).map(([k, v]) => `${k}: ${v}`);
if (D.batches > 1) infoParts.push(`batch item ${D.batch} of ${D.batches}`);
$("info").textContent = infoParts.join(" \u00b7 ");
if (/random/i.test(D.info.weights || "")) {
  $("random").hidden = false;
  $("random").textContent = "Random weights: on the default x-uniform colours (as the figures) their departures from " +
    "uniform attention stay pale within about 0.5-2x; the labels are not learned patterns. Trained weights show them.";
}
const levels = 2 ** D.bits - 1, bad = D.maps.reduce((n, m) => n + m.nonfinite, 0);
$("quant").textContent = `Stored with ${D.bits} bits per value: each row (one query of one head) between its minimum and ` +
  `maximum, so a value shown is within (row max \u2212 row min)/${2 * levels} of the captured one ` +
  `(at most ${fmt(1 / (2 * levels))} for a softmax row); means and maxima over heads are computed here from those values.` +
  (bad ? ` ${bad} non-finite values are shown as 0.` : "") + " Everything is in this file: it makes no network request.";

S.tower = [...index.keys()].pop();  // the last tower: a VLA's language model or action expert, a ViT's only one
update();
let pending = 0;
for (const [key, pic] of Object.entries(D.images)) {
  const img = new Image();
  pending++;
  img.onload = img.onerror = () => { pictures[key] = img; if (--pending === 0) { render(); document.body.dataset.ready = "1"; } };
  img.src = pic.src;
}
if (pending === 0) document.body.dataset.ready = "1";

window.getlocalView = {
  state: () => ({ tower: S.tower, step: S.step, variant: S.variant, layer: S.layer, head: S.head,
                  query: offset(D.maps[S.mi]) + S.query, map: S.mi, message: S.message }),
  row: () => Array.from(shownRow),
  cameraHeat: (key) => Array.from(shownHeat[key] || []),
  cameras: () => Object.keys(shownHeat),
  matrix: () => Array.from(matrixShown),
  patchPoint(key, r, c) {  // the page coordinates of the centre of patch (r, c) of camera `key`
    const m = D.maps[S.mi], s = m.keys.find((x) => x.kind === "image" && cameraKey(x, m) === key);
    const canvas = [...document.querySelectorAll("#cameras canvas")].find((x) => x.dataset.camera === key);
    const g = imageGeometry(key, s), sq = squareOf(g), rect = canvas.getBoundingClientRect();
    const u = sq.x + ((c + 0.5) / s.grid[1]) * sq.w, v = sq.y + ((r + 0.5) / s.grid[0]) * sq.h;
    return { x: rect.left + (u / g.w) * rect.width, y: rect.top + (v / g.h) * rect.height };
  },
};
})();
"""


def data_json(data: Dict[str, Any]) -> str:
    """``data`` as JSON that is safe inside ``<script>``: no ``</script>`` or ``<!--`` can end it early."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render(data: Dict[str, Any]) -> str:
    """The whole page for ``data``: the maps, labels and pictures that :func:`getlocal.viewer.view` gathers."""
    # replace the data last: it is the only part that could hold the other placeholders' names
    page = _HTML.replace("__TITLE__", html.escape(str(data["title"]))).replace("__CSS__", _CSS)
    page = page.replace("__JS__", _JS.replace("__UNIFORM__", _UNIFORM_JS))
    return page.replace("__DATA__", data_json(data))


# --------------------------------------------------------------------------- a recorded episode's explanations

_EPISODE_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__ - getlocal episode</title>
<style>__CSS__
#step { width: 320px; vertical-align: middle; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <p id="info" class="muted"></p>
</header>
<nav aria-label="what to show">
  <label>step <input type="range" id="step" min="0" value="0"> <span id="step-number"></span></label>
  <label id="name-label">explanation <select id="name"></select></label>
  <span class="muted"><kbd>&larr;</kbd> <kbd>&rarr;</kbd> step through the episode</span>
</nav>
<p id="status" role="status" aria-live="polite"></p>
<p id="hover" class="muted" aria-live="off">Hover over a camera image to read a patch's value.</p>
<section aria-label="the explanation over the camera images">
  <h2>Where the explained rows' mass lands, per patch</h2>
  <p id="missing" class="note" hidden></p>
  <div id="cameras"></div>
  <div class="legend" id="legend"></div>
  <p class="muted">Each patch: its share of the explained rows' mass divided by the share an even spread over the
    keys they reach would give it (<code>Explanation.grid(camera, relative=True)</code>); 1 (white) is even, red
    more, blue less, on the viewer's fixed log range; grey: excluded keys. Under each picture: the camera's total
    share beside an even spread's.</p>
</section>
<script type="application/json" id="data">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""

_EPISODE_JS = r"""
"use strict";
(function () {
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
__UNIFORM__
const css = (c) => `rgb(${c[0] | 0},${c[1] | 0},${c[2] | 0})`;
const pct = (x) => `${(100 * x).toFixed(0)}%`;
const names = [...new Set(D.steps.flatMap((s) => Object.keys(s.explained)))];
const S = { index: 0, name: names[0] ?? null };
const pictures = new Map();  // index in D.pictures -> loaded Image
const shown = {};

function square(p, grid) {  // the picture's size and the rectangle the patch grid covers (letterbox undone)
  const g = p ? { w: p.w, h: p.h, pad: p.pad } : { w: grid[1] * 24, h: grid[0] * 24, pad: false };
  if (!g.pad) return [g, { x: 0, y: 0, w: g.w, h: g.h }];
  const side = Math.max(g.w, g.h);
  return [g, { x: -Math.floor((side - g.w) / 2), y: -Math.floor((side - g.h) / 2), w: side, h: side }];
}

function render() {
  const step = D.steps[S.index], e = S.name === null ? undefined : step.explained[S.name], box = $("cameras");
  $("step").value = String(S.index);
  $("step-number").textContent = `${step.step} (rank ${step.rank}; ${S.index + 1} of ${D.steps.length})`;
  box.innerHTML = "";
  for (const key of Object.keys(shown)) delete shown[key];
  $("missing").hidden = Boolean(e);
  if (!e) {
    $("missing").textContent = step.error ? `Step ${step.step} has no explanation: ${step.error}`
      : `Step ${step.step} has no explanation${S.name ? ` named ${S.name}` : ""} (recorded without explain=).`;
    $("status").textContent = "";
    return;
  }
  $("status").textContent = `${e.method} of ${e.tower}: ${e.rows} row${e.rows === 1 ? "" : "s"}, layers ` +
    `${e.layers.join(", ")}${e.excluded.length ? `, keys ${e.excluded.join(", ")} excluded` : ""}`;
  if (!Object.keys(e.cameras).length) {
    $("missing").hidden = false;
    $("missing").textContent = `Step ${step.step}'s explanation has no image tokens (no key layout with a camera's ` +
      "patches): nothing to draw over the frames.";
  }
  for (const [camera, c] of Object.entries(e.cameras)) {
    const pi = step.pictures[camera], p = pi === undefined ? null : D.pictures[pi];
    const [g, sq] = square(p, c.grid), scale = Math.min(480, Math.max(320, g.w)) / g.w;
    const fig = document.createElement("figure"), canvas = document.createElement("canvas");
    canvas.width = Math.round(g.w * scale); canvas.height = Math.round(g.h * scale);
    canvas.dataset.camera = camera;
    const ctx = canvas.getContext("2d"), pic = pi === undefined ? null : pictures.get(pi);
    if (pic) ctx.drawImage(pic, 0, 0, canvas.width, canvas.height);
    const heat = document.createElement("canvas");
    heat.width = c.grid[1]; heat.height = c.grid[0];
    const hctx = heat.getContext("2d"), img = hctx.createImageData(heat.width, heat.height);
    c.relative.forEach((x, i) => img.data.set([...(x === null ? GREY : uniformColor(x)), 255 * (pic ? 0.6 : 1)], 4 * i));
    hctx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;  // one block of colour per patch, as the figures draw it
    ctx.drawImage(heat, sq.x * scale, sq.y * scale, sq.w * scale, sq.h * scale);
    shown[camera] = { relative: c.relative, share: c.share, grid: c.grid, geometry: g, square: sq };
    canvas.addEventListener("mousemove", (ev) => {
      const rect = canvas.getBoundingClientRect();
      const u = ((ev.clientX - rect.left) / rect.width) * g.w - sq.x, v = ((ev.clientY - rect.top) / rect.height) * g.h - sq.y;
      const col = Math.floor((u / sq.w) * c.grid[1]), r = Math.floor((v / sq.h) * c.grid[0]);
      if (col < 0 || r < 0 || col >= c.grid[1] || r >= c.grid[0]) return;
      const i = r * c.grid[1] + col, x = c.relative[i];
      const text = `${camera || "image"} patch row ${r}, column ${col}: ` + (x === null ? "excluded"
        : `${x.toPrecision(3)}x an even spread (a share of ${c.share[i].toPrecision(3)} of the rows' mass)`);
      canvas.title = text; $("hover").textContent = text;
    });
    const cap = document.createElement("figcaption");
    cap.textContent = `${camera || "image"}: ${pct(c.total)} of the rows' mass (an even spread: ${pct(c.even)})` +
      (g.pad ? ", letterbox undone" : "") + (pic ? "" : " (no picture recorded)");
    fig.append(canvas, cap); box.appendChild(fig);
  }
}

function legend() {
  const stops = [...Array(17).keys()].map((i) => `${css(LUT[Math.min(LUT.length - 1, Math.floor((i / 16) * LUT.length))])} ${(100 * i) / 16}%`).join(",");
  $("legend").innerHTML = `<span>share x keys reached (1 = an even spread):</span>` +
    `<span><span class="bar" style="display:block;background:linear-gradient(90deg,${stops})"></span>` +
    `<span class="ticks"><span>1/${RANGE}x</span><span>1x even</span><span>${RANGE}x</span></span></span>`;
}

$("title").textContent = D.title;
$("info").textContent = Object.entries(D.info).map(([k, v]) => `${k}: ${v}`).concat(
  [`${D.steps.length} recorded steps`]).join(" \u00b7 ");
$("step").max = String(D.steps.length - 1);
$("step").addEventListener("input", (ev) => { S.index = Number(ev.target.value); render(); });
const select = $("name");
for (const n of names) {
  const o = document.createElement("option");
  o.value = n; o.textContent = n || "(the only one)"; select.appendChild(o);
}
$("name-label").hidden = names.length < 2;
select.addEventListener("change", (ev) => { S.name = ev.target.value; render(); });
document.addEventListener("keydown", (ev) => {
  const move = { ArrowLeft: -1, ArrowRight: 1 }[ev.key];
  if (!move || ev.target.tagName === "SELECT" || ev.target.tagName === "INPUT") return;
  ev.preventDefault();
  S.index = Math.min(D.steps.length - 1, Math.max(0, S.index + move));
  render();
});
legend();
render();
let pending = D.pictures.length;
D.pictures.forEach((p, i) => {
  const img = new Image();
  img.onload = img.onerror = () => { pictures.set(i, img); if (--pending === 0) { render(); document.body.dataset.ready = "1"; } };
  img.src = p.src;
});
if (pending === 0) document.body.dataset.ready = "1";

window.getlocalView = {
  state: () => ({ index: S.index, step: D.steps[S.index].step, name: S.name, names }),
  cameras: () => Object.keys(shown),
  relative: (camera) => shown[camera].relative,
  status: () => $("status").textContent,
  missing: () => ($("missing").hidden ? "" : $("missing").textContent),
  captions: () => [...document.querySelectorAll("#cameras figcaption")].map((x) => x.textContent),
  patchPixel(camera, r, c) {  // the canvas pixel at the centre of patch (r, c): [x, y] on the canvas
    const s = shown[camera], canvas = document.querySelector(`#cameras canvas[data-camera="${camera}"]`);
    const scale = canvas.width / s.geometry.w;
    return [Math.floor((s.square.x + ((c + 0.5) / s.grid[1]) * s.square.w) * scale),
            Math.floor((s.square.y + ((r + 0.5) / s.grid[0]) * s.square.h) * scale)];
  },
};
})();
"""


def render_episode(data: Dict[str, Any]) -> str:
    """The page of a recorded episode's explanations: the steps, their pictures, what :func:`getlocal.viewer.view` gathers."""
    page = _EPISODE_HTML.replace("__TITLE__", html.escape(str(data["title"]))).replace("__CSS__", _CSS)
    page = page.replace("__JS__", _EPISODE_JS.replace("__UNIFORM__", _UNIFORM_JS))
    return page.replace("__DATA__", data_json(data))
