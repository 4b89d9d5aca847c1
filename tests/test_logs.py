"""No log line ever carries a full personal identity code (SPEC 8)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from broker import logs


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """logs.configure points structlog and the root logger at this test's captured
    stderr; put them back, so later tests in this worker do not log into a closed file."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level


def test_identity_codes_are_masked_in_every_field(capsys) -> None:  # type: ignore[no-untyped-def]
    logs.configure(json=True)
    log = structlog.get_logger("t")
    log.info("person 170953-927T looked up", codes=["060885V907H"], nested={"p": "121052X917T"})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert "927T" not in line and "907H" not in line and "917T" not in line
    assert event["event"] == "person 170953-**** looked up"
    assert event["codes"] == ["060885V****"]
    assert event["nested"] == {"p": "121052X****"}


def test_standard_library_loggers_are_masked_and_rendered_too(capsys) -> None:  # type: ignore[no-untyped-def]
    import logging

    logs.configure(json=True)
    logging.getLogger("adapters.sftp_server").info("upload by 170953-927T done")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "upload by 170953-**** done"
    assert event["logger"] == "adapters.sftp_server" and event["level"] == "info"


def test_phone_numbers_are_masked_but_names_and_numbers_of_files_are_not() -> None:
    assert logs.redact("call +358 40 1234567 or 040-7654321 now") == "call <phone> or <phone> now"
    for kept in ("D-pirha-IMMIGRANT-20261203T073100Z-000012.xml", "read 1048576 of 1048576",
                 "2026-12-03T07:31:00Z", "attempt 3 of 3"):
        assert logs.redact(kept) == kept


def test_a_traceback_in_a_log_line_is_masked(capsys) -> None:  # type: ignore[no-untyped-def]
    logs.configure(json=True)
    log = structlog.get_logger("t")
    try:
        raise ValueError("bad person 170953-927T, phone +358401234567")
    except ValueError:
        log.exception("handling failed")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "927T" not in line and "401234567" not in line
    assert "170953-****" in json.loads(line)["exception"]


def test_a_library_loggers_exception_is_masked_too(capsys) -> None:  # type: ignore[no-untyped-def]
    import logging

    logs.configure(json=True)
    try:
        raise ValueError("Matti 010181-900C 040 1234567")
    except ValueError:
        logging.getLogger("adapters.watcher").exception("rescan failed")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "900C" not in line and "1234567" not in line, line
    assert "010181-****" in line
