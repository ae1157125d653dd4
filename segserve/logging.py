"""Logging setup shared by the API, the workers and the CLI. Log records carry job ids and key ids,
never patient names or IDs: nothing here formats DICOM attributes."""

from __future__ import annotations

import logging
import warnings

_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class _DropRecords(logging.Filter):
    """Drops every record of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


_DROP = _DropRecords()


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_segserve", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._segserve = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    # pydicom logs its validation warnings with the offending value in them ("Invalid value for VR DA:
    # '1960-01-01'" for a birth date): a patient's data. A filter, not a level: pydicom resets its logger's
    # level when it is imported. Its errors still reach our code as exceptions.
    pydicom_logger = logging.getLogger("pydicom")
    if _DROP not in pydicom_logger.filters:
        pydicom_logger.addFilter(_DROP)
    # The same messages as Python warnings would reach stderr, which is the log file of `segserve api`.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
