"""Errors raised for input a client sent; the API turns them into 4xx problem responses."""

from __future__ import annotations


class ImageError(ValueError):
    """The client sent an image we cannot use. `code` is a stable machine-readable slug and the message
    says, for a person, what is wrong (never with patient identifiers in it)."""

    code = "invalid_image"
    status = 422

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnsupportedFormat(ImageError):
    """Not an image format we read (a PNG, a text file, ...)."""

    code = "unsupported_format"
    status = 415


class CorruptImage(ImageError):
    """A file in a format we read, but truncated or damaged."""

    code = "corrupt_image"


class NotVolumetric(ImageError):
    """A 2D image, or a 4D one with more than one volume."""

    code = "not_3d"


class InvalidSeries(ImageError):
    """A DICOM series we cannot assemble into one regular volume (several series, gaps, tilt...)."""

    code = "invalid_series"


class GridMismatch(ImageError):
    """A reference label volume whose grid (shape or affine) differs from the image's."""

    code = "grid_mismatch"


class ArchiveTooLarge(ImageError):
    """A zip upload past the caps on entry count or total uncompressed size (a possible zip bomb)."""

    code = "archive_too_large"
    status = 413
