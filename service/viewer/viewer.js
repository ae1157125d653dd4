// segserve viewer: sign in, worklist, a job's scan with its labels (NiiVue: three planes and 3D), the
// reference beside the prediction, contrast, structure toggles, crosshair readout, brush corrections saved
// as label versions, and the review. See views.js for what costs a re-slice.
import { setupInteractive } from "./interactive.js";
import { loadLesions } from "./lesions.js";
import { $, api, apiJson, apiKey, gzip, setApiKey, setState, show, viewer } from "./page.js";
import { loadMetrics, loadReview, loadVersions, postReview } from "./review.js";
import {
  decodeVolume,
  fileVoxel,
  labelLut,
  linkViews,
  makeView,
  mirrorView,
  setDrawColours,
  setLayout,
  showVolumes,
} from "./views.js";
import { loadWorklist, wireWorklist } from "./worklist.js";

const CT_PRESETS = [
  { name: "soft tissue", width: 400, level: 40 },
  { name: "lung", width: 1500, level: -600 },
  { name: "bone", width: 2000, level: 300 },
  { name: "brain", width: 80, level: 40 },
];

let nv = null; // the prediction view
let nvRef = null; // the reference view, made when the reference is first shown
let job = null; // GET /v1/jobs/{id}
let card = null; // GET /v1/models/{id}
let image = null; // NVImage of the scan, shared by both views
let labels = null; // NVImage of the label version shown
let mask = null; // NVImage of an interaction session's mask, over the labels
let reference = null; // NVImage of the reference, fetched when first shown
let referenceStale = false; // its view missed a re-slice while hidden
let visible = new Set(); // label values shown
let overlayOn = true;
let editing = false;
let lastPen = 1; // the label pen to go back to from the eraser
let opening = 0; // the newest openJob call; older ones stop when they see a newer one
let interactive = null; // the interaction-session controls (interactive.js), made by wire()

// --- opening a job -----------------------------------------------------------------------------------------

// Drops the open job's volumes while the views are hidden: drawing a view that still holds a 256³ volume
// (its 3D render) stalls the page for seconds in software WebGL, and the next job's decode would wait.
function closeJob() {
  opening += 1; // an open still in flight stops at its next step
  interactive?.cancel();
  image = labels = reference = mask = null;
  if (nv) showVolumes(nv, []);
  if (nvRef) showVolumes(nvRef, []);
  if (editing) stopEditing(); // after the volumes are gone: it redraws
  setReferencePane(false);
}

async function openJob(jobId) {
  closeJob();
  const token = opening;
  show("viewer");
  setState("loading");
  if (!nv) {
    nv = await makeView("gl");
    nv.onLocationChange = onLocation;
  } else nv.resizeListener(); // the canvas had no size while the worklist was shown
  const started = performance.now();
  Object.assign(viewer, { jobId, openStart: started, decodeMs: null, renderMs: null, bytes: 0 });
  Object.assign(viewer, { transferBytes: 0, labelVersion: 0, savedVersion: null, readout: null });
  try {
    job = await apiJson(`/v1/jobs/${jobId}`);
    if (job.status !== "succeeded") throw new Error(`job is ${job.status}; nothing to show yet`);
    if (job.files_deleted_at) throw new Error(`the job's files were deleted at ${job.files_deleted_at}`);
    const loaded = await Promise.all([
      apiJson(`/v1/models/${job.model.id}`),
      decodeVolume(`/v1/jobs/${jobId}/image`, "image.nii.gz"),
      decodeVolume(`/v1/jobs/${jobId}/result`, "labels.nii.gz"),
    ]);
    if (token !== opening) return;
    [card, image, labels] = loaded;
    viewer.decodeMs = performance.now() - started;
    $("job-title").textContent = `${jobId.slice(0, 12)} · ${card.name || card.id}`;
    visible = new Set(Object.keys(card.labels).map(Number).filter((v) => v > 0));
    buildStructureList();
    buildPens();
    interactive.buildTargets();
    buildPresets();
    const ct = card.modality === "CT"; // MR: automatic contrast (2nd-98th percentile)
    [image.cal_min, image.cal_max] = ct ? windowOf(CT_PRESETS[0]) : [image.robust_min, image.robust_max];
    setDrawColours(nv, card);
    showLabels(labels, 0); // the one re-slice of the open
    nv.drawScene();
    viewer.renderMs = performance.now() - started;
    $("reference-wrap").hidden = !job.has_reference;
    $("show-reference").checked = false;
    nv.createOnLocationChange(); // fill the readout for the initial crosshair
    setState("loaded");
    await Promise.all([loadMetrics(job), loadVersions(job, 0), loadReview(job), loadLesions(job, card, moveTo)]);
  } catch (error) {
    if (token === opening) setState("error", error.message);
  }
}

function showLabels(volume, version) {
  volume.setColormapLabel(labelLut(card, visible)); // before the re-slice, which bakes it in
  labels = volume;
  showVolumes(nv, mask ? [image, labels, mask] : [image, labels]);
  viewer.labelVersion = version;
  $("pred-version").textContent = version ? `(label version ${version})` : "(model)";
  applyOpacity();
}

async function loadLabelVersion(version) {
  if (editing) stopEditing();
  setState("loading");
  try {
    const suffix = version ? `?version=${version}` : "";
    showLabels(await decodeVolume(`/v1/jobs/${job.id}/result${suffix}`, "labels.nii.gz"), version);
    setState("loaded");
  } catch (error) {
    setState("error", error.message);
  }
}

// --- the reference beside the prediction -------------------------------------------------------------------

function setReferencePane(on) {
  $("ref-pane").hidden = !on;
  viewer.referenceShown = on;
  if (nvRef) linkViews(nv, nvRef, on);
  nv?.resizeListener();
  if (on) nvRef.resizeListener();
}

async function showReference(on) {
  if (!job?.has_reference || !labels) return;
  $("show-reference").checked = on;
  if (!on) {
    setReferencePane(false);
    return;
  }
  const token = opening;
  if (!nvRef) {
    $("ref-pane").hidden = false; // a canvas needs its size before NiiVue attaches to it
    nvRef = await makeView("gl-ref");
    nvRef.onLocationChange = onReferenceLocation;
  }
  setReferencePane(true);
  if (!reference) {
    setState("loading-reference");
    try {
      const volume = await decodeVolume(`/v1/jobs/${job.id}/reference`, "reference.nii.gz");
      if (token !== opening) return;
      reference = volume;
      referenceStale = true;
    } catch (error) {
      setState("error", error.message);
      return;
    }
  }
  if (referenceStale) {
    reference.setColormapLabel(labelLut(card, visible));
    showVolumes(nvRef, [image, reference]);
    referenceStale = false;
  }
  setLayout(nvRef, $("layout").value);
  applyOpacity();
  mirrorView(nv, nvRef);
  setState("loaded");
}

// After a change baked into the textures (window/level, colour table): re-slice what is on screen, and
// only mark a hidden reference view.
function reslice() {
  nv.updateGLVolume();
  if (!reference) return;
  if (viewer.referenceShown) nvRef.updateGLVolume();
  else referenceStale = true;
}

// --- contrast, opacity, structures -------------------------------------------------------------------------

const windowOf = (preset) => [preset.level - preset.width / 2, preset.level + preset.width / 2];

function setWindow(low, high) {
  [image.cal_min, image.cal_max] = [low, high];
  reslice();
}

function buildPresets() {
  $("presets").replaceChildren(
    ...CT_PRESETS.map((preset, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `${preset.name} W${preset.width}/L${preset.level}`;
      button.title = String(i + 1);
      button.addEventListener("click", () => setWindow(...windowOf(preset)));
      return button;
    }),
  );
}

// The slider is a shader uniform: no re-slice. While drawing, the drawing layer stands in for the labels.
function applyOpacity() {
  const opacity = Number($("opacity").value);
  nv.overlayAlphaShader = overlayOn && !editing ? opacity : 0;
  nv.setDrawOpacity(opacity);
  if (nvRef) {
    nvRef.overlayAlphaShader = overlayOn ? opacity : 0;
    nvRef.drawScene();
  }
}

function applyLut() {
  const lut = labelLut(card, visible);
  labels.setColormapLabel(lut);
  if (reference) reference.setColormapLabel(lut);
  reslice();
  viewer.lutUpdates += 1;
}

function buildStructureList() {
  $("structures").replaceChildren(
    ...Object.entries(card.labels)
      .filter(([value]) => Number(value) > 0)
      .map(([value, name]) => {
        const box = document.createElement("input");
        box.type = "checkbox";
        box.id = `struct-${value}`;
        box.checked = visible.has(Number(value));
        box.addEventListener("change", () => {
          if (box.checked) visible.add(Number(value));
          else visible.delete(Number(value));
          applyLut();
        });
        const label = document.createElement("label");
        label.htmlFor = box.id;
        label.append(swatch(value), `${value} ${name}`);
        const li = document.createElement("li");
        li.append(box, label);
        return li;
      }),
  );
}

function swatch(value) {
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.background = `rgb(${(card.colors[value] || [0, 0, 0]).join(",")})`;
  return span;
}

function setAllVisible(on) {
  visible = new Set(on ? Object.keys(card.labels).map(Number).filter((v) => v > 0) : []);
  for (const box of $("structures").querySelectorAll("input")) box.checked = on;
  applyLut();
}

// --- crosshair readout -------------------------------------------------------------------------------------

// Moves the crosshair to a point in world mm (RAS), as a click there would (the readout follows).
function moveTo(mm) {
  if (!nv || !image) return;
  nv.scene.crosshairPos = nv.mm2frac(mm);
  nv.drawScene();
  nv.createOnLocationChange();
}

function structureAt(data, volume) {
  const at = data.values.find((v) => v.id === volume.id);
  const value = Math.round(at?.value ?? 0);
  const name = value > 0 ? card.labels[value] || `label ${value}` : "background";
  return { name, value, intensity: at?.value };
}

function onLocation(data) {
  if (!image || !labels) return;
  const scan = structureAt(data, image);
  const predicted = structureAt(data, labels);
  viewer.readout = {
    ...viewer.readout,
    structure: predicted.name,
    label: predicted.value,
    intensity: scan.intensity,
    mm: Array.from(data.mm).slice(0, 3),
    voxel: fileVoxel(labels, data.mm),
  };
  renderReadout();
  interactive.onVoxel(viewer.readout.voxel);
}

function onReferenceLocation(data) {
  if (!image || !reference || !viewer.readout) return;
  const ref = structureAt(data, reference);
  viewer.readout = { ...viewer.readout, reference: ref.name, referenceLabel: ref.value };
  renderReadout();
}

function renderReadout() {
  const r = viewer.readout;
  const shown = Number.isFinite(r.intensity) ? Math.round(r.intensity * 100) / 100 : "";
  let text = `${r.structure} (${r.label})  intensity ${shown}  voxel ${r.voxel?.join(", ")}`;
  if (viewer.referenceShown && r.reference) text += `\nreference: ${r.reference} (${r.referenceLabel})`;
  $("readout").textContent = text;
}

// --- drawing -----------------------------------------------------------------------------------------------

function buildPens() {
  $("pen").replaceChildren(
    ...Object.entries(card.labels).map(([value, name]) => {
      const option = new Option(Number(value) === 0 ? "0 eraser (background)" : `${value} ${name}`, value);
      if (Number(value) > 0) option.style.color = `rgb(${(card.colors[value] || [255, 255, 255]).join(",")})`;
      return option;
    }),
  );
  lastPen = Number(Object.keys(card.labels).find((v) => Number(v) > 0) ?? 1);
  $("pen").value = String(lastPen);
  updateEraserButton();
}

function setPen(value) {
  $("pen").value = String(value);
  if (value > 0) lastPen = value;
  // Pen 0 erases to background (-0 would erase a whole cluster in NiiVue: not offered).
  if (editing) nv.setPenValue(value, false);
  updateEraserButton();
}

function updateEraserButton() {
  $("eraser").classList.toggle("active", Number($("pen").value) === 0);
}

function startEditing() {
  if (!labels || editing) return;
  editing = true;
  nv.loadDrawing(labels); // the drawing starts as the labels shown, in the card's colours (setDrawColours)
  nv.opts.penSize = Number($("pen-size").value);
  nv.setDrawingEnabled(true);
  nv.setPenValue(Number($("pen").value), false);
  $("edit").textContent = "Stop drawing";
  $("undo").disabled = $("save-labels").disabled = false;
  applyOpacity();
  viewer.editing = true;
}

function stopEditing() {
  editing = false;
  nv.setDrawingEnabled(false);
  nv.closeDrawing();
  $("edit").textContent = "Draw";
  $("undo").disabled = $("save-labels").disabled = true;
  if (labels) applyOpacity();
  viewer.editing = false;
}

async function saveLabels() {
  setState("saving");
  try {
    const nifti = await labels.saveToDisk("", nv.drawBitmap); // the drawing in the file's own voxel order
    const comment = encodeURIComponent($("version-comment").value);
    const saved = await apiJson(`/v1/jobs/${job.id}/labels?comment=${comment}`, {
      method: "POST",
      headers: { "Content-Type": "application/gzip" },
      body: await gzip(nifti),
    });
    // Show what the server stored (one small label volume), not the local drawing.
    const stored = await decodeVolume(`/v1/jobs/${job.id}/result?version=${saved.version}`, "labels.nii.gz");
    stopEditing();
    showLabels(stored, saved.version);
    await loadVersions(job, saved.version);
    $("version-comment").value = "";
    viewer.savedVersion = saved.version;
    setState("loaded");
  } catch (error) {
    setState("error", error.message);
  }
}

// A committed interaction session: labels the reviewer named join the structure list (in yellow, the
// mask's colour), and the new version is shown.
async function onInteractiveCommit(version, names) {
  for (const [value, name] of Object.entries(names)) {
    card.labels[value] = name;
    card.colors[value] ||= [255, 230, 0];
    visible.add(Number(value));
  }
  buildStructureList();
  buildPens();
  interactive.buildTargets();
  setDrawColours(nv, card);
  showLabels(await decodeVolume(`/v1/jobs/${job.id}/result?version=${version}`, "labels.nii.gz"), version);
  await loadVersions(job, version);
}

// --- keyboard ----------------------------------------------------------------------------------------------

function changeLayout(layout) {
  $("layout").value = layout;
  setLayout(nv, layout);
  if (viewer.referenceShown) {
    setLayout(nvRef, layout);
    mirrorView(nv, nvRef);
  }
}

function moveSlice(dx, dy, dz) {
  nv.moveCrosshairInVox(dx, dy, dz);
  if (viewer.referenceShown) mirrorView(nv, nvRef);
}

// Fields where keys mean something else; a checkbox (structure toggles) does not take arrow keys, so the
// slices still scroll right after a structure was switched.
const TYPING = "textarea, select, input:not([type=checkbox])";

// Listens in the capture phase and stops the keys it uses, so that a focused NiiVue canvas does not act on
// the same key a second time.
function onKey(event) {
  if ($("viewer").hidden || !labels || event.target.closest?.(TYPING)) return;
  const k = event.key;
  const moves = { ArrowUp: [0, 0, 1], PageUp: [0, 0, 1], ArrowDown: [0, 0, -1], PageDown: [0, 0, -1] };
  Object.assign(moves, { ArrowRight: [1, 0, 0], ArrowLeft: [-1, 0, 0] });
  if (event.ctrlKey || event.metaKey) {
    if (k !== "z" || !editing) return;
    nv.drawUndo();
  } else if (moves[k]) moveSlice(...moves[k]);
  else if (k >= "1" && k <= "4") setWindow(...windowOf(CT_PRESETS[k - 1]));
  else if (k === "a") setWindow(image.robust_min, image.robust_max);
  else if (k === "o") (overlayOn = !overlayOn), applyOpacity();
  else if (k === "r") showReference(!viewer.referenceShown);
  else if (k === "v") changeLayout($("layout").value === "multiplanar" ? "axial" : "multiplanar");
  else if (k === "d") (editing ? stopEditing : startEditing)();
  else if (k === "e") setPen(Number($("pen").value) === 0 ? lastPen : 0);
  else return;
  event.preventDefault();
  event.stopPropagation();
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
  else {
    closeJob();
    loadWorklist();
  }
}

async function signIn(key) {
  setApiKey(key);
  try {
    await api("/v1/worklist?limit=1");
  } catch (error) {
    setApiKey(null);
    $("sign-in-error").textContent = error.message;
    setState("signed-out", error.message);
    return;
  }
  $("sign-in-error").textContent = "";
  route();
}

function on(id, type, handler) {
  $(id).addEventListener(type, handler);
}

function wire() {
  performance.setResourceTimingBufferSize(2000); // byte counts per request, for the benchmark
  on("sign-in-form", "submit", (event) => {
    event.preventDefault();
    signIn($("api-key").value.trim());
  });
  on("sign-out", "click", () => {
    setApiKey(null);
    location.hash = "";
    route();
  });
  wireWorklist();
  on("back", "click", () => (location.hash = ""));
  on("auto-contrast", "click", () => setWindow(image.robust_min, image.robust_max));
  on("layout", "change", (e) => changeLayout(e.target.value));
  on("opacity", "input", applyOpacity);
  on("show-reference", "change", (e) => showReference(e.target.checked));
  on("all-on", "click", () => setAllVisible(true));
  on("all-off", "click", () => setAllVisible(false));
  on("version", "change", (e) => loadLabelVersion(Number(e.target.value)));
  on("edit", "click", () => (editing ? stopEditing : startEditing)());
  on("pen", "change", (e) => setPen(Number(e.target.value)));
  on("pen-size", "change", (e) => (nv.opts.penSize = Number(e.target.value)));
  on("eraser", "click", () => setPen(Number($("pen").value) === 0 ? lastPen : 0));
  on("undo", "click", () => nv.drawUndo());
  on("save-labels", "click", saveLabels);
  interactive = setupInteractive({
    view: () => nv,
    labels: () => labels,
    job: () => job,
    card: () => card,
    showMask: (volume) => {
      mask = volume;
      if (!nv || !image) return;
      showVolumes(nv, mask ? [image, labels, mask] : [image, labels]);
      applyOpacity();
    },
    committed: onInteractiveCommit,
  });
  on("accept", "click", () => postReview(job, "accepted"));
  on("reject", "click", () => postReview(job, "rejected"));
  document.addEventListener("keydown", onKey, true);
  window.addEventListener("hashchange", route);
  // For tests and benchmarks: the pixels of a view, its crosshair, and the requests since the job opened.
  viewer.snapshot = (which = "prediction") => {
    const view = which === "reference" ? nvRef : nv;
    view.drawScene(); // draw and read in one task: the buffer is valid without preserveDrawingBuffer
    return view.canvas.toDataURL("image/png");
  };
  viewer.crosshairMM = () => ({
    prediction: Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3),
    reference: nvRef ? Array.from(nvRef.frac2mm(nvRef.scene.crosshairPos)).slice(0, 3) : null,
  });
  viewer.requestsSinceOpen = () =>
    performance
      .getEntriesByType("resource")
      .filter((e) => e.startTime >= viewer.openStart)
      .map((e) => ({ url: new URL(e.name).pathname + new URL(e.name).search, transferSize: e.transferSize }));
  route();
}

wire();
