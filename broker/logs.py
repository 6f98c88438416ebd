"""Structured (JSON lines) logging for the broker; nothing secret is ever passed to a logger."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["DeliberateAbortFilter", "JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__  # the type only: no traceback, no values
        return json.dumps(entry, default=str)


class DeliberateAbortFilter(logging.Filter):
    """The server's "Exception in ASGI application" for a response the broker aborts on purpose
    (an exception whose class sets ``deliberate_abort``: the integrity check cutting a transfer
    off) becomes one warning line without a traceback; every other exception is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and getattr(exc, "deliberate_abort", False):
            record.msg, record.args = "response aborted on purpose: %s", (exc,)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


_ABORTS = DeliberateAbortFilter()


def configure_logging(level: str = "INFO") -> None:
    """Send the ``telerad`` loggers to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("telerad")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("uvicorn.error").addFilter(_ABORTS)  # once, however many apps are made
