// Semi-automatic segmentation in the viewer: an interaction session on the open job (POST .../interactions).
// Modes: foreground or background clicks (the click moves the crosshair; the voxel under it is the prompt),
// a box from two clicks on one slice, and painted slices filled between. Each prompt answers with a mask,
// shown in yellow over the labels; Undo drops the last prompt; Accept commits the mask into a new label
// version as an existing structure or a new label the reviewer names. The server keeps the prompts and
// the image; the page keeps only the session id and the mask it shows.
import { NVImage } from "/viewer/static/niivue/index.js";
import { $, api, apiJson, setState, viewer } from "./page.js";

const MASK_LUT = { R: [0, 255], G: [0, 230], B: [0, 0], A: [0, 255], I: [0, 1], labels: ["", "mask"] };
const json = (body) => ({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

// ctx: { view(), image(), labels(), job(), card(), showMask(volume | null), committed(version, names) }
export function setupInteractive(ctx) {
  let session = null; // {id, base}: the open session
  let boxCorner = null; // the first corner of a box
  let pendingClick = false; // a pointer went down on the canvas in a click mode
  let painting = false;
  const mode = () => $("ia-mode").value;
  const base = () => `/v1/jobs/${ctx.job().id}/interactions`;

  function status(text) {
    $("ia-status").textContent = text;
  }

  function reset() {
    generation += 1; // prompts still waiting are not sent
    session = boxCorner = null;
    pendingClick = false;
    if (painting) stopPainting();
    $("ia-mode").value = "off";
    $("ia-undo").disabled = $("ia-accept").disabled = $("ia-cancel").disabled = true;
    $("ia-fill").hidden = true;
    viewer.interactive = { session: null, prompts: 0, voxels: 0, busy: waiting > 0, queued: 0 };
    status("");
  }

  // The engines this service offers (GET /v1/interactive/engines: "classical", installed model engines).
  async function buildEngines() {
    try {
      const { engines } = await apiJson("/v1/interactive/engines");
      $("ia-engine").replaceChildren(...engines.map((name) => new Option(name, name)));
    } catch (_) {
      /* keep "classical": a page without the list still segments */
    }
  }

  function buildTargets() {
    buildEngines();
    const card = ctx.card();
    $("ia-target").replaceChildren(
      new Option("new label (name below)", "new"),
      ...Object.entries(card.labels)
        .filter(([value]) => Number(value) > 0)
        .map(([value, name]) => new Option(`${value} ${name}`, value)),
    );
  }

  async function ensureSession() {
    if (session) return session;
    const created = await apiJson(base(), json({ engine: $("ia-engine").value || "classical" }));
    session = { id: created.id };
    viewer.interactive.session = created.id;
    $("ia-cancel").disabled = false;
    return session;
  }

  // Calls that change the mask (a prompt or undo) run one after another, in the order given: a click made
  // while the previous one is being answered waits its turn (the status shows how many wait) instead of
  // being lost. Cancel or Accept drops those not yet sent (a new generation).
  let queue = Promise.resolve();
  let waiting = 0;
  let generation = 0;

  function change(path, body) {
    const mine = generation;
    waiting += 1;
    const most = Math.max(viewer.interactive.mostQueued || 0, waiting - 1);
    Object.assign(viewer.interactive, { busy: true, queued: waiting - 1, mostQueued: most });
    if (waiting > 1) status(`segmenting… ${waiting - 1} more prompt${waiting > 2 ? "s" : ""} waiting`);
    const run = queue.then(() => (mine === generation ? send(path, body) : undefined));
    queue = run.finally(() => {
      waiting -= 1;
      Object.assign(viewer.interactive, { busy: waiting > 0, queued: Math.max(waiting - 1, 0) });
    });
    return queue;
  }

  // One call: the answer's summary, then the mask itself.
  async function send(path, body) {
    setState("segmenting");
    const started = performance.now();
    try {
      const s = await ensureSession();
      const summary = await apiJson(`${base()}/${s.id}/${path}`, json(body));
      await showMask(summary);
      viewer.interactive.lastMs = performance.now() - started; // prompt -> mask on screen
      setState("loaded");
    } catch (error) {
      setState("error", error.message);
    }
  }

  async function showMask(summary) {
    Object.assign(viewer.interactive, { prompts: summary.prompt_count, voxels: summary.voxels });
    $("ia-undo").disabled = summary.prompt_count === 0;
    $("ia-accept").disabled = summary.voxels === 0;
    status(`${summary.prompt_count} prompts · ${summary.voxels} voxels · ${summary.volume_ml.toFixed(2)} ml`);
    if (!summary.voxels) {
      ctx.showMask(null);
      return;
    }
    // The URL is the same for every prompt: never from the HTTP cache.
    const buffer = await (await api(summary.mask_url, { cache: "no-store" })).arrayBuffer();
    const mask = await NVImage.loadFromUrl({ url: "mask.nii.gz", name: "mask.nii.gz", buffer });
    mask.setColormapLabel(MASK_LUT);
    ctx.showMask(mask);
    viewer.interactive.maskLoads = (viewer.interactive.maskLoads || 0) + 1;
  }

  // Called by the page with the file voxel under the crosshair after every move; acts on canvas clicks only.
  function onVoxel(voxel) {
    if (!pendingClick) return;
    pendingClick = false;
    const m = mode();
    if (m === "foreground" || m === "background") {
      change("prompts", { type: "click", point: voxel, foreground: m === "foreground" });
    } else if (m === "box") {
      if (!boxCorner) {
        boxCorner = voxel;
        status("box: click the opposite corner on the same slice");
        return;
      }
      const lo = voxel.map((v, i) => Math.min(v, boxCorner[i]));
      const hi = voxel.map((v, i) => Math.max(v, boxCorner[i]));
      boxCorner = null;
      change("prompts", { type: "box", lo, hi });
    }
  }

  // --- painted slices ----------------------------------------------------------------------------------

  function startPainting() {
    const nv = ctx.view();
    painting = true;
    nv.createEmptyDrawing();
    nv.opts.penSize = Number($("pen-size").value);
    nv.setDrawingEnabled(true);
    nv.setPenValue(1, false);
    $("ia-fill").hidden = false;
    status("paint the structure on a few slices of one plane, then Fill between slices");
  }

  function stopPainting() {
    const nv = ctx.view();
    painting = false;
    nv.setDrawingEnabled(false);
    nv.closeDrawing();
    $("ia-fill").hidden = true;
  }

  // The drawing in the file's voxel order (NiiVue writes it as a NIfTI on the labels' grid), grouped into
  // one prompt per painted slice along the file axis with the fewest painted slices.
  async function fillBetween() {
    const nv = ctx.view();
    const nifti = new DataView((await ctx.labels().saveToDisk("", nv.drawBitmap)).buffer);
    const dims = [1, 2, 3].map((d) => nifti.getInt16(40 + 2 * d, true));
    const offset = Math.round(nifti.getFloat32(108, true));
    const painted = [];
    for (let n = 0; n < dims[0] * dims[1] * dims[2]; n++) {
      if (nifti.getUint8(offset + n)) {
        painted.push([n % dims[0], Math.floor(n / dims[0]) % dims[1], Math.floor(n / (dims[0] * dims[1]))]);
      }
    }
    if (!painted.length) return status("nothing painted");
    const distinct = [0, 1, 2].map((a) => new Set(painted.map((p) => p[a])).size);
    const axis = distinct.indexOf(Math.min(...distinct));
    const bySlice = new Map();
    for (const p of painted) {
      const uv = p.filter((_, a) => a !== axis);
      if (!bySlice.has(p[axis])) bySlice.set(p[axis], []);
      bySlice.get(p[axis]).push(uv);
    }
    stopPainting();
    for (const [index, pixels] of [...bySlice].sort((a, b) => a[0] - b[0])) {
      await change("prompts", { type: "slice", axis, index, pixels });
    }
  }

  // --- commit and close --------------------------------------------------------------------------------

  async function accept() {
    if (!session) return;
    const choice = $("ia-target").value;
    const name = $("ia-name").value.trim();
    if (choice === "new" && !name) return status("name the new label first");
    const target = choice === "new" ? { name } : { label: Number(choice) };
    await queue; // the mask of every prompt given so far
    setState("saving");
    try {
      const saved = await apiJson(
        `${base()}/${session.id}/commit`,
        json({ target, comment: $("ia-comment").value || "interactive segmentation" }),
      );
      reset();
      ctx.showMask(null);
      await ctx.committed(saved.version, saved.label_names || {});
      viewer.savedVersion = saved.version;
      setState("loaded");
    } catch (error) {
      setState("error", error.message);
    }
  }

  async function cancel() {
    const open = session;
    reset();
    ctx.showMask(null);
    if (open) await api(`${base()}/${open.id}`, { method: "DELETE" }).catch(() => undefined);
  }

  $("ia-mode").addEventListener("change", () => {
    boxCorner = null;
    if (mode() === "paint") startPainting();
    else if (painting) stopPainting();
  });
  $("gl").addEventListener("pointerdown", (event) => {
    pendingClick = event.button === 0 && ["foreground", "background", "box"].includes(mode());
  });
  // A click where the crosshair already is moves nothing, so NiiVue reports no location: the prompt is
  // then the crosshair's voxel (e.g. the same click again after Undo).
  $("gl").addEventListener("pointerup", () => {
    setTimeout(() => pendingClick && viewer.readout && onVoxel(viewer.readout.voxel), 50);
  });
  $("ia-undo").addEventListener("click", () => change("undo", {}));
  $("ia-fill").addEventListener("click", fillBetween);
  $("ia-accept").addEventListener("click", accept);
  $("ia-cancel").addEventListener("click", cancel);
  reset();
  return { reset, buildTargets, onVoxel, cancel };
}
