"""Responses from organisations (SPEC 6): accepted, duplicate, rejected whole, transfers."""

from __future__ import annotations

import dataclasses
from datetime import UTC
from pathlib import Path

import pytest
from click.testing import CliRunner
from lxml import etree
from response_support import (
    ACK_NS,
    EXAMPLES,
    FWD_NS,
    MR_NS,
    T0,
    T1,
    Env,
    ack_of,
    demand,
    dump,
    errors_of,
    make_env,
    receipt,
    response,
    transfer,
    valid_against,
    verdicts,
)
from sqlalchemy import select

from broker.cli import CliState
from broker.cli.notifications import notification_group
from broker.responses.process import process_upload, settle_upload, unreceipted
from broker.storage.response_store import payment_demands, response_events
from broker.storage.store import assignments, input_files, items

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

EXAMPLE = (EXAMPLES / "municipality-response.xml").read_bytes()
N1, N2, N3, N4 = (f"N-2026-00000000{i}" for i in range(1, 5))  # helsinki, vakehyva, pirha x2


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def hops(env: Env, nid: str) -> list[tuple[int, str, str, int | None]]:
    with env.store.engine.connect() as c:
        return [(r.id, r.organisation, r.state, r.transferred_from) for r in c.execute(
            select(assignments).join(items, items.c.seq == assignments.c.item_seq)
            .where(items.c.id == nid).order_by(assignments.c.id))]


def delivered_ids(env: Env, org: str) -> set[str]:
    found: set[str] = set()
    for f in (env.config.outbox / org).glob("D-*.xml"):
        root = etree.parse(str(f)).getroot()
        found |= {el.get("id") for el in root.iter() if etree.QName(el).localname ==
                  "Notification"}
    return found


# ------------------------------------------------------------------ accepted


def test_contract_example_is_accepted_and_applied(env: Env) -> None:
    assert delivered_ids(env, "pirha") == {N3, N4}
    out = env.process("pirha", "vastaus-2026-11-21.xml", EXAMPLE)

    assert out.status == "accepted" and out.problems == []
    assert (out.receipts, out.payment_demands) == (1, 1)
    assert out.transfers == [(N4, "varha")] and out.needs_release
    ack = ack_of(out)
    assert ack.get("status") == "ACCEPTED" and len(ack) == 0
    assert ack.get("file") == "vastaus-2026-11-21.xml"
    assert ack.get("received") == "2026-11-23T13:00:00+02:00"
    assert out.ack_path == env.config.outbox / "pirha" / "acks" / "vastaus-2026-11-21.xml.ack.xml"

    # The receipt and the transfer, every hop visible.
    (a3,) = hops(env, N3)
    assert a3[2] == "handled"
    with env.store.engine.connect() as c:
        assert c.execute(select(assignments.c.handled_on).where(assignments.c.id == a3[0])
                         ).scalar().isoformat() == "2026-11-21"
        demands = c.execute(select(payment_demands)).all()
        files = c.execute(select(input_files).where(input_files.c.kind == "response")).all()
    old, new = hops(env, N4)
    assert old[1:3] == ("pirha", "transferred")
    assert new[1:] == ("varha", "held", old[0])
    assert [(d.organisation, d.demand_id, d.amount, d.payee_iban) for d in demands] == [
        ("pirha", "PD-PIRHA-2026-0042", "412.50", "FI1086094555154084")]
    assert [(f.source, f.name, f.status, f.sha256) for f in files] == [
        ("pirha", "vastaus-2026-11-21.xml", "accepted", out.sha256)]

    # Forwarded to Kela: envelope stamped with org and sha256, content unchanged.
    assert out.forward_path is not None
    assert list((env.config.outbox / "kela").iterdir()) == [out.forward_path]
    data = out.forward_path.read_bytes()
    valid_against(data, FWD_NS)
    env_root = etree.fromstring(data)
    assert (env_root.get("organisation"), env_root.get("sha256")) == ("pirha", out.sha256)
    (inner,) = env_root
    valid_against(etree.tostring(inner), MR_NS)
    original = etree.fromstring(EXAMPLE)
    assert etree.tostring(inner, method="c14n") == etree.tostring(original, method="c14n")
    assert (env.config.outbox / "kela").stat().st_mode & 0o777 == 0o700
    assert out.forward_path.stat().st_mode & 0o777 == 0o600

    # The next release pass delivers the transfer to Varsinais-Suomi as a normal delivery.
    released = env.release(T1)
    assert len(released) == 1 and released[0].startswith("D-varha-UNEMPLOYED_UNDER_25")
    assert delivered_ids(env, "varha") == {N4}
    assert hops(env, N4)[-1][2] == "released"


def test_same_bytes_again_is_duplicate_and_changes_nothing(env: Env) -> None:
    first = env.process("pirha", "a.xml", EXAMPLE)
    settle_upload(env.config.inbox / "pirha" / "a.xml", first, config=env.config,
                  store=env.store, now=T1)
    before = dump(env.store)
    kela_files = sorted((env.config.outbox / "kela").iterdir())

    first_ack = first.ack_path.read_bytes() if first.ack_path else b""
    again = env.process("pirha", "b.xml", EXAMPLE)
    assert again.status == "duplicate"
    assert ack_of(again).get("status") == "DUPLICATE" and again.ack_path is not None
    assert again.ack_path.name == "b.xml.ack.xml"
    # Same name as before: a.xml.ack.xml is about the latest upload of a.xml (SPEC 7);
    # the first one's ack moved to acks/history/ with its received time in the name.
    settle_upload(env.config.inbox / "pirha" / "b.xml", again, config=env.config,
                  store=env.store, now=T1)
    third = env.process("pirha", "a.xml", EXAMPLE)
    assert third.status == "duplicate" and third.ack_path is not None
    assert third.ack_path.name == "a.xml.ack.xml"
    assert ack_of(third).get("status") == "DUPLICATE"
    history = env.config.outbox / "pirha" / "acks" / "history"
    stamp = T1.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    assert [p.name for p in history.iterdir()] == [f"a.xml.{stamp}.ack.xml"]
    assert (history / f"a.xml.{stamp}.ack.xml").read_bytes() == first_ack

    assert dump(env.store) == before
    assert verdicts(env.store) == [("pirha", "a.xml", "accepted"),
                                   ("pirha", "b.xml", "duplicate"),
                                   ("pirha", "a.xml", "duplicate")]
    assert sorted((env.config.outbox / "kela").iterdir()) == kela_files
    assert not third.needs_release


def test_same_bytes_from_another_organisation_is_not_a_duplicate(env: Env) -> None:
    env.process("pirha", "a.xml", response(receipt(N3)))
    other = env.process("vakehyva", "a.xml", response(receipt(N3)))
    assert other.status == "rejected"
    assert errors_of(other) == [(3, "FORBIDDEN")]


def test_transfer_onward_keeps_every_hop(env: Env) -> None:
    assert env.process("pirha", "1.xml", response(transfer(N4, "853"))).status == "accepted"
    # Not yet released to varha: it may not act on it yet.
    early = env.process("varha", "0.xml", response(receipt(N4)))
    assert errors_of(early) == [(3, "FORBIDDEN")]
    env.release(T1)
    out = env.process("varha", "2.xml", response(
        transfer(N4, "091", "muutti Helsinkiin, ks. 060885V907H")))
    assert out.status == "accepted" and out.transfers == [(N4, "helsinki")]
    env.release(T1)
    chain = hops(env, N4)
    assert [(o, s) for _, o, s, _ in chain] == [
        ("pirha", "transferred"), ("varha", "transferred"), ("helsinki", "released")]
    assert [f for *_, f in chain] == [None, chain[0][0], chain[1][0]]
    assert N4 in delivered_ids(env, "helsinki")
    # The first organisation can no longer act on it, and is told why.
    late = env.process("pirha", "3.xml", response(receipt(N4)), now=T1)
    assert late.status == "rejected" and errors_of(late) == [(3, "FORBIDDEN")]
    assert "siirretty" in late.problems[0].message
    # Helsinki receipts it; the story shows every step with the code masked.
    assert env.process("helsinki", "4.xml", response(receipt(N4))).status == "accepted"
    with env.store.engine.connect() as c:
        kinds = [r.kind for r in c.execute(select(response_events).order_by(
            response_events.c.id))]
    assert kinds == ["transfer", "transfer", "receipt"]

    result = CliRunner().invoke(notification_group, ["show", N4], obj=CliState(env.home))
    assert result.exit_code == 0, result.output
    text = result.output
    assert "060885V****" in text and "060885V907H" not in text
    for expected in ("decision-batch.xml", "routed to pirha", "transferred by pirha to varha",
                     "transferred by varha to helsinki", "muutti Helsinkiin",
                     "released to varha", "released to helsinki", "receipted by helsinki"):
        assert expected in text, expected
    assert text.index("transferred by pirha") < text.index("released to varha")

    result = CliRunner().invoke(notification_group, ["show", "N-0"], obj=CliState(env.home))
    assert result.exit_code == 1


def test_notification_show_lists_downloads_from_the_audit_log(env: Env) -> None:
    from broker.storage.audit import AuditEvent, AuditLog
    from broker.storage.state_db import make_engine

    with env.store.engine.connect() as c:
        file_name = c.execute(select(assignments.c.delivery_id).join(
            items, items.c.seq == assignments.c.item_seq).where(items.c.id == N3)).scalar()
    audit = AuditLog(make_engine(env.config.var / "audit.db"))
    audit.record(AuditEvent("download", "pirha", "10.0.0.7", f"/from-kela/{file_name}.xml",
                            100, "0" * 64), T1)
    result = CliRunner().invoke(notification_group, ["show", N3, "--json"],
                                obj=CliState(env.home))
    assert result.exit_code == 0, result.output
    assert '"event": "downloaded"' in result.output and "10.0.0.7" in result.output


def test_a_second_receipt_corrects_the_handled_date(env: Env) -> None:
    assert env.process("pirha", "1.xml", response(receipt(N3, "2026-11-21"))).status == \
        "accepted"
    assert env.process("pirha", "2.xml", response(receipt(N3, "2026-11-22"))).status == \
        "accepted"
    with env.store.engine.connect() as c:
        handled = c.execute(select(assignments.c.handled_on).join(
            items, items.c.seq == assignments.c.item_seq).where(items.c.id == N3)).scalar()
        events = c.execute(select(response_events.c.handled_on)).scalars().all()
    assert handled.isoformat() == "2026-11-22" and len(events) == 2
    # A receipted notification is no longer transferable: it was handled here.
    late = env.process("pirha", "3.xml", response(transfer(N3, "853")))
    assert errors_of(late) == [(3, "INVALID_VALUE")]


def test_unreceipted_counts_delivered_not_receipted(env: Env) -> None:
    by_org = {u.organisation: u for u in unreceipted(env.store, T1)}
    assert {o: u.count for o, u in by_org.items()} == {"helsinki": 1, "pirha": 2, "vakehyva": 1}
    assert by_org["pirha"].oldest_age.total_seconds() == 3600
    env.process("pirha", "a.xml", EXAMPLE)
    env.release(T1)
    by_org = {u.organisation: u for u in unreceipted(env.store, T1)}
    assert "pirha" not in by_org and by_org["varha"].count == 1


def test_identical_payment_demand_again_is_a_no_op_changed_one_is_refused(env: Env) -> None:
    assert env.process("pirha", "1.xml", response(demand("PD-9"))).status == "accepted"
    again = env.process("pirha", "2.xml", response(demand("PD-9"), receipt(N3)))
    assert again.status == "accepted" and again.payment_demands == 0
    changed = env.process("pirha", "3.xml", response(demand("PD-9", amount="1.00")))
    assert errors_of(changed) == [(3, "INVALID_VALUE")]
    with env.store.engine.connect() as c:
        assert len(c.execute(select(payment_demands)).all()) == 1


# ------------------------------------------------------------------ rejected whole

FUTURE = "2026-11-24"
CASES: dict[str, tuple[str, bytes, list[tuple[int | None, str]]]] = {
    "not xml at all": ("pirha", b"%PDF-1.7\n\x00\x01\x02 binary", [(1, "NOT_WELL_FORMED")]),
    "utf-16": ("pirha", "<a/>".encode("utf-16"), [(1, "NOT_WELL_FORMED")]),
    "empty": ("pirha", b"", [(1, "NOT_WELL_FORMED")]),
    "truncated": ("pirha", response(receipt(N3))[:-30], [(3, "NOT_WELL_FORMED")]),
    "doctype": ("pirha", b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "b">]>\n<x/>',
                [(2, "NOT_WELL_FORMED")]),
    "schema": ("pirha", response(receipt(N3, "yesterday"), demand(iban="fi10")),
               [(3, "SCHEMA"), (11, "SCHEMA")]),
    "wrong root": ("pirha", (EXAMPLES / "decision-batch.xml").read_bytes(), [(4, "SCHEMA")]),
    "other org's notification": ("pirha", response(receipt(N3), receipt(N2)),
                                 [(4, "FORBIDDEN")]),
    "transfer of another org's": ("pirha", response(transfer(N1, "853")), [(3, "FORBIDDEN")]),
    "municipality not served": ("pirha", response(demand(municipality="853")),
                                [(5, "FORBIDDEN")]),
    "no payment demand mandate": ("alajarvi", response(demand(municipality="005")),
                                  [(3, "FORBIDDEN")]),
    # Municipalities hold SOCIAL_ASSISTANCE since 2025 (IMMIGRANT), not the county's items.
    "municipality receipts a county's notification": ("alajarvi", response(receipt(N3)),
                                                    [(3, "FORBIDDEN")]),
    "unknown notification": ("pirha", response(receipt("N-2026-999")),
                             [(3, "UNKNOWN_NOTIFICATION")]),
    "bad iban": ("pirha", response(demand(iban="FI1086094555154085")), [(10, "INVALID_VALUE")]),
    "bad identity code": ("pirha", response(demand(pic="170953-927U")), [(4, "INVALID_VALUE")]),
    "period reversed": ("pirha", response(demand(start="2026-11-01")), [(8, "INVALID_VALUE")]),
    "handled in future": ("pirha", response(receipt(N3, FUTURE)), [(3, "INVALID_VALUE")]),
    "unknown municipality": ("pirha", response(transfer(N4, "999")), [(3, "INVALID_VALUE")]),
    "transfer to itself": ("pirha", response(transfer(N4, "020")), [(3, "INVALID_VALUE")]),
    "twice in one file": ("pirha", response(receipt(N3), transfer(N3, "853")),
                          [(4, "INVALID_VALUE")]),
    "mixed": ("pirha", response(receipt(N3), receipt(N1), demand(iban="FI1086094555154085")),
              [(4, "FORBIDDEN"), (12, "INVALID_VALUE")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_whole_with_lines_and_nothing_changes(env: Env, case: str) -> None:
    org, data, expected = CASES[case]
    before = dump(env.store)
    out = env.process(org, "upload.xml", data)
    assert out.status == "rejected"
    assert errors_of(out) == expected
    assert dump(env.store) == before
    assert verdicts(env.store) == [(org, "upload.xml", "rejected")]  # recorded once
    assert not (env.config.outbox / "kela").exists() or not any(
        (env.config.outbox / "kela").iterdir())
    assert all(e.text for e in ack_of(out).iter(f"{{{ACK_NS}}}Error"))


def test_too_large(env: Env) -> None:
    small = dataclasses.replace(env.config, sftp=dataclasses.replace(env.config.sftp,
                                                                     max_upload_bytes=200))
    before = dump(env.store)
    out = env.process("pirha", "big.xml", EXAMPLE, config=small)
    assert out.status == "rejected" and errors_of(out) == [(None, "TOO_LARGE")]
    assert str(len(EXAMPLE)) in out.problems[0].message
    assert dump(env.store) == before


def test_rejected_then_fixed_upload_is_accepted(env: Env) -> None:
    bad = env.process("pirha", "v1.xml", response(receipt(N3), demand(iban="FI00")))
    assert bad.status == "rejected"
    assert hops(env, N3)[0][2] == "released"  # the valid receipt in it was not applied
    path = env.config.inbox / "pirha" / "v1.xml"
    moved = settle_upload(path, bad, config=env.config, store=env.store, now=T1)
    assert moved.parent == env.config.var / "quarantine" / "pirha"
    assert "line 11: SCHEMA" in Path(f"{moved}.report.txt").read_text()
    good = env.process("pirha", "v1.xml", response(receipt(N3)))
    assert good.status == "accepted" and good.ack_path is not None
    # The fixed file under the same name: v1.xml.ack.xml now says ACCEPTED, the
    # REJECTED one is in acks/history/ (SPEC 7), never a stale REJECTED beside it.
    assert good.ack_path.name == "v1.xml.ack.xml" and ack_of(good).get("status") == "ACCEPTED"
    (old,) = (env.config.outbox / "pirha" / "acks" / "history").iterdir()
    assert b'status="REJECTED"' in old.read_bytes()
    assert hops(env, N3)[0][2] == "handled"


# ------------------------------------------------------------------ languages

FORBIDDEN_TEXT = {
    "fi": "Ilmoitusta N-2026-000000002 ei ole toimitettu tälle organisaatiolle.",
    "sv": "Anmälan N-2026-000000002 har inte levererats till denna organisation.",
    "en": "Notification N-2026-000000002 has not been delivered to this organisation.",
}
IBAN_TEXT = {"fi": "PayeeIban: tarkiste ei täsmää.",
             "sv": "PayeeIban: kontrollsiffrorna stämmer inte.",
             "en": "PayeeIban: the check digits do not match."}
MUNICIPALITY_TEXT = {"fi": "Kunta 853 (Turku) ei kuulu tämän organisaation alueeseen.",
                     "sv": "Kommunen 853 (Åbo) hör inte till denna organisations område.",
                     "en": "Municipality 853 (Turku) is not served by this organisation."}


@pytest.mark.parametrize("language", ["fi", "sv", "en"])
def test_messages_in_the_organisations_language(env: Env, language: str) -> None:
    orgs = tuple(dataclasses.replace(o, language=language) if o.id == "pirha" else o
                 for o in env.config.organisations)
    cfg = dataclasses.replace(env.config, organisations=orgs)
    out = env.process("pirha", "x.xml", response(
        receipt(N2), demand(municipality="853", iban="FI1086094555154085")), config=cfg)
    messages = [e.text for e in ack_of(out).iter(f"{{{ACK_NS}}}Error")]
    assert messages == [FORBIDDEN_TEXT[language], MUNICIPALITY_TEXT[language],
                        IBAN_TEXT[language]]


def test_upload_from_the_contract_ack_example_shape(env: Env) -> None:
    """The contract's rejected-ack example: FORBIDDEN on line 4, INVALID_VALUE on line 11."""
    data = EXAMPLE.replace(b'notificationId="N-2026-000000003"',
                           b'notificationId="N-2026-000000001"').replace(
        b"FI1086094555154084", b"FI1086094555154085")
    out = process_upload(env.upload("pirha", "vastaus-2026-11-21.xml", data),
                         env.org("pirha"), config=env.config, store=env.store, now=T1)
    assert errors_of(out) == [(5, "FORBIDDEN"), (16, "INVALID_VALUE")]
    example = etree.parse(str(EXAMPLES / "acknowledgement-rejected.xml")).getroot()
    assert [e.text for e in ack_of(out)] == [e.text for e in example
                                              if isinstance(e.tag, str)]
    assert T0 < T1
