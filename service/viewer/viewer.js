// segserve viewer: worklist, NiiVue multiplanar + 3D view of a job's scan and labels, metrics, review.
// State for tests and benchmarks: window.segserveViewer and document.body.dataset.state.
import { Niivue, NVImage, SHOW_RENDER } from "/viewer/static/niivue/index.js";

const KEY_STORAGE = "segserve.apiKey";
const CT_PRESETS = [
  { name: "soft tissue", width: 400, level: 40 },
  { name: "lung", width: 1500, level: -600 },
  { name: "bone", width: 2000, level: 300 },
  { name: "brain", width: 80, level: 40 },
];
const $ = (id) => document.getElementById(id);

const viewer = {
  state: "signed-out",
  jobId: null,
  decodeMs: null, // open -> both volumes fetched and decoded
  renderMs: null, // open -> first frame drawn with the overlay
  bytes: 0, // volume bytes decoded for the open job (the .nii.gz files)
  transferBytes: 0, // bytes that crossed the network for them (0 from the HTTP cache)
  volumeLoads: 0, // NVImage decodes since the page opened
  lutUpdates: 0, // label colour table changes (structure toggles)
  readout: null,
  error: null,
  labelVersion: 0,
  snapshot: () => {
    // Draw and read in the same task: the drawing buffer is still valid without preserveDrawingBuffer.
    nv.drawScene();
    return $("gl").toDataURL("image/png");
  },
};
window.segserveViewer = viewer;

let nv = null;
let job = null; // GET /v1/jobs/{id}
let card = null; // GET /v1/models/{id}
let image = null; // NVImage of the scan
let labels = null; // NVImage of the labels shown
let reference = null; // NVImage of the reference, loaded on first use
let visible = new Set(); // label values shown
let overlayOn = true;
let editing = false;

function setState(state, error = null) {
  viewer.state = state;
  viewer.error = error;
  document.body.dataset.state = state;
  $("status-line").textContent = error ? `Error: ${error}` : state;
}

// --- API ------------------------------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      detail = problem.detail || detail;
    } catch (_) {
      /* not a problem document */
    }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();

// --- sign in and worklist -------------------------------------------------------------------------------

function show(section) {
  for (const id of ["sign-in", "worklist", "viewer"]) $(id).hidden = id !== section;
  $("sign-out").hidden = section === "sign-in";
}

async function signIn(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    await api("/v1/worklist?limit=1");
  } catch (error) {
    sessionStorage.removeItem(KEY_STORAGE);
    $("sign-in-error").textContent = error.message;
    setState("signed-out", error.message);
    return;
  }
  $("sign-in-error").textContent = "";
  route();
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

async function loadWorklist() {
  show("worklist");
  setState("worklist-loading");
  const params = new URLSearchParams();
  if ($("filter-status").value) params.set("status", $("filter-status").value);
  if ($("filter-review").value) params.set("review", $("filter-review").value);
  try {
    const list = await apiJson(`/v1/worklist?${params}`);
    const body = $("jobs").tBodies[0];
    body.replaceChildren();
    for (const item of list.items) {
      const tr = document.createElement("tr");
      tr.dataset.job = item.id;
      tr.append(
        cell(item.id.slice(0, 12)),
        cell(item.model),
        cell(item.status),
        cell(item.created_at.replace("T", " ").slice(0, 19)),
        cell(item.has_reference ? "yes" : ""),
        cell(item.review),
      );
      tr.addEventListener("click", () => (location.hash = `#job=${item.id}`));
      body.append(tr);
    }
    setState("worklist");
  } catch (error) {
    setState("error", error.message);
  }
}

// --- label colour table ---------------------------------------------------------------------------------

function labelLut() {
  const values = Object.keys(card.labels).map(Number);
  const max = Math.max(...values);
  const lut = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  for (let v = 0; v <= max; v++) {
    const [r, g, b] = card.colors[v] || [0, 0, 0];
    lut.R.push(r);
    lut.G.push(g);
    lut.B.push(b);
    lut.A.push(v > 0 && visible.has(v) ? 255 : 0);
    lut.I.push(v);
    lut.labels.push(card.labels[v] || "");
  }
  return lut;
}

function applyLut() {
  // Changing the colour table re-colours the overlay; the volumes are not fetched or decoded again.
  const lut = labelLut();
  for (const volume of [labels, reference]) if (volume) volume.setColormapLabel(lut);
  nv.updateGLVolume();
  viewer.lutUpdates += 1;
}

function buildStructureList() {
  const list = $("structures");
  list.replaceChildren();
  for (const [value, name] of Object.entries(card.labels)) {
    if (Number(value) === 0) continue;
    const li = document.createElement("li");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = `struct-${value}`;
    box.checked = visible.has(Number(value));
    box.addEventListener("change", () => {
      if (box.checked) visible.add(Number(value));
      else visible.delete(Number(value));
      applyLut();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${card.colors[value].join(",")})`;
    const label = document.createElement("label");
    label.htmlFor = box.id;
    label.append(swatch, `${value} ${name}`);
    li.append(box, label);
    list.append(li);
  }
  const pen = $("pen");
  pen.replaceChildren();
  for (const [value, name] of Object.entries(card.labels)) {
    pen.append(new Option(Number(value) === 0 ? "0 erase (background)" : `${value} ${name}`, value));
  }
}

function setAllVisible(on) {
  visible = new Set(on ? Object.keys(card.labels).map(Number).filter((v) => v > 0) : []);
  for (const box of $("structures").querySelectorAll("input")) box.checked = on;
  applyLut();
}

// --- contrast, opacity, overlay source --------------------------------------------------------------------

function setWindow(width, level) {
  image.cal_min = level - width / 2;
  image.cal_max = level + width / 2;
  nv.updateGLVolume();
}

function autoContrast() {
  image.cal_min = image.robust_min;
  image.cal_max = image.robust_max;
  nv.updateGLVolume();
}

function applyOverlayOpacity() {
  const opacity = overlayOn && !editing ? Number($("opacity").value) : 0;
  const source = $("overlay-source").value;
  labels.opacity = source === "reference" ? 0 : opacity;
  if (reference) reference.opacity = source === "prediction" ? 0 : opacity;
  nv.setDrawOpacity(Number($("opacity").value));
  nv.updateGLVolume();
}

async function setOverlaySource(source) {
  $("overlay-source").value = source;
  if (source !== "prediction" && !reference && job.has_reference) {
    setState("loading-reference");
    reference = await decodeVolume(`/v1/jobs/${job.id}/reference`, "reference.nii.gz");
    reference.setColormapLabel(labelLut());
    reference.opacity = 0;
    // Below the prediction: "both" shows the reference where the prediction has nothing.
    nv.addVolume(reference);
    nv.setVolume(reference, 1);
    setState("loaded");
  }
  applyOverlayOpacity();
}

// --- volumes ----------------------------------------------------------------------------------------------

async function decodeVolume(path, name) {
  const buffer = await (await api(path)).arrayBuffer();
  viewer.bytes += buffer.byteLength;
  const timing = performance.getEntriesByName(new URL(path, location.href).href).at(-1);
  viewer.transferBytes += timing ? timing.transferSize : 0;
  const volume = await NVImage.loadFromUrl({ url: name, name, buffer });
  viewer.volumeLoads += 1;
  return volume;
}

function ensureNiivue() {
  if (nv) return;
  nv = new Niivue({
    backColor: [0, 0, 0, 1],
    show3Dcrosshair: true,
    multiplanarShowRender: SHOW_RENDER.ALWAYS,
    dragAndDropEnabled: false,
    isResizeCanvas: true,
  });
  nv.attachTo("gl");
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.onLocationChange = onLocation;
}

function onLocation(data) {
  if (!image || !labels) return;
  const at = (volume) => data.values.find((v) => v.id === volume.id);
  const intensity = at(image)?.value;
  const value = Math.round(at(labels)?.value ?? 0);
  const name = value > 0 ? card.labels[value] || `label ${value}` : "background";
  viewer.readout = { structure: name, label: value, intensity, voxel: data.vox };
  const shown = Number.isFinite(intensity) ? Math.round(intensity * 100) / 100 : "";
  $("readout").textContent = `${name} (${value})  intensity ${shown}  voxel ${data.vox.join(", ")}`;
}

function clearVolumes() {
  // removeVolume re-slices what is left after each removal (seconds per 256³ volume in software WebGL);
  // dropping them all at once costs one update of an empty scene.
  nv.volumes = [];
  nv.back = null;
  nv.overlays = [];
  nv.updateGLVolume();
}

async function openJob(jobId) {
  show("viewer");
  ensureNiivue();
  nv.resizeListener();
  setState("loading");
  const started = performance.now();
  Object.assign(viewer, { jobId, decodeMs: null, renderMs: null, bytes: 0, transferBytes: 0, labelVersion: 0 });
  if (editing) stopEditing();
  clearVolumes();
  image = labels = reference = null;
  try {
    job = await apiJson(`/v1/jobs/${jobId}`);
    if (job.status !== "succeeded") throw new Error(`job is ${job.status}; nothing to show yet`);
    [card, image, labels] = await Promise.all([
      apiJson(`/v1/models/${job.model.id}`),
      decodeVolume(`/v1/jobs/${jobId}/image`, "image.nii.gz"),
      decodeVolume(`/v1/jobs/${jobId}/result`, "labels.nii.gz"),
    ]);
    viewer.decodeMs = performance.now() - started;
    $("job-title").textContent = `${jobId.slice(0, 12)} · ${card.name || card.id}`;
    visible = new Set(Object.keys(card.labels).map(Number).filter((v) => v > 0));
    buildStructureList();
    buildPresets();
    if (card.modality === "CT") setWindowValues(CT_PRESETS[0]);
    else [image.cal_min, image.cal_max] = [image.robust_min, image.robust_max];
    nv.addVolume(image);
    labels.setColormapLabel(labelLut()); // before addVolume: one re-slice, and loadVolumes ignores it
    labels.opacity = Number($("opacity").value);
    nv.addVolume(labels);
    $("overlay-source").value = "prediction";
    $("show-wrap").hidden = !job.has_reference;
    nv.drawScene();
    viewer.renderMs = performance.now() - started;
    nv.createOnLocationChange(); // fill the readout for the initial crosshair
    setState("loaded");
    await Promise.all([loadMetrics(), loadVersions(), loadReview()]);
  } catch (error) {
    setState("error", error.message);
  }
}

function setWindowValues(preset) {
  image.cal_min = preset.level - preset.width / 2;
  image.cal_max = preset.level + preset.width / 2;
}

function buildPresets() {
  const box = $("presets");
  box.replaceChildren();
  CT_PRESETS.forEach((preset, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${preset.name} W${preset.width}/L${preset.level}`;
    button.title = String(i + 1);
    button.addEventListener("click", () => setWindow(preset.width, preset.level));
    box.append(button);
  });
}

async function loadLabelVersion(version) {
  setState("loading");
  const suffix = version ? `?version=${version}` : "";
  const next = await decodeVolume(`/v1/jobs/${job.id}/result${suffix}`, "labels.nii.gz");
  next.setColormapLabel(labelLut());
  next.opacity = labels.opacity;
  nv.removeVolume(labels);
  labels = next;
  nv.addVolume(labels);
  viewer.labelVersion = version;
  setState("loaded");
}

// --- metrics, versions, review ---------------------------------------------------------------------------

const fmt = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

async function loadMetrics() {
  $("metrics-box").hidden = !job.has_reference;
  if (!job.has_reference) return;
  const metrics = await apiJson(`/v1/jobs/${job.id}/metrics`);
  const body = $("metrics").tBodies[0];
  body.replaceChildren();
  for (const row of metrics.structures) {
    const tr = document.createElement("tr");
    tr.append(cell(`${row.label} ${row.name}`), cell(fmt(row.dice, 3)), cell(fmt(row.hd95_mm, 1)));
    body.append(tr);
  }
  const tr = document.createElement("tr");
  tr.append(cell("mean"), cell(fmt(metrics.mean?.dice, 3)), cell(fmt(metrics.mean?.hd95_mm, 1)));
  body.append(tr);
}

async function loadVersions(select = null) {
  const versions = await apiJson(`/v1/jobs/${job.id}/labels/versions`);
  const box = $("version");
  box.replaceChildren();
  for (const item of versions.items) {
    const text = item.version === 0 ? "0 (model)" : `${item.version} by ${item.key_id}`;
    box.append(new Option(text, item.version));
  }
  box.value = String(select ?? viewer.labelVersion);
}

async function loadReview() {
  const review = await apiJson(`/v1/jobs/${job.id}/review`);
  const latest = review.latest;
  $("review-state").textContent = latest
    ? `${latest.decision} by ${latest.key_id} at ${latest.created_at.slice(0, 19)}: ${latest.comment}`
    : "not reviewed";
  viewer.review = review.state;
}

async function postReview(decision) {
  try {
    await apiJson(`/v1/jobs/${job.id}/review`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        decision,
        comment: $("review-comment").value,
        label_version: viewer.labelVersion,
      }),
    });
    await loadReview();
  } catch (error) {
    $("review-state").textContent = `Error: ${error.message}`;
  }
}

// --- drawing ---------------------------------------------------------------------------------------------

function startEditing() {
  editing = true;
  const lut = labelLut();
  lut.A = lut.A.map((_, v) => (v > 0 ? 255 : 0));
  nv.setDrawColormap(lut);
  nv.loadDrawing(labels); // the drawing starts as the current labels; pen 0 erases to background
  nv.setDrawingEnabled(true);
  nv.setPenValue(Number($("pen").value), false);
  $("edit").textContent = "Stop drawing";
  $("undo").disabled = $("save-labels").disabled = false;
  applyOverlayOpacity();
}

function stopEditing() {
  editing = false;
  nv.setDrawingEnabled(false);
  nv.closeDrawing();
  $("edit").textContent = "Draw";
  $("undo").disabled = $("save-labels").disabled = true;
  if (labels) applyOverlayOpacity();
}

async function gzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function saveLabels() {
  setState("saving");
  try {
    const nifti = await labels.saveToDisk("", nv.drawBitmap); // drawing back in the file's voxel order
    const saved = await apiJson(`/v1/jobs/${job.id}/labels`, {
      method: "POST",
      headers: { "Content-Type": "application/gzip" },
      body: await gzip(nifti),
    });
    stopEditing();
    await loadLabelVersion(saved.version);
    await loadVersions(saved.version);
    viewer.savedVersion = saved.version;
  } catch (error) {
    setState("error", error.message);
  }
}

// --- keyboard ----------------------------------------------------------------------------------------------

function onKey(event) {
  if ($("viewer").hidden || !labels || event.target.closest("input, textarea, select")) return;
  const k = event.key;
  const moves = { ArrowUp: [0, 0, 1], PageUp: [0, 0, 1], ArrowDown: [0, 0, -1], PageDown: [0, 0, -1] };
  Object.assign(moves, { ArrowRight: [1, 0, 0], ArrowLeft: [-1, 0, 0] });
  if (moves[k]) nv.moveCrosshairInVox(...moves[k]);
  else if (k >= "1" && k <= "4") setWindow(CT_PRESETS[k - 1].width, CT_PRESETS[k - 1].level);
  else if (k === "a") autoContrast();
  else if (k === "o") (overlayOn = !overlayOn), applyOverlayOpacity();
  else if (k === "r" && job.has_reference) {
    const order = ["prediction", "reference", "both"];
    setOverlaySource(order[(order.indexOf($("overlay-source").value) + 1) % 3]);
  } else if (k === "v") {
    nv.setSliceType(nv.opts.sliceType === nv.sliceTypeAxial ? nv.sliceTypeMultiplanar : nv.sliceTypeAxial);
  } else if (k === "d") (editing ? stopEditing : startEditing)();
  else if (k === "z" && (event.ctrlKey || event.metaKey) && editing) nv.drawUndo();
  else return;
  event.preventDefault();
}

// --- wiring ------------------------------------------------------------------------------------------------

function route() {
  if (!apiKey()) {
    show("sign-in");
    setState("signed-out");
    return;
  }
  const match = location.hash.match(/^#job=([0-9a-f]+)$/);
  if (match) openJob(match[1]);
  else loadWorklist();
}

function wire() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("api-key").value.trim());
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    location.hash = "";
    route();
  });
  $("filter-status").addEventListener("change", loadWorklist);
  $("filter-review").addEventListener("change", loadWorklist);
  $("refresh").addEventListener("click", loadWorklist);
  $("back").addEventListener("click", () => (location.hash = ""));
  $("auto-contrast").addEventListener("click", autoContrast);
  $("opacity").addEventListener("input", applyOverlayOpacity);
  $("overlay-source").addEventListener("change", (e) => setOverlaySource(e.target.value));
  $("all-on").addEventListener("click", () => setAllVisible(true));
  $("all-off").addEventListener("click", () => setAllVisible(false));
  $("version").addEventListener("change", (e) => loadLabelVersion(Number(e.target.value)));
  $("edit").addEventListener("click", () => (editing ? stopEditing : startEditing)());
  $("pen").addEventListener("change", (e) => editing && nv.setPenValue(Number(e.target.value), false));
  $("undo").addEventListener("click", () => nv.drawUndo());
  $("save-labels").addEventListener("click", saveLabels);
  $("accept").addEventListener("click", () => postReview("accepted"));
  $("reject").addEventListener("click", () => postReview("rejected"));
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  route();
}

wire();
