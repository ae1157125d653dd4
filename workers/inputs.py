"""A job's stored input as a worker reads it: the API's decoded copy where it kept one, else the upload.

The API keeps what it decoded while validating an upload (segserve.scans.decoded); a worker memory-maps
that copy instead of decoding the upload again. A job stored before the copy existed (or one whose copy is
incomplete) is read from its upload as the API read it. The job runner and the interactive worker both read
through `read_job_inputs`, so they take the same path for the same job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from segserve.db import Job
from segserve.imaging.volume import Volume
from segserve.scans.decoded import channel_name, load_decoded
from segserve.scans.readers import check_same_grid, read_channels, read_image, read_labels
from segserve.storage import JobFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobInputs:
    """``volumes``: one per input channel in the model's order (one, the image, for a one-image model);
    ``reference``: the reference label map on the same grid, or None; ``decoded``: True when they were
    mapped from the API's decoded copy, False when the upload was decoded again."""

    volumes: list[Volume]
    reference: Volume | None
    decoded: bool

    @property
    def image(self) -> Volume:
        """The first channel: the grid of the job's result."""
        return self.volumes[0]


def read_job_inputs(
    job: Job,
    files: JobFiles,
    channels: tuple[str, ...],
    *,
    reference: bool = True,
    first_only: bool = False,
) -> JobInputs:
    """The job's input volumes (``channels`` as the model card names them; () for a one-image model).

    Args:
        reference: also read the job's reference segmentation, if it has one (checked to lie on the
            image's grid).
        first_only: only the first channel (what an interactive session segments).
    Raises:
        segserve.imaging.errors.ImageError: an upload that no longer reads (only on the decode path).
    """
    wanted = channels[:1] if first_only else channels
    names = [channel_name(c) for c in wanted] if wanted else ["image"]
    with_reference = reference and bool(job.reference_files)
    kept = [load_decoded(files.input_dir, n) for n in names]
    ref_kept = load_decoded(files.input_dir, "reference") if with_reference else None
    if all(v is not None for v in kept) and (ref_kept is not None or not with_reference):
        volumes = [v for v in kept if v is not None]
        ref = ref_kept
        decoded = True
        log.info("job %s: input mapped from its decoded copy (the upload is not decoded again)", job.id)
    else:
        decoded = False
        log.info("job %s: no decoded copy of the input, decoding the upload", job.id)
        volumes = (
            read_channels([(c, files.channel_paths(c)) for c in wanted])
            if wanted
            else [read_image(files.image_paths(job.input_files))]
        )
        ref = read_labels(files.reference_paths(job.reference_files)) if with_reference else None
    if ref is not None:
        check_same_grid(volumes[0], ref)
    return JobInputs(volumes, ref, decoded)
