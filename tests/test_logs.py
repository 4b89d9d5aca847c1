"""No log line ever carries a full personal identity code (SPEC 8)."""

from __future__ import annotations

import json

import structlog

from broker import logs


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
