"""Whose data went where: every disclosure of one person's data, for ``audit person``.

The person's code is never stored in the trail; it is turned into the home's keyed
digest and looked up in ``audit_refs`` (an index, not a scan), together with the ids
of the person's notifications and lists still in the store. From the releases found,
the downloads and pushes of those same files (organisation + file name) follow, and
the store adds the transfers between organisations of the person's notifications.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlalchemy.engine import Connection

from broker.domain.model import Notification, PersonList
from broker.storage.audit import audit_refs, audit_table, person_digest
from broker.storage.db import in_chunks
from broker.storage.tables import assignments, items

# Actions that hand a delivery file (by name) to an organisation after its release.
FILE_ACTIONS = ("download", "push")


def _persons_items(c: Connection, code: str) -> list[str]:
    """The person's items in the store: notifications by their person, lists by an entry.
    The text search only narrows (the same on both engines); the payload decides."""
    found = []
    rows = c.execute(select(items.c.id, items.c.kind, items.c.payload)
                     .where(items.c.payload.contains(code, autoescape=True)))
    for item_id, kind, payload in rows:
        if kind == "list":
            if any(e.pic == code for e in PersonList.from_json(payload).entries):
                found.append(item_id)
        elif Notification.from_json(payload).person.pic == code:
            found.append(item_id)
    return found


def _transfers(c: Connection, item_ids: list[str]) -> list[Disclosure]:
    """Transfers of the person's notifications between organisations, from the store."""
    a, b = assignments, assignments.alias("b")
    out: list[Disclosure] = []
    for chunk in in_chunks(item_ids):
        q = (select(a.c.created_at, a.c.organisation, b.c.organisation.label("source"),
                    items.c.id)
             .select_from(a.join(items, items.c.seq == a.c.item_seq)
                          .join(b, b.c.id == a.c.transferred_from))
             .where(items.c.id.in_(chunk)))
        out.extend(Disclosure(at=at, action="transfer", org=to_org, path=None,
                              detail=f"notification {item} transferred from {from_org}")
                   for at, to_org, from_org, item in c.execute(q))
    return out


@dataclass(frozen=True)
class Disclosure:
    """One act that carried the person's data to an organisation."""

    at: datetime
    action: str  # release | download | push | transfer | any other event naming them
    org: str | None
    path: str | None
    address: str | None = None
    size: int | None = None
    sha256: str | None = None
    detail: str | None = None
    event_id: int | None = None  # the audit row; None for a transfer read from the store

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = self.at.isoformat()
        return d


def _of(row: Any) -> Disclosure:
    return Disclosure(at=datetime.fromisoformat(row.at), action=row.action, org=row.org,
                      path=row.path, address=row.address, size=row.size,
                      sha256=row.sha256, detail=row.detail, event_id=row.id)


def _file_names(row: Any) -> set[str]:
    names = {PurePosixPath(row.path).name} if row.path else set()
    try:
        extra = json.loads(row.detail or "{}")
    except ValueError:
        extra = {}
    if isinstance(extra, dict) and extra.get("zip"):
        names.add(str(extra["zip"]))
    return names


def person_trail(engine: Engine, key: bytes, code: str) -> list[Disclosure]:
    """Every recorded disclosure of the person with identity code ``code``, oldest first."""
    t, r = audit_table, audit_refs
    with engine.connect() as c:
        own = _persons_items(c, code.strip().upper())
        refs = select(r.c.event_id).where(or_(r.c.person == person_digest(key, code),
                                              r.c.item.in_(own)))
        events = {row.id: row for row in c.execute(select(t).where(t.c.id.in_(refs)))}
        for rel in [e for e in events.values() if e.action == "release"]:
            names = _file_names(rel)
            for row in c.execute(select(t).where(
                    t.c.org == rel.org, t.c.action.in_(FILE_ACTIONS), t.c.id > rel.id,
                    or_(*(t.c.path.like(f"%{n}") for n in names)))):
                if PurePosixPath(row.path or "").name in names:
                    events[row.id] = row
        out = [_of(row) for row in events.values()]
        out.extend(_transfers(c, own))
    return sorted(out, key=lambda d: (d.at, d.event_id or 0))
