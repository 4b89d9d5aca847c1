"""The configuration's frozen objects: organisations, SFTP settings, the whole config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal

from broker.config.municipalities import Register
from broker.config.route_table import Merger, Route
from broker.domain.model import Mandate
from broker.domain.schedule import StaggerPolicy, TypeTiming


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for any other engine (or in-memory). The
    one reading of a storage URL's file, for the config and the storage layer alike."""
    from sqlalchemy.engine import make_url  # here only: config is read by light commands

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def sqlite_url(path: Path | str) -> str:
    """The SQLite URL of the database file ``path``, quoted: a folder named with ``?``,
    ``#`` or ``%`` would otherwise be read back as a query, a fragment or an escape, and
    the state would go to another file (:func:`sqlite_path` reads it back exactly)."""
    from sqlalchemy.engine import URL  # here only: config is read by light commands

    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def sqlite_file_uri(path: Path, mode: str) -> str:
    """SQLite's own ``file:`` URI of ``path`` opened in ``mode`` (ro, rw), for
    ``sqlite3.connect(..., uri=True)``: the path is percent-quoted for the same reason
    (its bytes, so a name that is not UTF-8 works too), after an empty authority."""
    import os
    from urllib.parse import quote

    where = quote(os.fsencode(path))
    return f"file://{where}?mode={mode}" if path.is_absolute() else f"file:{where}?mode={mode}"


Format = Literal["xml-v2", "xml-v1", "csv"]
FORMATS: tuple[str, ...] = ("xml-v2", "xml-v1", "csv")
LANGUAGES: tuple[str, ...] = ("fi", "sv", "en")
KINDS: tuple[str, ...] = ("county", "city", "municipality", "aland")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ORG_ID = re.compile(r"[a-z][a-z0-9-]{1,31}")
RESERVED_IDS = frozenset({"kela", "acks", "root", "admin"})


@dataclass(frozen=True)
class PushTarget:
    """An organisation's own SFTP server the broker pushes to (paramiko)."""

    host: str
    port: int
    user: str
    key_file: Path
    remote_dir: str
    known_hosts: Path | None
    timeout: float = 30.0  # seconds for each network step: connect, banner, auth, each request


@dataclass(frozen=True)
class Organisation:
    id: str
    name: str
    kind: str
    municipalities: frozenset[str]
    entitlements: frozenset[Mandate]
    format: Format
    language: str
    authorized_keys: Path
    push: PushTarget | None = None
    line: int | None = field(default=None, compare=False)
    # What it receives, when (broker.config.route_table); none: nothing.
    routes: tuple[Route, ...] = field(default=(), compare=False)

    def entitled(self, type_: str) -> bool:
        from broker.domain.model import MANDATE_OF

        return MANDATE_OF[type_] in self.entitlements


@dataclass(frozen=True)
class SftpSettings:
    host: str = "127.0.0.1"
    port: int = 2222
    idle_timeout: float = 1800.0
    login_grace: float = 120.0
    max_sessions_per_org: int = 10
    max_upload_bytes: int = 512 * 1024**2
    ban_after_failures: int = 5
    ban_window: float = 600.0
    ban_seconds: float = 900.0
    # Resource limits: no client may exhaust the daemon's descriptors (see README).
    max_unauthenticated: int = 100
    max_unauthenticated_per_address: int = 30
    max_sessions_total: int = 1000
    max_handles_per_session: int = 64
    upload_quota_bytes: int = 2048 * 1024**2  # waiting in one organisation's /to-kela/
    # "modern" (AEAD ciphers, etm MACs only) or "compatible" (adds aes-ctr and
    # hmac-sha2 for libssh2 1.10/curl, older SSH.NET and JSch; see README).
    algorithms: str = "modern"


@dataclass(frozen=True)
class Config:
    home: Path
    path: Path
    timezone: str
    register: Register
    organisations: tuple[Organisation, ...]
    timing: Mapping[str, TypeTiming]
    stagger: StaggerPolicy
    sftp: SftpSettings
    # The state database (SQLAlchemy URL): sqlite:////abs/path or postgresql+psycopg://...
    storage_url: str
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    rescan_seconds: float = 2.0
    retention_days: int = 90
    max_file_bytes: int = 4 * 1024**3
    # A file in inbox/kela/ is taken once its size and mtime have not changed for this
    # long (and no process has it open for writing, where that can be told).
    settle_seconds: float = 0.5
    max_attempts: int = 3  # failed handlings of one input before it is quarantined
    archive_days: int = 90
    quarantine_days: int = 90
    stale_upload_hours: float = 24.0  # temp uploads and cut-off uploads are removed after this
    # Organisations removed or renamed: where their held and undelivered items go.
    handover: Mapping[str, str] = field(default_factory=dict)
    # Municipality codes merged away: old code -> merger (broker.config.route_table).
    mergers: Mapping[str, Merger] = field(default_factory=dict)

    @cached_property
    def by_id(self) -> dict[str, Organisation]:
        return {o.id: o for o in self.organisations}

    @cached_property
    def route_index(self) -> dict[tuple[str, str], tuple[Route, ...]]:
        """(type, municipality) -> its dated routes, earliest first, for the hot path."""
        table: dict[tuple[str, str], list[Route]] = {}
        for o in self.organisations:
            for r in o.routes:
                for type_ in r.types:
                    for code in r.municipalities:
                        table.setdefault((type_, code), []).append(r)
        return {k: tuple(sorted(v, key=lambda r: (r.start or date.min, r.org_index)))
                for k, v in table.items()}

    @property
    def known_codes(self) -> frozenset[str]:
        """Codes a batch may carry: the register's and those merged away."""
        return self.register.codes | frozenset(self.mergers)

    @property
    def database(self) -> Path | None:
        """The SQLite file of the state database; None when it is on a server."""
        return sqlite_path(self.storage_url)

    # Folders of the home, in one place so every part agrees on them.
    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    @property
    def var(self) -> Path:
        return self.home / "var"

    @property
    def keys_dir(self) -> Path:
        return self.home / "config" / "keys"
