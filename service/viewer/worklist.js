// The worklist: jobs newest first, filtered by status and review state on the server, a page at a time.
// Rows show only identifiers safe to display: the job id and, for dataset evaluations, the case id.
import { $, apiJson, cell, setState, show } from "./page.js";

const PAGE_SIZE = 50;
let offset = 0;

export async function loadWorklist() {
  show("worklist");
  setState("worklist-loading");
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset });
  if ($("filter-status").value) params.set("status", $("filter-status").value);
  if ($("filter-review").value) params.set("review", $("filter-review").value);
  try {
    const list = await apiJson(`/v1/worklist?${params}`);
    const body = $("jobs").tBodies[0];
    body.replaceChildren(...list.items.map(row));
    const last = Math.min(list.offset + list.items.length, list.total);
    $("page-info").textContent = list.total ? `${list.offset + 1}–${last} of ${list.total}` : "no jobs";
    $("page-prev").disabled = list.offset === 0;
    $("page-next").disabled = !list.next;
    setState("worklist");
  } catch (error) {
    setState("error", error.message);
  }
}

function row(item) {
  const tr = document.createElement("tr");
  tr.dataset.job = item.id;
  tr.append(
    cell(item.id.slice(0, 12)),
    cell(item.case_id || ""),
    cell(item.model),
    cell(item.status),
    cell(item.created_at.replace("T", " ").slice(0, 19)),
    cell(item.has_reference ? "yes" : ""),
    cell(item.review),
  );
  tr.addEventListener("click", () => (location.hash = `#job=${item.id}`));
  return tr;
}

function firstPage() {
  offset = 0;
  loadWorklist();
}

export function wireWorklist() {
  $("filter-status").addEventListener("change", firstPage);
  $("filter-review").addEventListener("change", firstPage);
  $("refresh").addEventListener("click", loadWorklist);
  $("page-prev").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    loadWorklist();
  });
  $("page-next").addEventListener("click", () => {
    offset += PAGE_SIZE;
    loadWorklist();
  });
}
