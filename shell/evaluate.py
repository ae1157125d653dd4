"""`segserve evaluate`: batch evaluation from the command line, with a progress bar.

Folders are evaluated in this process. A dataset runs through a model as jobs on the service's queue (so
in parallel across its workers): the command starts the evaluation over the API, follows its progress and
downloads the outputs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from evaluation.batch import CaseResult, run_batch, summarize, write_outputs
from evaluation.dataset import DatasetError, pair_folders, parse_labels
from segserve.config import Settings


def progress_bar(done: int, total: int, note: str = "", width: int = 30) -> None:
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'-' * (width - filled)}] {done}/{total} {note[:40]:<40}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _report(summary: dict[str, Any]) -> int:
    """Print the outcome; exit status 1 when any case failed."""
    dice = summary["foreground_mean"]["Dice"]
    print(f"{summary['n_cases']} cases, {len(summary['failed_cases'])} failed; foreground mean Dice {dice}")
    for case in summary["metric_per_case"]:
        if case["error"]:
            print(f"  {case['case_id']}: {case['error']}", file=sys.stderr)
    return 1 if summary["failed_cases"] else 0


def _labels_for(references: Path, labels_file: str | None) -> dict[int, str]:
    if labels_file:
        raw = json.loads(Path(labels_file).read_text(encoding="utf-8"))
        return parse_labels(raw.get("labels", raw) if isinstance(raw, dict) else raw)
    for candidate in (references / "dataset.json", references.parent / "dataset.json"):
        if candidate.is_file():
            return parse_labels(json.loads(candidate.read_text(encoding="utf-8")).get("labels"))
    raise DatasetError("give --labels FILE (value -> name): no dataset.json next to the references")


def evaluate_folders(
    predictions: Path,
    references: Path,
    out: Path,
    labels_file: str | None,
    tolerance: float | None,
    lesion_labels: tuple[int, ...] = (),
) -> int:
    labels = {v: n for v, n in _labels_for(references, labels_file).items() if v > 0}
    pairs = pair_folders(predictions, references)

    def on_case(done: int, total: int, result: CaseResult) -> None:
        progress_bar(done, total, result.case_id + (" (error)" if result.error else ""))

    results = run_batch(
        [(p.case_id, p.prediction, p.reference) for p in pairs],
        labels,
        tolerance_mm=tolerance,
        on_case=on_case,
        lesion_labels=lesion_labels,
    )
    summary = summarize(results, labels)
    paths = write_outputs(out, summary, f"segserve evaluation: {predictions.name} vs {references.name}")
    for path in paths.values():
        print(path)
    return _report(summary)


def evaluate_dataset(
    settings: Settings, dataset: Path, model: str, out: Path, label_map: str | None, api: str, key: str
) -> int:
    import httpx

    root = settings.resolved_datasets_dir
    resolved = dataset.resolve()
    if not resolved.is_relative_to(root):
        print(f"the dataset must lie under the service's datasets directory {root}", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"dataset": str(resolved.relative_to(root)), "model": model}
    if label_map:
        body["label_map"] = json.loads(label_map)
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        resp = client.post("/v1/evaluations", json=body)
        if resp.status_code != 202:
            print(f"refused ({resp.status_code}): {resp.json().get('detail', resp.text)}", file=sys.stderr)
            return 1
        evaluation = resp.json()
        while evaluation["status"] in ("queued", "running"):
            progress_bar(
                int(evaluation.get("cases_finished") or 0),
                max(int(evaluation["n_cases"]), 1),
                evaluation["status"],
            )
            time.sleep(1.0)
            evaluation = client.get(f"/v1/evaluations/{evaluation['id']}").json()
        progress_bar(int(evaluation["n_cases"]), max(int(evaluation["n_cases"]), 1), evaluation["status"])
        if evaluation["status"] != "succeeded":
            print(f"evaluation {evaluation['status']}: {evaluation.get('error')}", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        for name, link in evaluation["links"]["outputs"].items():
            (out / name).write_bytes(client.get(link).content)
            print(out / name)
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return _report(summary)
