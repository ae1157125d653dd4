// segserve viewer: sign in, worklist, a job's scan with its labels (NiiVue: three planes and 3D), the reference
// beside the prediction, contrast, structures, readout (controls.js), brush corrections (drawing.js), clicks
// segmented into masks (interactive.js), and the review. See views.js for what costs a re-slice.
import {
  CT_PRESETS,
  buildPresets,
  buildStructureList,
  checkAllStructures,
  renderReadout,
  structureAt,
  structureValues,
  windowOf,
} from "./controls.js";
import { setupDrawing } from "./drawing.js";
import { setupInteractive } from "./interactive.js";
import { loadLesions } from "./lesions.js";
import { $, api, apiJson, apiKey, setApiKey, setState, show, viewer } from "./page.js";
import { loadMetrics, loadReview, loadVersions, postReview } from "./review.js";
import {
  decodeVolume,
  exposeViews,
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
let opening = 0; // the newest openJob call; older ones stop when they see a newer one
let drawing = null; // the brush corrections (drawing.js) and
let interactive = null; // the interaction-session controls (interactive.js), both made by wire()

// --- opening a job -----------------------------------------------------------------------------------------

// Drops the open job's volumes while the views are hidden: drawing a view that still holds a 256³ volume
// (its 3D render) stalls the page for seconds in software WebGL, and the next job's decode would wait.
function closeJob() {
  opening += 1; // an open still in flight stops at its next step
  interactive?.cancel();
  image = labels = reference = mask = null;
  if (nv) showVolumes(nv, []);
  if (nvRef) showVolumes(nvRef, []);
  if (drawing.editing()) drawing.stop(); // after the volumes are gone: it redraws
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
    visible = new Set(structureValues(card));
    buildStructureList(card, visible, applyLut);
    drawing.buildPens();
    interactive.buildTargets();
    buildPresets(setWindow);
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
  if (drawing.editing()) drawing.stop();
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

function setWindow(low, high) {
  [image.cal_min, image.cal_max] = [low, high];
  reslice();
}

// The slider is a shader uniform: no re-slice. While drawing, the drawing layer stands in for the labels.
function applyOpacity() {
  const opacity = Number($("opacity").value);
  nv.overlayAlphaShader = overlayOn && !drawing.editing() ? opacity : 0;
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

function setAllVisible(on) {
  visible = new Set(on ? structureValues(card) : []);
  checkAllStructures(on);
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

function onLocation(data) {
  if (!image || !labels) return;
  const scan = structureAt(data, image, card);
  const predicted = structureAt(data, labels, card);
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
  const ref = structureAt(data, reference, card);
  viewer.readout = { ...viewer.readout, reference: ref.name, referenceLabel: ref.value };
  renderReadout();
}


// A committed interaction session: labels the reviewer named join the structure list (in yellow, the
// mask's colour), and the new version is shown.
async function onInteractiveCommit(version, names) {
  for (const [value, name] of Object.entries(names)) {
    card.labels[value] = name;
    card.colors[value] ||= [255, 230, 0];
    visible.add(Number(value));
  }
  buildStructureList(card, visible, applyLut);
  drawing.buildPens();
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
    if (k !== "z" || !drawing.editing()) return;
    nv.drawUndo();
  } else if (moves[k]) moveSlice(...moves[k]);
  else if (k >= "1" && k <= "4") setWindow(...windowOf(CT_PRESETS[k - 1]));
  else if (k === "a") setWindow(image.robust_min, image.robust_max);
  else if (k === "o") (overlayOn = !overlayOn), applyOpacity();
  else if (k === "r") showReference(!viewer.referenceShown);
  else if (k === "v") changeLayout($("layout").value === "multiplanar" ? "axial" : "multiplanar");
  else if (k === "d") drawing.toggle();
  else if (k === "e") drawing.toggleEraser();
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
  drawing = setupDrawing({
    view: () => nv,
    labels: () => labels,
    job: () => job,
    card: () => card,
    applyOpacity,
    showLabels,
    versionSaved: (version) => loadVersions(job, version),
  });
  on("edit", "click", drawing.toggle);
  on("pen", "change", (e) => drawing.setPen(Number(e.target.value)));
  on("pen-size", "change", (e) => (nv.opts.penSize = Number(e.target.value)));
  on("eraser", "click", drawing.toggleEraser);
  on("undo", "click", () => nv.drawUndo());
  on("save-labels", "click", drawing.save);
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
  exposeViews(() => nv, () => nvRef); // for tests and benchmarks
  route();
}

wire();
