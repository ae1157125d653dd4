// The open job's lesion table (models with lesion labels): id, label, volume and RECIST axes of each lesion,
// and, when the job has a reference, the reference's lesions that the prediction missed. Clicking a row (or
// Enter on it) moves the crosshair to the lesion's centroid.
import { $, apiJson, cell, viewer } from "./page.js";

const fmt = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

// LPS (DICOM, the table's centroids) -> RAS (NiiVue's world), in mm
const lpsToRas = (p) => [-p[0], -p[1], p[2]];

function row(values, lps, moveTo, className) {
  const tr = document.createElement("tr");
  tr.append(...values.map(cell));
  tr.tabIndex = 0;
  if (className) tr.className = className;
  const go = () => moveTo(lpsToRas(lps));
  tr.addEventListener("click", go);
  tr.addEventListener("keydown", (event) => {
    if (event.key === "Enter") go();
  });
  return tr;
}

export async function loadLesions(job, card, moveTo) {
  const box = $("lesions-box");
  box.hidden = !(card.lesion_labels && card.lesion_labels.length);
  viewer.lesions = null;
  if (box.hidden) return;
  const table = await apiJson(`/v1/jobs/${job.id}/lesions`);
  const rows = table.lesions.map((l) =>
    row(
      [l.id, l.name, fmt(l.volume_ml, 2), fmt(l.long_axis_mm, 1), fmt(l.short_axis_mm, 1)],
      l.centroid_lps_mm,
      moveTo,
    ),
  );
  let missed = 0;
  for (const [name, items] of Object.entries(table.missed || {})) {
    for (const m of items) {
      missed += 1;
      rows.push(row([`missed ${m.ref_id}`, name, fmt(m.volume_ml, 2), "–", "–"], m.centroid_lps_mm, moveTo, "missed"));
    }
  }
  $("lesions").tBodies[0].replaceChildren(...rows);
  $("lesions-summary").textContent = `${table.n_lesions} lesions` + (table.missed ? `, ${missed} missed` : "");
  viewer.lesions = { count: table.n_lesions, missed };
}
