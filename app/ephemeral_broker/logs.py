"""Logging: text or JSON lines on stderr, structured fields rendered as JSON.

Call sites pass structured fields with `extra={"fields": {...}}`. A field value that is a dict
or a list is rendered as JSON in text mode too, never as a Python repr or "[object Object]"
(defect 11 of the design notes). Nothing here ever receives a value or a secret: call sites
log keys, sizes, codes and request ids only.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

import orjson

LOGGER_NAME: Final = "ephemeral_broker"
logger = logging.getLogger(LOGGER_NAME)
access_logger = logging.getLogger(LOGGER_NAME + ".access")

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def render_field(value: Any) -> str:
    """A field value for a text line: plain when it is a simple token, else JSON."""
    if isinstance(value, str):
        if value and not any(ch.isspace() or ch in '"=' for ch in value):
            return value
        return orjson.dumps(value).decode()
    if isinstance(value, bool) or value is None:
        return orjson.dumps(value).decode()
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, default=str).decode()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={render_field(val)}" for key, val in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update(_fields(record))
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


def configure_logging(level: str, fmt: str) -> None:
    """Route the broker's and uvicorn's loggers to one stderr handler. Idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    numeric = _LEVELS[level]
    broker = logging.getLogger(LOGGER_NAME)
    broker.handlers[:] = [handler]
    broker.setLevel(numeric)
    broker.propagate = False
    # Asked for explicitly with access_log: written whatever log_level says.
    access_logger.setLevel(logging.INFO)
    # uvicorn's own start/stop chatter ("Started server process", "Waiting for application
    # startup"...) repeats our "broker ready"/"broker stopped" lines: shown at debug only. Its
    # warnings and errors (malformed HTTP, a crashed connection) always come through.
    uvicorn = logging.getLogger("uvicorn")
    uvicorn.handlers[:] = [handler]
    uvicorn.setLevel(numeric if numeric == logging.DEBUG else max(numeric, logging.WARNING))
    uvicorn.propagate = False
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.handlers[:] = []
    uvicorn_error.setLevel(logging.NOTSET)
    uvicorn_error.propagate = True
    # uvicorn's access log would duplicate ours (and has no request id): always off.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
    uvicorn_access.disabled = True
