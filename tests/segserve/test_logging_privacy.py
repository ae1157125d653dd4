"""pydicom quotes attribute values in its validation messages (a birth date in the wrong format, a name that
is too long); after `setup_logging` neither its log records nor its warnings reach our logs."""

from __future__ import annotations

import logging
import warnings

import pytest
from pydicom import config
from pydicom.valuerep import validate_value

from segserve import logging as segserve_logging
from segserve.logging import setup_logging


def test_pydicom_messages_with_patient_values_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    # Another test in this process may have run the command line, which calls setup_logging: start from
    # pydicom's own behaviour (its logger without our filter) so that the first check means something.
    logging.getLogger("pydicom").removeFilter(segserve_logging._DROP)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as before:
        warnings.simplefilter("always")
        validate_value("DA", "1961-02-03", config.WARN)  # what pydicom does on its own
    assert "1961-02-03" in caplog.text and before  # so the check below can fail
    caplog.clear()

    setup_logging("DEBUG")
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always", append=True)  # only our filter may hide it
        validate_value("DA", "1962-03-04", config.WARN)
        validate_value("LO", "SECRET-ID-" * 8, config.WARN)
    assert "1962-03-04" not in caplog.text and "SECRET-ID" not in caplog.text
    assert not [w for w in after if "1962-03-04" in str(w.message)]
    logging.getLogger("segserve.test").info("job abc: ok")
    assert "job abc: ok" in caplog.text  # our own records still arrive
