"""The viewer at ``/``: a small self-contained slippy map of the served scenes (no library, no
request leaving the server): the scene's pixels with the label layer over them, an opacity slider
and the legend of class names. With ``--token`` the page takes the token from its URL fragment
(``/#token=...``, never sent to the server as part of a URL) and fetches every tile with it."""

VIEWER_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>segbench serve</title>
<link rel="icon" href="data:,">
<style>
body { margin: 0; font: 14px sans-serif; display: flex; height: 100vh; }
#side { width: 230px; padding: 10px; box-sizing: border-box; border-right: 1px solid #ccc; overflow: auto; }
#map { flex: 1; position: relative; overflow: hidden; background: #eee; cursor: grab; touch-action: none; }
#map img { position: absolute; width: 256px; height: 256px; user-select: none; pointer-events: none; }
#map img:not([src]) { visibility: hidden; }
.sw { display: inline-block; width: 14px; height: 14px; margin-right: 6px; vertical-align: middle; }
select, input { width: 100%; } button { width: 48%; }
</style></head>
<body>
<div id="side">
  <h3>segbench serve</h3>
  <label>scene <select id="scene"></select></label>
  <p><button id="zin">+</button> <button id="zout">&minus;</button></p>
  <label>label opacity <input id="opacity" type="range" min="0" max="100" value="70"></label>
  <p id="zoom"></p>
  <div id="legend"></div>
  <p id="status">loading</p>
</div>
<div id="map"><div id="imagery"></div><div id="labels"></div></div>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
const map = document.getElementById("map"), status = document.getElementById("status");
const layers = {imagery: document.getElementById("imagery"), labels: document.getElementById("labels")};
let scene = null, tj = null, z = 0, cx = 0, cy = 0, loaded = 0, failed = 0;

function project(lon, lat, zoom) {
  const n = 256 * 2 ** zoom, s = Math.sin(lat * Math.PI / 180);
  return [(lon + 180) / 360 * n, (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * n];
}
function report() { status.textContent = "tiles loaded: " + loaded + ", failed: " + failed; }
async function json(url) {
  const r = await fetch(url, {headers});
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}
async function tileImage(url, img) {
  try {
    const r = await fetch(url, {headers});
    if (r.status === 404) return;  // outside the scene
    if (!r.ok) throw new Error(r.status);
    img.src = URL.createObjectURL(await r.blob());
    loaded += 1;
  } catch (e) { failed += 1; }
  report();
}
function draw() {
  const w = map.clientWidth, h = map.clientHeight, seen = new Set();
  document.getElementById("zoom").textContent = "zoom " + z + " (" + tj.minzoom + "-" + tj.maxzoom + ")";
  const x0 = Math.floor((cx - w / 2) / 256), x1 = Math.floor((cx + w / 2) / 256);
  const y0 = Math.floor((cy - h / 2) / 256), y1 = Math.floor((cy + h / 2) / 256);
  for (const [name, div] of Object.entries(layers)) {
    for (let x = x0; x <= x1; x++) for (let y = y0; y <= y1; y++) {
      if (x < 0 || y < 0 || x >= 2 ** z || y >= 2 ** z) continue;
      const key = name + "/" + z + "/" + x + "/" + y;
      seen.add(key);
      let img = div.querySelector('[data-key="' + key + '"]');
      if (!img) {
        img = document.createElement("img");
        img.dataset.key = key;
        img.alt = "";
        div.appendChild(img);
        const base = name === "labels" ? "tiles" : "imagery";
        tileImage(base + "/" + scene.id + "/" + z + "/" + x + "/" + y + ".png", img);
      }
      img.style.left = (x * 256 - cx + w / 2) + "px";
      img.style.top = (y * 256 - cy + h / 2) + "px";
    }
    for (const img of [...div.children]) if (!seen.has(img.dataset.key)) img.remove();
  }
  layers.labels.style.opacity = document.getElementById("opacity").value / 100;
}
function setZoom(nz) {
  nz = Math.max(tj.minzoom, Math.min(tj.maxzoom, nz));
  cx *= 2 ** (nz - z); cy *= 2 ** (nz - z); z = nz; draw();
}
async function show(s) {
  scene = s;
  tj = await json("scenes/" + s.id + "/tilejson.json");
  z = tj.center[2];
  [cx, cy] = project(tj.center[0], tj.center[1], z);
  document.getElementById("legend").innerHTML = "";
  for (const c of tj.legend) {
    const p = document.createElement("div"), sw = document.createElement("span");
    sw.className = "sw"; sw.style.background = c.color;
    p.appendChild(sw); p.appendChild(document.createTextNode(c.name));
    document.getElementById("legend").appendChild(p);
  }
  for (const div of Object.values(layers)) div.innerHTML = "";
  draw();
}
let drag = null;
map.addEventListener("pointerdown", e => {
  drag = [e.clientX, e.clientY]; map.setPointerCapture(e.pointerId);
});
map.addEventListener("pointermove", e => {
  if (!drag) return;
  cx -= e.clientX - drag[0]; cy -= e.clientY - drag[1]; drag = [e.clientX, e.clientY]; draw();
});
map.addEventListener("pointerup", () => { drag = null; });
map.addEventListener("wheel", e => { e.preventDefault(); setZoom(z + (e.deltaY < 0 ? 1 : -1)); });
document.getElementById("zin").onclick = () => setZoom(z + 1);
document.getElementById("zout").onclick = () => setZoom(z - 1);
document.getElementById("opacity").oninput = draw;
window.addEventListener("resize", () => tj && draw());
(async () => {
  const scenes = await json("scenes");
  const select = document.getElementById("scene");
  for (const s of scenes) {
    const o = document.createElement("option");
    o.value = s.id; o.textContent = s.name; select.appendChild(o);
  }
  select.onchange = () => show(scenes.find(s => s.id === select.value));
  if (scenes.length) await show(scenes[0]); else status.textContent = "no scenes";
})().catch(e => { status.textContent = "error: " + e.message; });
</script></body></html>
"""
