// Brush corrections in the viewer: a label pen per structure (0 erases to background), the drawing started
// from the labels shown, undo, and the drawing saved as a new label version (POST /v1/jobs/{id}/labels).
// While drawing, NiiVue's drawing layer stands in for the labels (the page's applyOpacity asks editing()).
import { $, apiJson, gzip, setState, viewer } from "./page.js";
import { decodeVolume } from "./views.js";

// ctx: { view(), labels(), job(), card(), applyOpacity(), showLabels(volume, version), versionSaved(version) }
export function setupDrawing(ctx) {
  let editing = false;
  let lastPen = 1; // the label pen to go back to from the eraser

  function buildPens() {
    const card = ctx.card();
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
    if (editing) ctx.view().setPenValue(value, false);
    updateEraserButton();
  }

  // The eraser button toggles between pen 0 and the last label pen.
  const toggleEraser = () => setPen(Number($("pen").value) === 0 ? lastPen : 0);

  function updateEraserButton() {
    $("eraser").classList.toggle("active", Number($("pen").value) === 0);
  }

  function start() {
    const nv = ctx.view();
    if (!ctx.labels() || editing) return;
    editing = true;
    nv.loadDrawing(ctx.labels()); // the drawing starts as the labels shown, in the card's colours
    nv.opts.penSize = Number($("pen-size").value);
    nv.setDrawingEnabled(true);
    nv.setPenValue(Number($("pen").value), false);
    $("edit").textContent = "Stop drawing";
    $("undo").disabled = $("save-labels").disabled = false;
    ctx.applyOpacity();
    viewer.editing = true;
  }

  function stop() {
    const nv = ctx.view();
    editing = false;
    nv.setDrawingEnabled(false);
    nv.closeDrawing();
    $("edit").textContent = "Draw";
    $("undo").disabled = $("save-labels").disabled = true;
    if (ctx.labels()) ctx.applyOpacity();
    viewer.editing = false;
  }

  async function save() {
    const job = ctx.job();
    setState("saving");
    try {
      const nifti = await ctx.labels().saveToDisk("", ctx.view().drawBitmap); // the file's own voxel order
      const comment = encodeURIComponent($("version-comment").value);
      const saved = await apiJson(`/v1/jobs/${job.id}/labels?comment=${comment}`, {
        method: "POST",
        headers: { "Content-Type": "application/gzip" },
        body: await gzip(nifti),
      });
      // Show what the server stored (one small label volume), not the local drawing.
      const stored = await decodeVolume(`/v1/jobs/${job.id}/result?version=${saved.version}`, "labels.nii.gz");
      stop();
      ctx.showLabels(stored, saved.version);
      await ctx.versionSaved(saved.version);
      $("version-comment").value = "";
      viewer.savedVersion = saved.version;
      setState("loaded");
    } catch (error) {
      setState("error", error.message);
    }
  }

  return {
    buildPens,
    setPen,
    toggleEraser,
    start,
    stop,
    save,
    toggle: () => (editing ? stop : start)(),
    editing: () => editing,
  };
}
