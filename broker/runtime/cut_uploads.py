"""Uploads cut off by a lost connection: the client is told in its acknowledgement, and
the fragment waits (marked incomplete) for a resume or a re-upload of the same name.

Called on the daemon's worker thread: when the SFTP server reports a cut, and once at
start for cuts a crash left unanswered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from broker import logs
from broker.config.settings import Config
from broker.responses.ack import ack_name
from broker.responses.process import reject_unprocessed
from broker.responses.texts import Finding
from broker.storage.incomplete import CUT, list_incomplete, marker_path, marker_state
from broker.storage.store import Store

log = logs.get("broker.cut_uploads")


def incomplete_dir(config: Config) -> Path:
    return config.var / "incomplete"


def answer_cut(config: Config, store: Store, org: str, path: Path, size: int) -> None:
    """Answer one cut upload (never raises: the fragment stays marked either way)."""
    try:
        if marker_state(incomplete_dir(config), org, path) != CUT or not path.exists():
            return  # uploaded again meanwhile (being written or closed): that one is answered
        finding = Finding("NOT_WELL_FORMED", None, "cut_off", {"size": size})
        reject_unprocessed(path, config.by_id[org], finding, config=config, store=store,
                           now=datetime.now(UTC), record=False)
        log.warning("upload cut off by a disconnect; not processed", organisation=org,
                    file=path.name, size=size)
    except Exception:
        log.exception("answering a cut-off upload failed", organisation=org, file=path.name)


def answer_cuts_left(config: Config, store: Store) -> int:
    """At start: a crash between marking an upload cut and writing its ack left the client
    without an answer. Every cut fragment whose ack is missing or older than its marker is
    answered now; returns how many."""
    n = 0
    for org, name, state in list_incomplete(incomplete_dir(config)):
        if state != CUT or org not in config.by_id:
            continue
        ack_file = config.outbox / org / "acks" / ack_name(name)
        marker = marker_path(incomplete_dir(config), org, name)
        try:
            if ack_file.exists() and ack_file.stat().st_mtime >= marker.stat().st_mtime:
                continue
            size = (config.inbox / org / name).stat().st_size
        except FileNotFoundError:
            continue
        answer_cut(config, store, org, config.inbox / org / name, size)
        n += 1
    return n
