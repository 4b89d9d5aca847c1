"""Structured logging: JSON lines when not on a terminal, readable colours when on one.

Every event passes through ``mask_identity_codes`` last before rendering, so no log line
(nor a traceback rendered into one) ever carries a full personal identity code (SPEC 8) or
a phone number, whoever wrote the call. Names cannot be recognised in free text, so the
callers keep payload text out of log lines: they log codes, lines and counts, and the
full findings go to the private quarantine reports.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from broker.domain.pic import mask_text

# International (+358 40 ...) or national (040-..., 09 ...) numbers of 8+ characters,
# not inside a word or a dotted/dashed identifier (delivery names, timestamps, sizes).
PHONE_RE = re.compile(r"(?<![\w.\-])(?:\+\d{1,3}|0)[\d \-]{6,14}\d(?![\w.])")


def redact(text: str) -> str:
    """Mask identity codes and phone numbers inside free text."""
    return PHONE_RE.sub("<phone>", mask_text(text))


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return type(value)(_mask(v) for v in value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    return value


def mask_identity_codes(_logger: Any, _name: str,
                        event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = _mask(value)
    return event


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Set up structlog once per process (the CLI's entry point calls it)."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (structlog.processors.JSONRenderer(ensure_ascii=False) if json
                     else structlog.dev.ConsoleRenderer())
    # Standard-library loggers (the adapters, asyncssh, paramiko, apscheduler) go
    # through the same masking and rendering, so the stream stays one format.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        # format_exc_info first: an exception attached to a library's log record is
        # rendered to text here, so the masking below sees it (not a repr afterwards).
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True),
                           structlog.stdlib.ExtraAdder(),
                           structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    mask_identity_codes, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("adapters").setLevel(level)  # our own adapters speak at INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_identity_codes,  # last before rendering: masks whatever came before
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)
