// NiiVue views: creation, volume lists, linking two views, and the colour tables built from a model card.
//
// Cost model (what the page is careful about): every Niivue.updateGLVolume re-slices every volume of that
// view on the GPU, seconds per 256³ volume in software WebGL. addVolume and removeVolume each call it, so
// the page sets a view's whole volume list at once (showVolumes). Overlay opacity is a shader uniform
// (overlayAlphaShader), applied at draw time with no re-slice; colour tables and window/level are baked
// into the re-sliced textures and need one.
import { Niivue, NVImage, SHOW_RENDER, cmapper } from "/viewer/static/niivue/index.js";
import { api, viewer } from "./page.js";

const OPTIONS = {
  backColor: [0, 0, 0, 1],
  show3Dcrosshair: true,
  multiplanarShowRender: SHOW_RENDER.ALWAYS,
  dragAndDropEnabled: false,
  isResizeCanvas: true,
  viewModeHotKey: "", // 'v' is the page's own shortcut; NiiVue would cycle the layout a second time
};

export async function makeView(canvasId) {
  const view = new Niivue(OPTIONS);
  await view.attachTo(canvasId);
  view.setSliceType(view.sliceTypeMultiplanar);
  // Counted so that tests and the benchmark can hold the page to one re-slice per change that needs it.
  const update = view.updateGLVolume.bind(view);
  view.updateGLVolume = () => {
    if (view.volumes.length) viewer.reslices += 1;
    update();
  };
  return view;
}

// What addVolume / removeVolume do to the lists, for the whole list at once: one re-slice, not one per call.
export function showVolumes(view, volumes) {
  view.volumes = volumes;
  view.back = volumes[0] ?? null;
  view.overlays = volumes.slice(1);
  if (volumes.length) view.updateGLVolume();
  else view.drawScene();
}

export async function decodeVolume(path, name) {
  const buffer = await (await api(path)).arrayBuffer();
  viewer.bytes += buffer.byteLength;
  const timing = performance.getEntriesByName(new URL(path, location.href).href).at(-1);
  viewer.transferBytes += timing ? timing.transferSize : 0;
  const volume = await NVImage.loadFromUrl({ url: name, name, buffer });
  viewer.volumeLoads += 1;
  return volume;
}

// Both views show the same scan grid (the prediction and the reference lie on it), so the crosshair is
// passed in mm. NiiVue's broadcastTo does this on mouse input, but only from a focused canvas; keyboard
// moves and layout changes come from the page and use this.
export function mirrorView(from, to) {
  to.scene.crosshairPos = to.mm2frac(from.frac2mm(from.scene.crosshairPos));
  to.scene.pan2Dxyzmm = from.scene.pan2Dxyzmm.slice();
  to.scene.renderAzimuth = from.scene.renderAzimuth;
  to.scene.renderElevation = from.scene.renderElevation;
  to.scene.volScaleMultiplier = from.scene.volScaleMultiplier;
  to.drawScene();
  to.createOnLocationChange();
}

// Linked both ways while both are on screen; unlinked, a hidden view is not redrawn on every move.
export function linkViews(a, b, linked) {
  const sync = { "2d": true, "3d": true };
  a.broadcastTo(linked ? b : [], sync);
  b.broadcastTo(linked ? a : [], sync);
}

export function setLayout(view, layout) {
  const types = {
    multiplanar: view.sliceTypeMultiplanar,
    axial: view.sliceTypeAxial,
    coronal: view.sliceTypeCoronal,
    sagittal: view.sliceTypeSagittal,
    render: view.sliceTypeRender,
  };
  view.setSliceType(types[layout]);
}

// The voxel (i, j, k) of the volume's file under a point in mm: the affine solved by Cramer's rule.
// (NiiVue's own voxel indices are in RAS order, which is not the file's order for e.g. LIA scans.)
export function fileVoxel(volume, mm) {
  const a = volume.hdr.affine;
  const m = [0, 1, 2].map((r) => [a[r][0], a[r][1], a[r][2]]);
  const d = [0, 1, 2].map((r) => mm[r] - a[r][3]);
  const det = (x) =>
    x[0][0] * (x[1][1] * x[2][2] - x[1][2] * x[2][1]) -
    x[0][1] * (x[1][0] * x[2][2] - x[1][2] * x[2][0]) +
    x[0][2] * (x[1][0] * x[2][1] - x[1][1] * x[2][0]);
  const whole = det(m);
  const withColumn = (c) => m.map((row, r) => row.map((v, k) => (k === c ? d[r] : v)));
  return [0, 1, 2].map((c) => Math.round(det(withColumn(c)) / whole));
}

// --- colour tables from the model card --------------------------------------------------------------------

// The overlay's table: structures hidden by the reviewer get alpha 0.
export function labelLut(card, visible) {
  const values = Object.keys(card.labels).map(Number);
  const lut = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  for (let v = 0; v <= Math.max(...values); v++) {
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

// The drawing layer's table: every structure in its card colour. Set before a view's re-slice, which builds
// the colour textures (setDrawColormap would re-slice once more).
export function setDrawColours(view, card) {
  const all = new Set(Object.keys(card.labels).map(Number));
  view.drawLut = cmapper.makeDrawLut(labelLut(card, all));
}

// For tests and benchmarks (on window.segserveViewer): the pixels of the prediction or reference view, and
// both crosshairs in world mm. prediction() and reference() give the views (reference may be null).
export function exposeViews(prediction, reference) {
  viewer.snapshot = (which = "prediction") => {
    const view = which === "reference" ? reference() : prediction();
    view.drawScene(); // draw and read in one task: the buffer is valid without preserveDrawingBuffer
    return view.canvas.toDataURL("image/png");
  };
  viewer.crosshairMM = () => {
    const [nv, nvRef] = [prediction(), reference()];
    return {
      prediction: Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3),
      reference: nvRef ? Array.from(nvRef.frac2mm(nvRef.scene.crosshairPos)).slice(0, 3) : null,
    };
  };
}
