// The reidkit search page: plain JavaScript, no framework, nothing fetched from outside the service.
// Every value from the server is written with textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { galleryOffset: 0, pageSize: 40, lastQuery: null, thumbUrls: [] };

function apiKey() { return sessionStorage.getItem("reidkit-api-key") || ""; }
function headers() { const k = apiKey(); return k ? { "X-API-Key": k } : {}; }

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) { $("key-box").open = true; }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(err) { const box = $("error"); box.textContent = err ? String(err.message || err) : ""; box.hidden = !err; }
function setStatus(text) { $("status").textContent = text; }

// ------------------------------------------------------------------ thumbnails
function thumb(entryId) {
  const img = document.createElement("img");
  img.alt = `entry ${entryId}`;
  img.loading = "lazy";
  if (!apiKey()) { img.src = `/thumb/${entryId}`; return img; }
  api(`/thumb/${entryId}`).then((r) => r.blob()).then((blob) => {  // <img> cannot send the key header
    const url = URL.createObjectURL(blob); state.thumbUrls.push(url); img.src = url;
  }).catch(() => { img.alt = "image unavailable"; });
  return img;
}

function releaseThumbs() { state.thumbUrls.forEach((u) => URL.revokeObjectURL(u)); state.thumbUrls = []; }

function formatTime(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function card(entry, extra) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.id = entry.id;
  div.tabIndex = 0;
  if (extra && extra.match === true) div.classList.add("correct");
  if (extra && extra.match === false) div.classList.add("wrong");
  div.appendChild(thumb(entry.id));
  const meta = document.createElement("div");
  meta.className = "meta";
  const rows = extra ? [["#", String(extra.rank)], ["score", extra.score.toFixed(4)]] : [["id", String(entry.id)]];
  rows.push(["camera", entry.camid ?? "-"], ["pid", entry.pid ?? "-"], ["time", formatTime(entry.timestamp)]);
  if (entry.track_id !== null && entry.track_id !== undefined) rows.push(["track", String(entry.track_id)]);
  for (const [key, value] of rows) {
    const k = document.createElement("span"); k.textContent = key;
    const v = document.createElement("span"); v.textContent = String(value);
    if (key === "#") v.className = "rank";
    meta.append(k, v);
  }
  div.appendChild(meta);
  const go = () => searchById(entry.id);
  div.addEventListener("click", go);
  div.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
  return div;
}

// ------------------------------------------------------------------ search
function searchForm() {
  const form = new FormData();
  form.append("topk", $("topk").value || "10");
  form.append("rerank", $("rerank").checked ? "true" : "false");
  form.append("exclude_own_camera", $("exclude-own").checked ? "true" : "false");
  if ($("camids").value.trim()) form.append("camids", $("camids").value.trim());
  return form;
}

async function runSearch(form, label) {
  showError(null);
  setStatus("searching...");
  const started = performance.now();
  try {
    const body = await (await api("/search", { method: "POST", body: form })).json();
    showMatches(body, label, performance.now() - started);
  } catch (err) { showError(err); setStatus(""); }
}

function searchByFile(file) {
  state.lastQuery = { file };
  const preview = $("query-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("query-info").textContent = `upload: ${file.name} (${Math.round(file.size / 1024)} KiB)`;
  const form = searchForm();
  form.append("file", file);
  if ($("query-camid").value !== "") form.append("camid", $("query-camid").value);
  if ($("query-pid").value !== "") form.append("pid", $("query-pid").value);
  return runSearch(form, "the uploaded image");
}

function searchById(entryId) {
  state.lastQuery = { id: entryId };
  const preview = $("query-preview");
  preview.hidden = true;
  const img = thumb(entryId);
  img.id = "query-preview";
  preview.replaceWith(img);
  $("drop-hint").hidden = true;
  $("query-info").textContent = `gallery entry ${entryId}`;
  const form = searchForm();
  form.append("id", String(entryId));
  showTab("matches");
  return runSearch(form, `entry ${entryId}`);
}

function showMatches(body, label, ms) {
  releaseThumbs();
  const grid = $("results");
  grid.replaceChildren(...body.matches.map((m) => card(m, m)));
  grid.dataset.searches = String(Number(grid.dataset.searches || 0) + 1);  // lets a test wait for this answer
  const q = body.query;
  const known = q.pid !== null && q.pid !== undefined;
  $("score-note").textContent = `${body.matches.length} matches for ${label}` +
    (q.camid !== null && q.camid !== undefined ? ` (camera ${q.camid})` : "") +
    (known ? `, pid ${q.pid}: green = same person, red = another` : "") + `. Score: ${body.score}.`;
  setStatus(`${Math.round(ms)} ms`);
}

// ------------------------------------------------------------------ gallery
async function loadGallery() {
  showError(null);
  const params = new URLSearchParams({ offset: state.galleryOffset, limit: state.pageSize });
  if ($("filter-camid").value !== "") params.append("camid", $("filter-camid").value);
  if ($("filter-pid").value !== "") params.append("pid", $("filter-pid").value);
  try {
    const page = await (await api(`/gallery?${params}`)).json();
    $("gallery").replaceChildren(...page.entries.map((e) => card(e, null)));
    const last = Math.min(page.offset + page.entries.length, page.total);
    $("page-info").textContent = page.total ? `${page.offset + 1}-${last} of ${page.total}` : "no entries";
    $("prev-page").disabled = page.offset === 0;
    $("next-page").disabled = last >= page.total;
  } catch (err) { showError(err); }
}

function showTab(name) {
  $("matches-view").hidden = name !== "matches";
  $("gallery-view").hidden = name !== "gallery";
  $("matches-tab").classList.toggle("active", name === "matches");
  $("gallery-tab").classList.toggle("active", name === "gallery");
  if (name === "gallery") loadGallery();
}

// ------------------------------------------------------------------ model card
function pct(value) { return value === null || value === undefined ? null : `${(100 * value).toFixed(1)}%`; }

async function loadInfo() {
  try {
    const info = await (await api("/info")).json();
    const c = info.card || {};
    const ev = c.evaluation;
    const items = [
      ["model", `${info.model.name} (${info.model.sha256.slice(0, 12)})`],
      ["trained on", c.trained_on || "not known"],
      ["evaluation", ev ? `rank-1 ${pct(ev.rank1) || "?"}, mAP ${pct(ev.mAP) || "?"}` + (ev.dataset ? ` on ${ev.dataset}` : "")
                        : "not known (no eval.json / results.json beside the checkpoint)"],
      ["gallery", `${info.index.count.toLocaleString()} entries, ${info.index.dim}-d ${info.index.kind}`],
    ];
    $("model-card").replaceChildren(...items.map(([k, v]) => {
      const span = document.createElement("span");
      const b = document.createElement("b"); b.textContent = `${k}: `;
      span.append(b, document.createTextNode(v));
      return span;
    }));
    $("topk").max = info.limits.max_topk;
  } catch (err) { $("model-card").textContent = `model card unavailable: ${err.message}`; }
}

// ------------------------------------------------------------------ wiring
function init() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (e) => { if (e.target.files.length) searchByFile(e.target.files[0]); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    if (e.dataTransfer.files.length) searchByFile(e.dataTransfer.files[0]);
  });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter") $("file-input").click(); });
  $("options").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = state.lastQuery;
    if (q && q.file) searchByFile(q.file); else if (q) searchById(q.id); else showError("pick a query image first");
  });
  $("matches-tab").addEventListener("click", () => showTab("matches"));
  $("gallery-tab").addEventListener("click", () => showTab("gallery"));
  $("gallery-filters").addEventListener("submit", (e) => { e.preventDefault(); state.galleryOffset = 0; loadGallery(); });
  $("prev-page").addEventListener("click", () => { state.galleryOffset = Math.max(0, state.galleryOffset - state.pageSize); loadGallery(); });
  $("next-page").addEventListener("click", () => { state.galleryOffset += state.pageSize; loadGallery(); });
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", (e) => { sessionStorage.setItem("reidkit-api-key", e.target.value); loadInfo(); });
  loadInfo();
}

init();
