"""What a worker does with one job id. Kept apart from Celery so that it reads as plain steps.

The runner owns the job only while its lease is valid: a heartbeat thread renews the lease, so if this
process dies another worker can claim the job once the lease has run out. When the worker is shutting
down (workers/shutdown.py), a job that has not reached its result yet is handed back to the queue at the
model's next step instead (status HANDED_BACK; the task then requeues its message).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.lesion_report import lesion_table, lesionwise_report
from evaluation.report import evaluate_case
from models.card import ModelCard, ModelUnavailable, input_channels
from models.catalog import Catalog
from models.memory import check_job_memory
from segserve import jobs
from segserve.config import Settings
from segserve.db import Job, JobStatus, new_session, session_scope
from segserve.imaging.errors import ImageError
from segserve.imaging.volume import Volume
from segserve.imaging.writers import write_labels_nifti
from segserve.memory import InsufficientMemory, worker_budget
from segserve.storage import JobFiles, is_disk_full, write_json_atomic
from workers import shutdown
from workers.inputs import read_job_inputs

log = logging.getLogger(__name__)
HANDED_BACK = "handed_back"


@dataclass(frozen=True)
class Outcome:
    job_id: str
    status: str
    detail: str = ""
    evaluation_id: str | None = None  # set for the case jobs of a dataset evaluation


class _Lease:
    """Renews the job's lease in the background and carries the latest progress to the database."""

    def __init__(self, settings: Settings, job_id: str, worker: str) -> None:
        self._settings = settings
        self._job_id = job_id
        self._worker = worker
        self._progress: float | None = None
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def report(self, progress: float) -> None:
        self._progress = progress
        self.renew_now()

    def renew_now(self) -> None:
        with session_scope(self._settings.resolved_database_url) as session:
            if not jobs.renew(session, self._job_id, self._worker, self._settings.lease_s, self._progress):
                self.lost = True

    def _run(self) -> None:
        interval = max(1.0, self._settings.lease_s / 4)
        while not self._stop.wait(interval):
            try:
                self.renew_now()
            except Exception:  # a database hiccup: try again next beat, the lease has slack
                log.warning("job %s: lease renewal failed", self._job_id, exc_info=True)


def _cancel_checker(settings: Settings, job_id: str) -> Callable[[], bool]:
    """Returns a cheap `is_cancelled()`: true at once when the worker is stopping (the runner then hands
    the job back), else reads the job's cancel flag at most once a second."""
    last = [0.0, False]

    def is_cancelled() -> bool:
        if shutdown.stopping():
            return True
        now = time.monotonic()
        if now - float(last[0]) >= 1.0:
            with session_scope(settings.resolved_database_url) as session:
                job = session.get(Job, job_id)
                last[1] = job is None or job.cancel_requested
            last[0] = now
        return bool(last[1])

    return is_cancelled


def run_job(settings: Settings, job_id: str, worker: str) -> Outcome:
    """Run one job to a final status. Safe to call twice: the second call finds it claimed or finished."""
    url = settings.resolved_database_url
    with new_session(url) as session:
        if not jobs.claim(session, job_id, worker, settings.lease_s):
            job = session.get(Job, job_id)
            if job is None:
                return Outcome(job_id, "missing", "no such job (deleted)")
            if job.status == JobStatus.running.value and job.cancel_requested:
                jobs.cancel_abandoned_request(session, job_id)
            log.info("job %s: not claimed, status %s", job_id, job.status)
            return Outcome(job_id, job.status, "not claimed", job.evaluation_id)
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)

    files = JobFiles(settings.jobs_dir, job_id)
    log.info("job %s: started on %s (attempt %d, model %s)", job_id, worker, job.attempts, job.model_id)
    handed_back = False
    stages: dict[str, float] = {}
    with _Lease(settings, job_id, worker) as lease:
        status, error, code = JobStatus.succeeded, None, None
        try:
            _execute(settings, job, files, lease, stages)
        except _Stop as stop:
            status, error, code = stop.status, stop.message, stop.code
        except _HandBack:
            handed_back = True
    # The lease thread has stopped here, so no renewal races the release or the finish.
    if lease.lost:
        log.warning("job %s: lease lost, another worker owns it now", job_id)
        return Outcome(job_id, "lost", evaluation_id=job.evaluation_id)
    if handed_back:
        with new_session(url) as session:
            released = jobs.release(session, job_id, worker)
            row = session.get(Job, job_id)
            still_ours = row is not None and row.worker == worker and row.status == JobStatus.running.value
        if released:
            files.remove_results()
            log.info("job %s: handed back to the queue (worker %s is stopping)", job_id, worker)
            return Outcome(job_id, HANDED_BACK, evaluation_id=job.evaluation_id)
        if not still_ours:
            log.warning("job %s: lease lost, another worker owns it now", job_id)
            return Outcome(job_id, "lost", evaluation_id=job.evaluation_id)
        # Not released but still ours: the client asked to cancel it meanwhile.
        status, error, code = JobStatus.cancelled, "cancelled at the client's request", "cancelled"
    if status is not JobStatus.succeeded:
        files.remove_results()
    with new_session(url) as session:
        if jobs.finish(session, job_id, worker, status, error=error, error_code=code) and stages:
            jobs.record_stages(session, job_id, job.attempts, stages)
    log.info("job %s: %s", job_id, status.value)
    return Outcome(job_id, status.value, error or "", job.evaluation_id)


class _HandBack(Exception):
    """The worker is stopping: give the job back to the queue instead of finishing it."""


class _Stop(Exception):
    def __init__(self, status: JobStatus, message: str | None, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@contextmanager
def _stage(stages: dict[str, float], name: str) -> Iterator[None]:
    """Time one stage into `stages[name]` (seconds, wall clock), when it completes."""
    start = time.perf_counter()
    yield
    stages[name] = time.perf_counter() - start


def _execute(settings: Settings, job: Job, files: JobFiles, lease: _Lease, stages: dict[str, float]) -> None:
    """Run the job's stages: read, load, predict, write, evaluate (their seconds go into `stages`)."""
    from models.predictor import Cancelled, get_predictor  # torch is imported in workers only

    catalog = Catalog(settings.resolved_models_dir)
    try:
        status = catalog.status(job.model_id)
        if not status.available:
            raise ModelUnavailable(status.reason or "unavailable")
        card = status.card
        channels = input_channels(card)  # a multi-channel model's inputs: input/image/<channel>/
        budget = worker_budget(settings)

        def check_memory(
            shape: Sequence[int], itemsize: int, spacing_mm: Sequence[float] | None = None
        ) -> None:
            check_job_memory(
                card,
                shape,
                itemsize,
                budget,
                channels=max(1, len(channels)),
                reference=bool(job.reference_files),
                dicom_seg=job.input_format == "dicom",
                spacing_mm=spacing_mm,
            )

        # Before reading, at 1 byte a voxel (the least any input takes): what cannot fit at all fails now;
        # after reading, with the scan's own dtype.
        check_memory(job.image_shape, 1)
        with _stage(stages, "read"):
            inputs = read_job_inputs(job, files, channels)
            volumes, image, reference = (inputs.volumes if channels else []), inputs.image, inputs.reference
        check_memory(image.shape, image.array.dtype.itemsize, image.spacing_mm)
        if shutdown.stopping():
            raise _HandBack()
        lease.report(0.05)
        with _stage(stages, "load"):
            predictor = get_predictor(card, settings.resolved_models_dir, settings.device)

        def on_progress(fraction: float) -> None:
            lease.report(0.05 + 0.85 * fraction)

        is_cancelled = _cancel_checker(settings, job.id)
        if shutdown.stopping():  # loading the model may take a while
            raise _HandBack()
        with _stage(stages, "predict"):
            if channels:  # formats with input channels (MONAI bundles, nnU-Net) take the volumes in order
                labels = predictor.predict(volumes, on_progress=on_progress, is_cancelled=is_cancelled)
            else:
                labels = predictor.predict(image, on_progress=on_progress, is_cancelled=is_cancelled)
        with _stage(stages, "write"):
            files.labels.parent.mkdir(parents=True, exist_ok=True)
            write_labels_nifti(labels, image, files.labels)
            if image.source_format == "dicom":  # a SEG failure is logged and recorded, never fails the job
                from segserve.scans.seg_export import try_export_job_seg

                seg = try_export_job_seg(  # with the volume read above: the series is decoded once per job
                    files.image_paths(job.input_files),
                    files.labels,
                    card,
                    files.seg,
                    job_id=job.id,
                    volume=image,
                    labels=labels,  # as written above: the label volume is not read back
                )
                if seg is not None and settings.dicomweb_push_url:
                    _push_seg(settings, seg, job)
            if card.lesion_labels:
                table = _write_lesions(labels, image.affine, volumes[0] if volumes else image, card, files)
                if image.source_format == "dicom":  # one SEG segment per lesion; failures only recorded
                    from segserve.scans.seg_export import instance_card, try_export_job_seg

                    try_export_job_seg(
                        files.image_paths(job.input_files),
                        files.instances,
                        instance_card(card, table["lesions"]),
                        files.instances_seg,
                        job_id=job.id,
                        volume=image,
                    )
        lease.report(0.95)
        if reference is not None:
            spacing_mm, affine = image.spacing_mm, image.affine
            del image, volumes  # the scan's voxels are done with: the metrics need its labels and spacing
            with _stage(stages, "evaluate"):
                report = evaluate_case(labels, reference.array, card.labels, spacing_mm)
                if card.lesion_labels:
                    report["lesionwise"] = lesionwise_report(
                        labels, reference.array, card.labels, card.lesion_labels, affine, spacing_mm
                    )
                write_json_atomic(files.metrics, report)
    except Cancelled:
        if shutdown.stopping():
            raise _HandBack() from None
        raise _Stop(JobStatus.cancelled, "cancelled at the client's request", "cancelled") from None
    except (ImageError, InsufficientMemory) as exc:
        raise _Stop(JobStatus.failed, str(exc), exc.code) from None
    except ModelUnavailable as exc:
        raise _Stop(
            JobStatus.failed, f"model {job.model_id} is unavailable: {exc}", "model_unavailable"
        ) from None
    except MemoryError:
        raise _Stop(JobStatus.failed, "the worker ran out of memory on this scan", "out_of_memory") from None
    except OSError as exc:
        if not is_disk_full(exc):
            raise _internal_error(job, exc) from None
        log.error("job %s: no space left to write the result (%s)", job.id, exc.strerror)
        raise _Stop(
            JobStatus.failed,
            "the worker could not write the result: the data directory's disk is full "
            f"({exc.strerror}); nothing of the result was kept, submit the job again once there is room",
            "disk_full",
        ) from None
    except Exception as exc:
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):
            raise _Stop(
                JobStatus.failed,
                f"the job exceeded its time limit of {settings.task_soft_time_limit_s} s",
                "time_limit",
            ) from None
        raise _internal_error(job, exc) from None


def _write_lesions(
    labels: np.ndarray, affine: np.ndarray, scan: Volume, card: ModelCard, files: JobFiles
) -> dict[str, Any]:
    """The lesion table (result/lesions.json) and instance volume (result/instances.nii.gz) of a result."""
    intensities: np.ndarray | None = scan.array
    if intensities is None or intensities.shape != labels.shape:  # e.g. a 4D series: no intensity statistics
        intensities = None
    instances, table = lesion_table(labels, card.labels, card.lesion_labels, affine, intensities)
    write_labels_nifti(instances, scan, files.instances)
    write_json_atomic(files.lesions, table)
    return table


def _internal_error(job: Job, exc: Exception) -> _Stop:
    log.error("job %s: internal error", job.id, exc_info=exc)
    return _Stop(
        JobStatus.failed,
        f"internal error in the worker ({type(exc).__name__}); the operators have the details in the "
        "worker log",
        "internal_error",
    )


def _push_seg(settings: Settings, seg: Path, job: Job) -> None:
    """Store the SEG to the configured DICOMweb endpoint (workers/push.py); never fails the job."""
    from celery.exceptions import SoftTimeLimitExceeded

    from workers.push import push_job_seg

    try:
        push_job_seg(settings, seg, job.id, job.submitted_by)
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        log.warning("job %s: SEG push failed (%s)", job.id, type(exc).__name__, exc_info=True)
