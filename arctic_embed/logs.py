"""Logging set-up shared by both servers: text or JSON lines, and the access log (one line per request).

Child processes (replicas, tokenizer workers, gateways) read the same choice from `ARCTIC_LOG_FORMAT`, which
`configure` exports, so every line of a server is in one format.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "arctic.access"
_TEXT_FORMAT = "%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON object.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, pid, role, message, extra fields, exc."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "role": self.role,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "INFO", log_format: str | None = None, role: str = "gateway") -> None:
    """Root logging for this process (replaces earlier handlers); exports the format for child processes."""
    log_format = (log_format or os.environ.get("ARCTIC_LOG_FORMAT") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: one of {', '.join(LOG_FORMATS)}")
    os.environ["ARCTIC_LOG_FORMAT"] = log_format
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT.format(role=role)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def access_logger(enabled: bool) -> logging.Logger | None:
    """The access logger when the access log is on, else None (callers skip the work entirely)."""
    if not enabled:
        return None
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    return logger


def log_access(logger: logging.Logger, protocol: str, method: str, status: str | int, duration_s: float,
               peer: str = "", items: int | None = None) -> None:
    """`http POST /v1/embeddings 200 12.3ms peer=127.0.0.1:5555 inputs=64`; the fields also go to JSON logs."""
    extra = {"protocol": protocol, "method": method, "status": status, "duration_ms": round(duration_s * 1e3, 3),
             "peer": peer}
    text = f"{protocol} {method} {status} {duration_s * 1e3:.1f}ms peer={peer or '-'}"
    if items is not None:
        extra["inputs"] = items
        text += f" inputs={items}"
    logger.info(text, extra=extra)
