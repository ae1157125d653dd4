"""Batch evaluations in the worker.

folders: one task evaluates every (prediction, reference) pair and writes the outputs.
dataset: the first task creates one job per case (published like any job, so cases run in parallel across
workers); when the last job of the evaluation finishes, its worker publishes the finishing task, which
evaluates the results against the dataset's labels (after the label mapping) and writes the outputs.

An evaluation step is claimed with a conditional UPDATE and a lease, like a job, so a duplicate delivery
does nothing and a step whose worker died is taken over once its lease runs out.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from evaluation.batch import CaseResult, run_batch, summarize, write_outputs
from evaluation.dataset import pair_folders, read_dataset
from models.catalog import Catalog
from segserve import jobs as job_states
from segserve.config import Settings
from segserve.db import Evaluation, Job, JobStatus, new_session, utcnow
from segserve.jobs import evaluation_case_counts as case_counts
from segserve.scans.decoded import save_decoded
from segserve.scans.readers import read_image
from segserve.storage import JobFiles
from workers.celery_app import FINISH_EVALUATION, RUN_EVALUATION, send_evaluation_task, send_run_job

log = logging.getLogger(__name__)


def _claim(session: Session, evaluation_id: str, lease_s: float, *, from_status: str) -> bool:
    """Take an evaluation step: status `from_status` with no live lease. Commits."""
    now = utcnow()
    result = session.execute(
        update(Evaluation)
        .where(
            Evaluation.id == evaluation_id,
            Evaluation.status == from_status,
            or_(Evaluation.lease_expires_at.is_(None), Evaluation.lease_expires_at < now),
        )
        .values(
            status=JobStatus.running.value, lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now
        )
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _set(session: Session, evaluation_id: str, **values: Any) -> None:
    session.execute(
        update(Evaluation).where(Evaluation.id == evaluation_id).values(updated_at=utcnow(), **values)
    )
    session.commit()


def _finish(session: Session, evaluation_id: str, status: JobStatus, error: str | None = None) -> None:
    _set(
        session, evaluation_id, status=status.value, error=error, finished_at=utcnow(), lease_expires_at=None
    )


def _labels(params: dict[str, Any]) -> dict[int, str]:
    return {int(k): str(v) for k, v in params["labels"].items()}


def run_evaluation(celery_app: Celery, settings: Settings, evaluation_id: str) -> str:
    """The first step of an evaluation (see the module docstring)."""
    with new_session(settings.resolved_database_url) as session:
        if not _claim(session, evaluation_id, settings.lease_s, from_status=JobStatus.queued.value):
            evaluation = session.get(Evaluation, evaluation_id)
            return "missing" if evaluation is None else f"not claimed ({evaluation.status})"
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        try:
            if evaluation.mode == "folders":
                _run_folders(session, settings, evaluation)
                return "succeeded"
            _create_case_jobs(session, celery_app, settings, evaluation)
            return "jobs published"
        except Exception as exc:
            log.exception("evaluation %s failed", evaluation_id)
            _finish(session, evaluation_id, JobStatus.failed, f"{type(exc).__name__}: {exc}")
            return "failed"


def _run_folders(session: Session, settings: Settings, evaluation: Evaluation) -> None:
    params = evaluation.params
    root = settings.resolved_datasets_dir
    pairs = pair_folders(root / params["predictions"], root / params["references"])
    _set(session, evaluation.id, n_cases=len(pairs))

    def progress(done: int, total: int, _result: CaseResult) -> None:
        lease = utcnow() + timedelta(seconds=settings.lease_s)
        _set(session, evaluation.id, progress=done / total, lease_expires_at=lease)

    results = run_batch(
        [(p.case_id, p.prediction, p.reference) for p in pairs],
        _labels(params),
        tolerance_mm=params.get("tolerance_mm"),
        on_case=progress,
        lesion_labels=params.get("lesion_labels") or (),
    )
    _write(settings, evaluation, results)
    _finish(session, evaluation.id, JobStatus.succeeded)


def _create_case_jobs(
    session: Session, celery_app: Celery, settings: Settings, evaluation: Evaluation
) -> None:
    params = evaluation.params
    dataset = read_dataset(settings.resolved_datasets_dir / params["dataset"])
    card = Catalog(settings.resolved_models_dir).card(params["model"])
    existing = set(session.scalars(select(Job.case_id).where(Job.evaluation_id == evaluation.id)))
    _set(session, evaluation.id, n_cases=len(dataset.cases))
    for case in dataset.cases:
        if case.case_id in existing:  # a re-run after a crash: this case's job exists already
            continue
        job_id = uuid.uuid4().hex
        files = JobFiles(settings.jobs_dir, job_id)
        files.image_dir.mkdir(parents=True)
        name = "0000" + "".join(
            case.image.suffixes[-2:] if case.image.name.endswith(".gz") else case.image.suffixes[-1:]
        )
        shutil.copyfile(case.image, files.image_dir / name)
        image = read_image([files.image_dir / name])
        save_decoded(image, files.input_dir, "image")  # the case's job maps it, not decoding it again
        job = job_states.build_job(
            job_id,
            model_id=card.id,
            model_version=card.version,
            queue=settings.default_queue,
            input_format=image.source_format,
            input_files=[name],
            reference_files=[],
            image_shape=list(image.shape),
            image_spacing_mm=[round(s, 6) for s in image.spacing_mm],
            submitted_by=evaluation.submitted_by,
            evaluation_id=evaluation.id,
            case_id=case.case_id,
        )
        session.add(job)
        session.commit()
        send_run_job(celery_app, job_id, job.queue, job.priority)
        job_states.mark_enqueued(session, job_id)
        _set(session, evaluation.id, lease_expires_at=utcnow() + timedelta(seconds=settings.lease_s))
    # Jobs now carry the work; the evaluation waits without a lease until its last job finishes.
    _set(session, evaluation.id, lease_expires_at=None)
    maybe_finish(celery_app, session, evaluation.id)


def maybe_finish(celery_app: Celery, session: Session, evaluation_id: str) -> bool:
    """Publish the finishing step when every case job has finished. Safe to call from many workers."""
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None or evaluation.status != JobStatus.running.value or evaluation.mode != "dataset":
        return False
    done, total = case_counts(session, evaluation_id)
    if total == 0 or done < total or total < evaluation.n_cases:
        return False
    send_evaluation_task(celery_app, FINISH_EVALUATION, evaluation_id)
    return True


def finish_evaluation(settings: Settings, evaluation_id: str) -> str:
    """Evaluate a dataset evaluation's finished jobs and write its outputs."""
    with new_session(settings.resolved_database_url) as session:
        if not _claim(session, evaluation_id, settings.lease_s, from_status=JobStatus.running.value):
            return "not claimed"
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        done, total = case_counts(session, evaluation_id)
        if done < total:  # an early duplicate: let the last job publish again
            _set(session, evaluation_id, lease_expires_at=None)
            return "not all cases finished"
        try:
            params = evaluation.params
            dataset = read_dataset(settings.resolved_datasets_dir / params["dataset"])
            references = {c.case_id: c.reference for c in dataset.cases}
            label_map = {int(k): int(v) for k, v in (params.get("label_map") or {}).items()}
            case_jobs = session.scalars(
                select(Job).where(Job.evaluation_id == evaluation_id).order_by(Job.case_id)
            ).all()
            ready = [
                (str(j.case_id), JobFiles(settings.jobs_dir, j.id).labels, references[str(j.case_id)])
                for j in case_jobs
                if j.status == JobStatus.succeeded.value
            ]
            results = run_batch(
                ready,
                _labels(params),
                label_map=label_map,
                tolerance_mm=params.get("tolerance_mm"),
                lesion_labels=params.get("lesion_labels") or (),
            )
            results += [
                CaseResult(
                    str(j.case_id),
                    "",
                    str(references.get(str(j.case_id), "")),
                    [],
                    error=f"job {j.id} {j.status}: {j.error or ''}".strip(),
                )
                for j in case_jobs
                if j.status != JobStatus.succeeded.value
            ]
            _write(settings, evaluation, sorted(results, key=lambda r: r.case_id))
            _set(session, evaluation_id, progress=1.0)
            _finish(session, evaluation_id, JobStatus.succeeded)
            return "succeeded"
        except Exception as exc:
            log.exception("evaluation %s failed while summarising", evaluation_id)
            _finish(session, evaluation_id, JobStatus.failed, f"{type(exc).__name__}: {exc}")
            return "failed"


def _write(settings: Settings, evaluation: Evaluation, results: list[CaseResult]) -> None:
    summary = summarize(results, _labels(evaluation.params))
    summary["evaluation_id"] = evaluation.id
    title = f"segserve evaluation {evaluation.id}"
    if evaluation.mode == "dataset":
        title += f": {evaluation.params['model']} on {evaluation.params['dataset']}"
    write_outputs(settings.evaluations_dir / evaluation.id, summary, title)


def recover(celery_app: Celery, session: Session, *, include_queued: bool) -> int:
    """Publish again what a dead worker or a lost message left behind. Returns how many were published.

    - queued evaluations (at start-up only, when the broker may have lost its queue): the first step;
    - running ones whose step lost its lease: folders, or a dataset whose case jobs were not all created
      yet, go back to queued and run the first step again (it skips cases that have a job already);
    - a dataset evaluation whose jobs all finished but whose finishing step never ran: the finishing step.
    """
    now = utcnow()
    count = 0
    conditions = [
        and_(
            Evaluation.status == JobStatus.running.value,
            or_(Evaluation.lease_expires_at.is_(None), Evaluation.lease_expires_at < now),
        )
    ]
    if include_queued:
        conditions.append(Evaluation.status == JobStatus.queued.value)
    for evaluation in session.scalars(select(Evaluation).where(or_(*conditions))).all():
        if evaluation.status == JobStatus.running.value:
            _, created = case_counts(session, evaluation.id)
            if evaluation.mode == "dataset" and evaluation.n_cases and created >= evaluation.n_cases:
                count += int(maybe_finish(celery_app, session, evaluation.id))
                continue
            _set(session, evaluation.id, status=JobStatus.queued.value, lease_expires_at=None)
        send_evaluation_task(celery_app, RUN_EVALUATION, evaluation.id)
        count += 1
    return count
