"""The server's log line for a response the broker aborts on purpose: one warning, no traceback."""

from __future__ import annotations

import logging

import pytest

from broker.dicomweb.proxy import CutOff
from broker.logs import DeliberateAbortFilter, JsonFormatter, configure_logging


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - the record needs a live exc_info
        return logging.LogRecord(
            "uvicorn.error",
            logging.ERROR,
            __file__,
            1,
            "Exception in ASGI application\n",
            (),
            (type(caught), caught, caught.__traceback__),
        )


def test_a_cut_transfer_is_one_warning_line() -> None:
    record = _record(CutOff("frame 3 of 1.2.3 does not match its fingerprint"))
    assert DeliberateAbortFilter().filter(record)
    assert record.levelname == "WARNING" and record.exc_info is None
    line = JsonFormatter().format(record)
    assert "Traceback" not in line and "frame 3 of 1.2.3" in line
    assert "response aborted on purpose" in line


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("x")])
def test_other_exceptions_keep_their_traceback(exc: Exception) -> None:
    record = _record(exc)
    assert DeliberateAbortFilter().filter(record)
    assert record.levelname == "ERROR" and record.exc_info is not None


def test_configure_logging_installs_the_filter_once() -> None:
    configure_logging()
    configure_logging()
    filters = logging.getLogger("uvicorn.error").filters
    assert sum(isinstance(f, DeliberateAbortFilter) for f in filters) == 1
