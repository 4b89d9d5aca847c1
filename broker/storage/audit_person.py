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
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import Engine, or_, select

from broker.storage.audit import audit_refs, audit_table, person_digest

# Actions that hand a delivery file (by name) to an organisation after its release.
FILE_ACTIONS = ("download", "push")

# The person's items in the store: notifications by their person, lists by an entry.
_ITEMS_SQL = (
    "SELECT id FROM items WHERE kind = 'notification'"
    " AND json_extract(payload, '$.person.pic') = ?1"
    " UNION SELECT items.id FROM items, json_each(items.payload, '$.entries') e"
    " WHERE items.kind = 'list' AND json_extract(e.value, '$.pic') = ?1")

_TRANSFERS_SQL = (
    "SELECT a.created_at, a.organisation, b.organisation, i.id"
    " FROM assignments a JOIN items i ON i.seq = a.item_seq"
    " JOIN assignments b ON b.id = a.transferred_from"
    " WHERE i.id IN (SELECT value FROM json_each(?)) ORDER BY a.created_at")


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
        items = [i for (i,) in c.exec_driver_sql(_ITEMS_SQL, (code.strip().upper(),))]
        refs = select(r.c.event_id).where(or_(r.c.person == person_digest(key, code),
                                              r.c.item.in_(items)))
        events = {row.id: row for row in c.execute(select(t).where(t.c.id.in_(refs)))}
        for rel in [e for e in events.values() if e.action == "release"]:
            names = _file_names(rel)
            for row in c.execute(select(t).where(
                    t.c.org == rel.org, t.c.action.in_(FILE_ACTIONS), t.c.id > rel.id,
                    or_(*(t.c.path.like(f"%{n}") for n in names)))):
                if PurePosixPath(row.path or "").name in names:
                    events[row.id] = row
        out = [_of(row) for row in events.values()]
        # Driver-level rows give the store's UTC text form of the time.
        out.extend(Disclosure(at=datetime.fromisoformat(str(at)).replace(tzinfo=UTC),
                              action="transfer", org=to_org, path=None,
                              detail=f"notification {item} transferred from {from_org}")
                   for at, to_org, from_org, item in c.exec_driver_sql(
                       _TRANSFERS_SQL, (json.dumps(items),)))
    return sorted(out, key=lambda d: (d.at, d.event_id or 0))
