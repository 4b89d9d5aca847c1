"""Tables and queries for responses from organisations (SPEC 6 and 7).

- ``response_files``: one row per upload taken, whatever its verdict (accepted,
  rejected, duplicate): the verdict is recorded once, with the rendered acknowledgement
  (and, when accepted, the forward to Kela and the ``input_files`` row its changes hang
  off), so the files can be (re)written from the database after a crash between the
  commit and the writes, and a retry never decides, nor acknowledges, twice. ``state``
  is pending until the files are on disk; ``settled_at`` is set when the upload left the
  inbox (an unsettled upload seen again is a crash leftover or a retry, never a new
  upload).
- ``response_events``: every receipt and transfer, the history ``notification show``
  tells; the hops themselves are also in ``assignments.transferred_from``.
- ``payment_demands``: accepted payment demands, unique per (organisation, id).

A rejected or duplicate upload changes nothing else in the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Column,
    Date,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection

from broker.storage.db import ByteSize, in_chunks, metadata
from broker.storage.states import DeliveryState, Verdict, state_column_type
from broker.storage.tables import UTCDateTime, assignments, deliveries, input_files, items

response_files = Table(
    "response_files", metadata,
    Column("id", Integer, primary_key=True),
    # Set for an accepted upload: its changes hang off this input_files row.
    Column("input_file_id", Integer, ForeignKey("input_files.id"), unique=True),
    Column("organisation", String(64), nullable=False),
    Column("name", Text, nullable=False),  # the upload's name
    Column("sha256", String(64), nullable=False),
    Column("size", ByteSize, nullable=False, default=0),
    Column("status", state_column_type(Verdict, "response_verdict"), nullable=False,
           default="accepted"),
    Column("response_id", String(64), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("ack_name", Text, nullable=False),
    Column("ack_xml", LargeBinary, nullable=False),
    Column("forward_name", Text),  # accepted only
    Column("forward_xml", LargeBinary),
    Column("report", Text),  # rejected only: the operator's report beside the quarantined file
    Column("state", state_column_type(DeliveryState, "answer_state"), nullable=False),
    Column("settled_at", UTCDateTime),
)  # fmt: skip
Index("ix_response_upload", response_files.c.organisation, response_files.c.name,
      response_files.c.sha256)

response_events = Table(
    "response_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("response_file_id", Integer, ForeignKey("response_files.id"), nullable=False),
    Column("assignment_id", Integer, ForeignKey("assignments.id"), nullable=False),
    Column("notification_id", String(64), nullable=False),
    Column("organisation", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # receipt | transfer
    Column("line", Integer),
    Column("handled_on", Date),
    Column("to_municipality", String(3)),
    Column("to_organisation", String(64)),
    Column("new_assignment_id", Integer, ForeignKey("assignments.id")),
    Column("reason", Text),
    Column("at", UTCDateTime, nullable=False),
)  # fmt: skip

payment_demands = Table(
    "payment_demands", metadata,
    Column("id", Integer, primary_key=True),
    Column("organisation", String(64), nullable=False),
    Column("demand_id", String(64), nullable=False),
    Column("response_file_id", Integer, ForeignKey("response_files.id"), nullable=False),
    Column("pic", String(11), nullable=False),
    Column("municipality", String(3), nullable=False),
    Column("benefit", String(32), nullable=False),
    Column("period_start", Date, nullable=False),
    Column("period_end", Date, nullable=False),
    Column("amount", String(24), nullable=False),  # the decimal text as it arrived
    Column("payee_iban", String(34), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    UniqueConstraint("organisation", "demand_id", name="uq_payment_demand"),
)  # fmt: skip

@dataclass(frozen=True)
class NoteState:
    """Where a notification stands now, as far as a response needs to know."""

    id: str
    item_seq: int
    kind: str  # notification | list
    type: str
    current_id: int  # the latest assignment: the one a response acts on
    current_org: str
    current_state: str
    handled_on: date | None
    transferred_by: frozenset[str]  # organisations that transferred it onward
    decision_date: date | None = None  # picks the route of a transfer (SPEC 3)


def note_states(c: Connection, ids: Iterable[str]) -> dict[str, NoteState]:
    wanted = sorted(set(ids))
    out: dict[str, NoteState] = {}
    for chunk in in_chunks(wanted):
        rows = c.execute(
            select(items.c.id, items.c.seq, items.c.kind, items.c.type, items.c.decision_date,
                   assignments.c.id.label("aid"), assignments.c.organisation,
                   assignments.c.state, assignments.c.handled_on)
            .join(assignments, assignments.c.item_seq == items.c.seq)
            .where(items.c.id.in_(chunk))
            .order_by(items.c.seq, assignments.c.id)).all()
        by_id: dict[str, list[Any]] = {}
        for r in rows:
            by_id.setdefault(r.id, []).append(r)
        for nid, hops in by_id.items():
            last = hops[-1]
            out[nid] = NoteState(
                id=nid, item_seq=last.seq, kind=last.kind, type=last.type,
                current_id=last.aid, current_org=last.organisation,
                current_state=last.state, handled_on=last.handled_on,
                transferred_by=frozenset(h.organisation for h in hops
                                         if h.state == "transferred"),
                decision_date=last.decision_date)
    return out


def demand_hashes(c: Connection, organisation: str, ids: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(ids))
    out: dict[str, str] = {}
    for chunk in in_chunks(wanted):
        for r in c.execute(select(payment_demands.c.demand_id, payment_demands.c.content_hash)
                           .where(payment_demands.c.organisation == organisation,
                                  payment_demands.c.demand_id.in_(chunk))):
            out[r.demand_id] = r.content_hash
    return out


def accepted_response(c: Connection, organisation: str, sha256: str) -> Any | None:
    """The response_files row of an accepted upload with these bytes, if any."""
    return c.execute(select(response_files).where(
        response_files.c.organisation == organisation, response_files.c.sha256 == sha256,
        response_files.c.status == "accepted")).first()


def unsettled_upload(c: Connection, organisation: str, name: str, sha256: str) -> Any | None:
    """The verdict already recorded for this upload, still in the inbox (a retry)."""
    rf = response_files
    return c.execute(select(rf).where(
        rf.c.organisation == organisation, rf.c.name == name, rf.c.sha256 == sha256,
        rf.c.settled_at.is_(None)).order_by(rf.c.id.desc())).first()


# -- a response's verdict and changes (broker.responses.process decides them) -----------

def record_verdict(c: Connection, **values: Any) -> int:
    """The verdict row of one upload (with its rendered ack), pending until written."""
    return int(c.execute(insert(response_files).values(state="pending", **values))
               .inserted_primary_key[0])  # type: ignore[index]


def record_accepted_input(c: Connection, *, organisation: str, name: str, sha256: str,
                          size: int, now: datetime, response_id: str, count: int) -> int:
    """The input_files row an accepted response's changes hang off."""
    return int(c.execute(insert(input_files).values(
        source=organisation, kind="response", name=name, sha256=sha256, size=size,
        status="accepted", received_at=now, batch_id=response_id, items=count,
    )).inserted_primary_key[0])  # type: ignore[index]


def apply_receipt(c: Connection, row_id: int, assignment_id: int, organisation: str,
                  notification_id: str, line: int | None, handled: date,
                  now: datetime) -> bool:
    """A receipt: the assignment is handled on ``handled``; False if it was not the
    organisation's released (or handled) assignment any more."""
    a = assignments
    changed = c.execute(update(a).where(
        a.c.id == assignment_id, a.c.organisation == organisation,
        a.c.state.in_(("released", "handled"))).values(
        state="handled", handled_on=handled)).rowcount
    if changed != 1:
        return False
    c.execute(insert(response_events).values(
        response_file_id=row_id, assignment_id=assignment_id,
        notification_id=notification_id, organisation=organisation, kind="receipt",
        line=line, handled_on=handled, at=now))
    return True


def apply_transfer(c: Connection, row_id: int, organisation: str, t: Any,
                   now: datetime) -> bool:
    """A transfer (``responses.rules.PlannedTransfer``): the assignment is transferred
    and a new one, due at once, made for the receiving organisation; False if it was not
    the organisation's released assignment any more."""
    a = assignments
    changed = c.execute(update(a).where(
        a.c.id == t.assignment_id, a.c.organisation == organisation, a.c.state == "released")
        .values(state="transferred")).rowcount
    if changed != 1:
        return False
    new_id = c.execute(insert(a).values(
        item_seq=t.item_seq, organisation=t.to_organisation, type=t.type, release_at=now,
        state="held", transferred_from=t.assignment_id,
        created_at=now)).inserted_primary_key[0]  # type: ignore[index]
    c.execute(insert(response_events).values(
        response_file_id=row_id, assignment_id=t.assignment_id,
        notification_id=t.transfer.notification_id, organisation=organisation,
        kind="transfer", line=t.transfer.line, to_municipality=t.transfer.to_municipality,
        to_organisation=t.to_organisation, new_assignment_id=new_id,
        reason=t.transfer.reason, at=now))
    return True


def add_demand(c: Connection, row_id: int, organisation: str, d: Any, now: datetime) -> None:
    """An accepted payment demand (``responses.rules`` checked it is new)."""
    c.execute(insert(payment_demands).values(
        organisation=organisation, demand_id=d.id, response_file_id=row_id, pic=d.pic,
        municipality=d.municipality, benefit=d.benefit, period_start=d.period_start,
        period_end=d.period_end, amount=d.amount, payee_iban=d.payee_iban,
        content_hash=d.content_hash, received_at=now))


def verdict(c: Connection, row_id: int) -> Any:
    return c.execute(select(response_files).where(response_files.c.id == row_id)).one()


def mark_written(c: Connection, row_id: int) -> None:
    c.execute(update(response_files).where(response_files.c.id == row_id)
              .values(state="written"))


def unfinished(c: Connection) -> list[Any]:
    """Verdicts whose files are not written, or whose upload has not left the inbox."""
    rf = response_files
    return list(c.execute(select(rf.c.id, rf.c.state, rf.c.organisation, rf.c.name,
                                 rf.c.sha256)
                          .where((rf.c.state == "pending") | rf.c.settled_at.is_(None))))


def settle(c: Connection, row_id: int, now: datetime | None) -> None:
    """The upload left the inbox (at ``now``; None: when it was received)."""
    rf = response_files
    c.execute(update(rf).where(rf.c.id == row_id).values(settled_at=now or c.execute(
        select(rf.c.received_at).where(rf.c.id == row_id)).scalar()))


@dataclass(frozen=True)
class Unreceipted:
    """Notifications delivered to an organisation and not yet receipted (nor transferred)."""

    organisation: str
    count: int
    oldest_released_at: datetime
    oldest_age: timedelta


def unreceipted(engine: Engine, now: datetime) -> list[Unreceipted]:
    a = assignments
    q = (select(a.c.organisation, func.count().label("n"), func.min(a.c.released_at).label("o"))
         .join(items, items.c.seq == a.c.item_seq)
         .where(a.c.state == "released", items.c.kind == "notification")
         .group_by(a.c.organisation).order_by(a.c.organisation))
    out = []
    with engine.connect() as c:
        for r in c.execute(q):
            oldest = r.o if isinstance(r.o, datetime) else datetime.fromisoformat(str(r.o))
            oldest = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest.astimezone(UTC)
            out.append(Unreceipted(r.organisation, int(r.n), oldest, now - oldest))
    return out


# ------------------------------------------------------------------ one notification's story


@dataclass(frozen=True)
class StoryEvent:
    at: datetime | None
    kind: str  # received | routed | released | receipted | transferred | downloaded
    organisation: str | None
    text: str
    delivery_file: str | None = None  # for released: the file whose downloads to look up


@dataclass(frozen=True)
class Story:
    id: str
    kind: str
    type: str
    municipality: str
    decision_date: date | None
    urgent: bool
    payload: str  # the item's JSON (the caller masks what it shows)
    events: list[StoryEvent]


def story(engine: Engine, item_id: str, tz: str) -> Story | None:
    """Everything the store knows about one notification, oldest first (times in ``tz``)."""
    zone = ZoneInfo(tz)

    with engine.connect() as c:
        item = c.execute(select(items, input_files.c.name.label("file_name"),
                                input_files.c.batch_id)
                         .join(input_files, input_files.c.id == items.c.input_file_id)
                         .where(items.c.id == item_id)).first()
        if item is None:
            return None
        events = [StoryEvent(item.received_at, "received", None,
                             f"received in {item.file_name} (batch {item.batch_id or '-'})")]
        hops = c.execute(select(assignments, deliveries.c.file_name.label("delivery_file"))
                         .outerjoin(deliveries, deliveries.c.id == assignments.c.delivery_id)
                         .where(assignments.c.item_seq == item.seq)
                         .order_by(assignments.c.id)).all()
        org_of = {h.id: h.organisation for h in hops}
        for h in hops:
            if h.transferred_from is None:
                due = h.release_at.astimezone(zone).isoformat(timespec="seconds")
                text = f"routed to {h.organisation}, release due {due}"
            else:
                text = (f"assigned to {h.organisation} by transfer from "
                        f"{org_of.get(h.transferred_from, '?')}, release due at once")
            events.append(StoryEvent(h.created_at, "routed", h.organisation, text))
            if h.released_at is not None:
                events.append(StoryEvent(h.released_at, "released", h.organisation,
                                         f"released to {h.organisation} in delivery "
                                         f"{h.delivery_id} (file {h.delivery_file})",
                                         delivery_file=h.delivery_file))
            elif h.state == "releasing":
                events.append(StoryEvent(None, "released", h.organisation,
                                         f"being released in delivery {h.delivery_id}"))
        rows = c.execute(select(response_events, response_files.c.name.label("file"))
                         .join(response_files,
                               response_files.c.id == response_events.c.response_file_id)
                         .where(response_events.c.notification_id == item_id)
                         .order_by(response_events.c.id)).all()
        for r in rows:
            where = f"(file {r.file}, line {r.line})"
            if r.kind == "receipt":
                events.append(StoryEvent(r.at, "receipted", r.organisation,
                                         f"receipted by {r.organisation}: handled "
                                         f"{r.handled_on.isoformat()} {where}"))
            else:
                reason = f"; reason: {r.reason}" if r.reason else ""
                events.append(StoryEvent(r.at, "transferred", r.organisation,
                                         f"transferred by {r.organisation} to "
                                         f"{r.to_organisation} (municipality "
                                         f"{r.to_municipality}) {where}{reason}"))
    # Same instant: a transfer comes before the assignment it creates.
    order = {"received": 0, "receipted": 1, "transferred": 1, "routed": 2, "released": 3,
             "downloaded": 4}
    events.sort(key=lambda e: (e.at is None, e.at or datetime.min.replace(tzinfo=UTC),
                               order.get(e.kind, 9)))
    return Story(id=item.id, kind=item.kind, type=item.type, municipality=item.municipality,
                 decision_date=item.decision_date, urgent=bool(item.urgent),
                 payload=item.payload, events=events)
