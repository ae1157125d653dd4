// The open job's metrics table, label version list and review (accept / reject with a comment).
import { $, apiJson, cell, viewer } from "./page.js";

const fmt = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

export async function loadMetrics(job) {
  $("metrics-box").hidden = !job.has_reference;
  if (!job.has_reference) return;
  const metrics = await apiJson(`/v1/jobs/${job.id}/metrics`);
  const rows = metrics.structures.map((s) => [`${s.label} ${s.name}`, fmt(s.dice, 3), fmt(s.hd95_mm, 1)]);
  rows.push(["mean", fmt(metrics.mean?.dice, 3), fmt(metrics.mean?.hd95_mm, 1)]);
  $("metrics").tBodies[0].replaceChildren(
    ...rows.map((values) => {
      const tr = document.createElement("tr");
      tr.append(...values.map(cell));
      return tr;
    }),
  );
}

export async function loadVersions(job, selected) {
  const versions = await apiJson(`/v1/jobs/${job.id}/labels/versions`);
  $("version").replaceChildren(
    ...versions.items.map((item) => {
      const text = item.version === 0 ? "0 (model)" : `${item.version} by ${item.key_id}`;
      return new Option(item.comment ? `${text}: ${item.comment}` : text, item.version);
    }),
  );
  $("version").value = String(selected);
}

export async function loadReview(job) {
  const review = await apiJson(`/v1/jobs/${job.id}/review`);
  const latest = review.latest;
  $("review-state").textContent = latest
    ? `${latest.decision} (label version ${latest.label_version}) by ${latest.key_id} ` +
      `at ${latest.created_at.slice(0, 19)}: ${latest.comment}`
    : "not reviewed";
  viewer.review = review.state;
}

export async function postReview(job, decision) {
  try {
    await apiJson(`/v1/jobs/${job.id}/review`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        decision,
        comment: $("review-comment").value,
        label_version: viewer.labelVersion, // the decision is about the labels on screen
      }),
    });
    await loadReview(job);
  } catch (error) {
    $("review-state").textContent = `Error: ${error.message}`;
  }
}
