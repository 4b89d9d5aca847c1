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

from broker.config.settings import Config
from broker.delivery.render import attachments_zip_name
from broker.errors import ConfigError
from broker.storage import releases
from broker.storage.store import Store


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
        with store.writer.begin() as c:
            folder = config.outbox / old
            n = 0
            for delivery_id, file_name in releases.pending_of(c, old):
                # A pending delivery's zip name is recorded only once written: derive it.
                for name in (file_name, attachments_zip_name(delivery_id)):
                    (folder / name).unlink(missing_ok=True)
                    (folder / f".{name}.part").unlink(missing_ok=True)
                n += releases.undo_delivery(c, delivery_id, to=new)
            n += releases.move_held(c, old, to=new)
        moved[old] = n
    return moved
