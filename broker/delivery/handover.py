"""Organisations removed or renamed in the configuration, and what they still hold.

An organisation that leaves ``broker.toml`` while items wait for it (held, or claimed
into a delivery not yet written) would strand them: ``config check`` and the daemon
refuse such a configuration, naming the count, unless ``[handover] old-id = "new-id"``
says where they go. The daemon then moves them at start or reload, in one transaction:
held items change organisation (keeping their planned release time), and a delivery
still pending for the old organisation is undone (its files, if a crash left them, are
removed from the old outbox) so that its items go out to the new one, exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, select, update

from broker.config.settings import Config
from broker.delivery.render import attachments_zip_name
from broker.errors import ConfigError
from broker.storage.store import Store, assignments, deliveries


def removed_with_items(config: Config, undelivered: Mapping[str, int]) -> list[ConfigError]:
    """A problem for each unconfigured organisation that still holds items (pure)."""
    return [
        ConfigError(f"organisation {org!r} was removed from the configuration but holds "
                    f"{n} undelivered item(s); add [handover] {org} = \"<new id>\" to say "
                    "where they go", file=str(config.path), key=f"handover.{org}")
        for org, n in sorted(undelivered.items())
        if org not in config.by_id and org not in config.handover
    ]


def hand_over(config: Config, store: Store) -> dict[str, int]:
    """Move what removed organisations hold to their successors; returns counts by old id."""
    moved: dict[str, int] = {}
    undelivered = store.undelivered_by_org()
    for old, new in config.handover.items():
        if not undelivered.get(old):
            continue
        a, d = assignments, deliveries
        with store.writer.begin() as c:
            pending = c.execute(select(d.c.id, d.c.file_name)
                                .where(d.c.organisation == old, d.c.state == "pending")).all()
            folder = config.outbox / old
            n = 0
            for row in pending:
                # A pending delivery's zip name is recorded only once written: derive it.
                for name in (row.file_name, attachments_zip_name(row.id)):
                    (folder / name).unlink(missing_ok=True)
                    (folder / f".{name}.part").unlink(missing_ok=True)
                n += c.execute(update(a).where(a.c.delivery_id == row.id).values(
                    state="held", delivery_id=None, organisation=new)).rowcount
                c.execute(delete(d).where(d.c.id == row.id))
            n += c.execute(update(a).where(a.c.organisation == old, a.c.state == "held")
                           .values(organisation=new)).rowcount
        moved[old] = n
    return moved
