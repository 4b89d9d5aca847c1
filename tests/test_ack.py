"""Acknowledgements and forwards (SPEC 7): form, names, languages, crash recovery."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree
from response_support import (
    ACK_NS,
    EXAMPLES,
    T1,
    Env,
    ack_of,
    demand,
    dump,
    errors_of,
    make_env,
    response,
    valid_against,
)
from sqlalchemy import select, update
from stdnum import iban as stdnum_iban
from stdnum.exceptions import InvalidChecksum, ValidationError

from broker.errors import Problem
from broker.responses import ack
from broker.responses.process import finish_pending, settle_upload
from broker.responses.texts import LANGUAGES, TEXTS
from broker.storage.response_store import response_files

EXAMPLE = (EXAMPLES / "municipality-response.xml").read_bytes()
SHA = "9f2c4b7d0c1e3a5b6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


@pytest.mark.parametrize("status", ["ACCEPTED", "REJECTED", "DUPLICATE"])
def test_rendered_ack_validates(status: str) -> None:
    problems = [Problem("f", 4, "FORBIDDEN", "Ilmoitusta ei ole toimitettu."),
                Problem("f", None, "TOO_LARGE", "liian suuri")] if status == "REJECTED" else []
    data = ack.render_ack(file="vastaus-2026-11-21.xml", sha256=SHA,
                          received=datetime(2026, 11, 21, 8, 15, 7, 123456, tzinfo=UTC),
                          tz="Europe/Helsinki", status=status, problems=problems)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    valid_against(data, ACK_NS)
    root = etree.fromstring(data)
    assert root.get("received") == "2026-11-21T10:15:07+02:00"  # Helsinki, whole seconds
    assert [(e.get("line"), e.get("code")) for e in root] == (
        [("4", "FORBIDDEN"), (None, "TOO_LARGE")] if problems else [])


def test_summer_time_offset() -> None:
    data = ack.render_ack(file="a", sha256=SHA, received=datetime(2026, 7, 1, 9, tzinfo=UTC),
                          tz="Europe/Helsinki", status="ACCEPTED")
    assert etree.fromstring(data).get("received") == "2026-07-01T12:00:00+03:00"


def test_names_xml_cannot_hold_are_made_safe() -> None:
    data = ack.render_ack(file="bad\x01name\x7f.xml", sha256=SHA,
                          received=datetime(2026, 1, 1, tzinfo=UTC), tz="Europe/Helsinki",
                          status="REJECTED", problems=[Problem("f", 0, "SCHEMA", "x\x00y")])
    valid_against(data, ACK_NS)
    root = etree.fromstring(data)
    assert root.get("file") == "bad\ufffdname\x7f.xml"
    assert root[0].get("line") is None and root[0].text == "x\ufffdy"


def test_ack_and_history_names_fit_a_file_name() -> None:
    assert ack.ack_name("v.xml") == "v.xml.ack.xml"
    at = datetime(2026, 11, 21, 8, 15, 7, 999, tzinfo=UTC)
    assert ack.history_name("v.xml", at) == "v.xml.20261121T081507Z.ack.xml"
    assert ack.history_name("v.xml", at, 2) == "v.xml.20261121T081507Z-2.ack.xml"
    long = "ä" * 127 + ".xml"  # 258 bytes
    for name in (ack.ack_name(long), ack.history_name(long, at, 3)):
        assert len(f".{name}.part".encode()) <= 255 and name.endswith(".ack.xml")


def test_every_message_exists_in_every_language_with_the_same_values() -> None:
    fields = string.Formatter()
    for key, texts in TEXTS.items():
        assert set(texts) == set(LANGUAGES), key
        names = [{f for _, f, _, _ in fields.parse(t) if f} for t in texts.values()]
        assert all(n == names[0] for n in names), key


def test_invalid_iban_length_with_a_right_checksum(env: Env) -> None:
    bban = "86094555154084" + "7"  # one digit too many for Finland
    value = f"FI{stdnum_iban.calc_check_digits('FI00' + bban)}{bban}"
    with pytest.raises(ValidationError) as raised:
        stdnum_iban.validate(value)
    assert not isinstance(raised.value, InvalidChecksum)
    out = env.process("pirha", "l.xml", response(demand(iban=value)))
    assert errors_of(out) == [(10, "INVALID_VALUE")]
    assert value in out.problems[0].message


def test_crash_after_commit_is_finished_without_a_duplicate_ack(env: Env) -> None:
    out = env.process("pirha", "vastaus.xml", EXAMPLE)
    assert out.ack_path is not None and out.forward_path is not None
    ack_bytes, fwd_bytes = out.ack_path.read_bytes(), out.forward_path.read_bytes()
    # What a crash between the commit and the file writes leaves behind:
    out.ack_path.unlink()
    out.forward_path.unlink()
    with env.store.engine.begin() as c:
        c.execute(update(response_files).values(state="pending"))
    before = dump(env.store)

    assert finish_pending(env.config, env.store) == 1
    assert out.ack_path.read_bytes() == ack_bytes
    assert out.forward_path.read_bytes() == fwd_bytes
    assert finish_pending(env.config, env.store) == 0

    # The daemon's rescan finds the upload still in the inbox: same answer, no DUPLICATE.
    path = env.config.inbox / "pirha" / "vastaus.xml"
    again = env.process("pirha", "vastaus.xml", EXAMPLE)
    assert again.status == "accepted" and again.replayed
    assert again.ack_path == out.ack_path
    assert sorted(p.name for p in out.ack_path.parent.iterdir()) == ["vastaus.xml.ack.xml"]
    assert ack_of(again).get("status") == "ACCEPTED"
    assert dump(env.store) == before

    moved = settle_upload(path, again, config=env.config, store=env.store, now=T1)
    assert moved.parent.parent == env.config.var / "archive" / "pirha"
    assert not path.exists()
    # Settled: now the same bytes really are a duplicate, and its ack is the current one.
    dup = env.process("pirha", "vastaus.xml", EXAMPLE)
    assert dup.status == "duplicate" and dup.ack_path is not None
    assert dup.ack_path.name == "vastaus.xml.ack.xml"
    assert ack_of(dup).get("status") == "DUPLICATE"


def test_finish_pending_settles_uploads_that_left_the_inbox(env: Env) -> None:
    out = env.process("pirha", "v.xml", EXAMPLE)
    (env.config.inbox / "pirha" / "v.xml").unlink()  # moved by an older daemon, say
    assert finish_pending(env.config, env.store) == 0
    with env.store.engine.connect() as c:
        assert c.execute(select(response_files.c.settled_at)).scalar() is not None
    dup = env.process("pirha", "v.xml", EXAMPLE)
    assert dup.status == "duplicate" and out.status == "accepted"


def test_acks_and_forwards_are_private(env: Env) -> None:
    out = env.process("pirha", "v.xml", EXAMPLE)
    rejected = env.process("pirha", "w.xml", b"nope")
    for p in (out.ack_path, out.forward_path, rejected.ack_path):
        assert p is not None and p.stat().st_mode & 0o777 == 0o600
    assert (env.config.outbox / "pirha" / "acks").stat().st_mode & 0o777 == 0o700
