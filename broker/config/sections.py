"""Reading ``broker.toml`` section by section: every value typed and checked, every
problem kept with its file, line and key (``Reader``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Any, cast

from broker.config.municipalities import Register
from broker.config.route_table import Merger, parse_routes
from broker.config.types import (
    FORMATS,
    KINDS,
    LANGUAGES,
    ORG_ID,
    RESERVED_IDS,
    WEEKDAYS,
    Format,
    Organisation,
    PushTarget,
    SftpSettings,
    sqlite_url,
)
from broker.domain.model import ALL_TYPES, Mandate, is_list_type
from broker.domain.schedule import StaggerPolicy, TypeTiming
from broker.errors import ConfigError


class Reader:
    """Pulls typed values out of the parsed TOML, remembering every problem."""

    def __init__(self, path: Path, text: str) -> None:
        self.file = str(path)
        self.lines = text.splitlines()
        self.errors: list[ConfigError] = []
        self.known: dict[str, set[str]] = {}  # section -> keys the loader reads
        self.org_lines = [i + 1 for i, ln in enumerate(self.lines)
                          if ln.strip().startswith("[[organisation]]")]

    def line_of(self, section: str, key: str | None = None, index: int | None = None) -> int | None:
        if section == "organisation" and index is not None:
            start = self.org_lines[index] if index < len(self.org_lines) else None
        else:
            start = next((i + 1 for i, ln in enumerate(self.lines)
                          if ln.strip() == f"[{section}]"), None)
        if start is None or key is None:
            return start
        for i in range(start, len(self.lines)):
            stripped = self.lines[i].strip()
            if stripped.startswith("["):
                break
            if re.match(rf"{re.escape(key)}\s*=", stripped):
                return i + 1
        return start

    def error(self, message: str, section: str, key: str | None = None,
              index: int | None = None) -> None:
        where = f"{section}[{index}]" if index is not None else section
        self.errors.append(ConfigError(message, file=self.file,
                                       line=self.line_of(section, key, index),
                                       key=f"{where}.{key}" if key else where))

    def get(self, table: Mapping[str, Any], section: str, key: str, kind: type | tuple[type, ...],
            default: Any = None, index: int | None = None) -> Any:
        self.known.setdefault(section, set()).add(key)
        if key not in table:
            if default is None:
                self.error("required key is missing", section, key, index)
            return default
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.error(f"must be {names}, found {value!r}", section, key, index)
            return default
        return value


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:2222`` too); port 0 means any free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_positive(r: Reader, table: Mapping[str, Any], key: str, default: int) -> int:
    value: int = r.get(table, "broker", key, int, default)
    if value < 1:
        r.error("must be 1 or more", "broker", key)
        return default
    return value


_STORAGE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")


def parse_storage(r: Reader, storage: Any, broker: Mapping[str, Any], home: Path) -> str:
    """``[storage] url``: the state database, as an SQLAlchemy URL. The default is SQLite
    at ``var/state.db`` (nothing to install); a relative SQLite path is relative to the
    home. ``[broker] database = "path"`` (releases before the URL) still names a SQLite
    file. A PostgreSQL URL is given to psycopg (``postgresql+psycopg://...``)."""
    if not isinstance(storage, dict):
        r.error("must be a table with url = \"...\"", "storage")
        storage = {}
    old = r.get(broker, "broker", "database", str, "")
    url: str = r.get(storage, "storage", "url", str, "")
    if url and old:
        r.error("give the database once: [storage] url (or the older [broker] database)",
                "storage", "url")
    if not url:
        return sqlite_url(home / (old or "var/state.db"))  # a relative path: in the home
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _STORAGE_SCHEMES:
        r.error(f"must be sqlite:///path or postgresql+psycopg://user@host/db, found "
                f"{url.split('@')[-1].split(':')[0]!r}", "storage", "url")  # no password
        return sqlite_url(home / "var/state.db")
    from sqlalchemy.engine import make_url  # here only: config is read by light commands
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
        u.port  # noqa: B018 -- a port that is not a number fails here, not later
    except (ValueError, ArgumentError):
        r.error("is not a database URL (user@host:port/database)", "storage", "url")
        return sqlite_url(home / "var/state.db")
    if scheme == "postgresql":
        return url.replace("postgresql://", "postgresql+psycopg://", 1)
    if scheme != "sqlite":
        return url
    if not u.database or u.database == ":memory:":
        r.error("names an in-memory database, which keeps nothing: name a file "
                "(sqlite:///var/state.db)", "storage", "url")
        return sqlite_url(home / "var/state.db")
    # sqlite:///relative/path (three slashes) is relative to the home, not to the cwd;
    # the URL is made again, so the home's own path is quoted in it.
    return u.set(database=str(home / u.database)).render_as_string(hide_password=False)


def parse_handover(r: Reader, table: Any, ids: set[str]) -> dict[str, str]:
    """``[handover] old-id = "new-id"``: items of a removed or renamed organisation go on."""
    if not isinstance(table, dict):
        r.error("must be a table of old-id = \"new-id\"", "handover")
        return {}
    out: dict[str, str] = {}
    for old, new in table.items():
        if not isinstance(new, str) or new not in ids:
            r.error(f"hands over to {new!r}, which is not a configured organisation",
                    "handover", old)
        elif old in ids:
            r.error(f"{old!r} is still configured; only a removed organisation hands over",
                    "handover", old)
        else:
            out[old] = new
    return out


def parse_timing(r: Reader, table: Mapping[str, Any]) -> dict[str, TypeTiming]:
    timing: dict[str, TypeTiming] = {}
    for key, value in table.items():
        if key not in ALL_TYPES:
            r.error(f"unknown type; known: {', '.join(ALL_TYPES)}", "timing", key)
            continue
        try:
            timing[key] = TypeTiming.parse(str(value))
        except ValueError as exc:
            r.error(str(exc), "timing", key)
    for type_ in ALL_TYPES:
        if type_ not in timing:
            if is_list_type(type_):
                timing[type_] = TypeTiming("immediate")  # SPEC 2: lists go at once
            elif type_ not in table:
                r.error(f"no release timing for {type_}", "timing")
    return timing


def parse_stagger(r: Reader, table: Mapping[str, Any], tz: str) -> StaggerPolicy:
    weekday = r.get(table, "stagger", "weekday", str, "monday").lower()
    if weekday not in WEEKDAYS:
        r.error(f"weekday must be one of {', '.join(WEEKDAYS)}", "stagger", "weekday")
        weekday = "monday"
    at_text = r.get(table, "stagger", "time", str, "06:00")
    try:
        at = time.fromisoformat(at_text)
    except ValueError:
        r.error(f"time {at_text!r} is not HH:MM", "stagger", "time")
        at = time(6, 0)
    threshold = r.get(table, "stagger", "threshold", int, 400)
    portion = r.get(table, "stagger", "portion", int, 300)
    if portion < 1 or threshold < portion:
        r.error("portion must be at least 1 and at most threshold", "stagger", "portion")
    try:
        return StaggerPolicy(threshold=threshold, portion=portion,
                             weekday=WEEKDAYS.index(weekday), at=at, timezone=tz)
    except ValueError as exc:  # ScheduleError: e.g. an unknown timezone
        r.error(str(exc), "stagger")
        return StaggerPolicy()


def parse_sftp(r: Reader, table: Mapping[str, Any]) -> SftpSettings:
    d = SftpSettings()
    try:
        host, port = parse_host_port(r.get(table, "sftp", "listen", str, f"{d.host}:{d.port}"))
    except ValueError as exc:
        r.error(str(exc), "sftp", "listen")
        host, port = d.host, d.port
    num = (int, float)
    return SftpSettings(
        host=host, port=port,
        idle_timeout=float(r.get(table, "sftp", "idle_timeout", num, d.idle_timeout)),
        login_grace=float(r.get(table, "sftp", "login_grace", num, d.login_grace)),
        max_sessions_per_org=r.get(table, "sftp", "max_sessions_per_org", int,
                                   d.max_sessions_per_org),
        max_upload_bytes=r.get(table, "sftp", "max_upload_mb", int,
                               d.max_upload_bytes // 1024**2) * 1024**2,
        ban_after_failures=r.get(table, "sftp", "ban_after_failures", int, d.ban_after_failures),
        ban_window=float(r.get(table, "sftp", "ban_window", num, d.ban_window)),
        ban_seconds=float(r.get(table, "sftp", "ban_seconds", num, d.ban_seconds)),
        max_unauthenticated=r.get(table, "sftp", "max_unauthenticated", int,
                                  d.max_unauthenticated),
        max_unauthenticated_per_address=r.get(table, "sftp", "max_unauthenticated_per_address",
                                              int, d.max_unauthenticated_per_address),
        max_sessions_total=r.get(table, "sftp", "max_sessions_total", int, d.max_sessions_total),
        max_handles_per_session=r.get(table, "sftp", "max_handles_per_session", int,
                                      d.max_handles_per_session),
        upload_quota_bytes=r.get(table, "sftp", "upload_quota_mb", int,
                                 d.upload_quota_bytes // 1024**2) * 1024**2,
        algorithms=parse_algorithms(r, table, d.algorithms),
    )


ALGORITHM_PROFILES = ("modern", "compatible")


def parse_algorithms(r: Reader, table: Mapping[str, Any], default: str) -> str:
    value = r.get(table, "sftp", "algorithms", str, default)
    if value not in ALGORITHM_PROFILES:
        r.error(f"algorithms must be one of {', '.join(ALGORITHM_PROFILES)}, found {value!r}",
                "sftp", "algorithms")
        return default
    return str(value)


def parse_organisation(r: Reader, raw: Mapping[str, Any], i: int, home: Path,
                  register: Register, mergers: Mapping[str, Merger]) -> Organisation:
    s = "organisation"
    oid = r.get(raw, s, "id", str, "", index=i) or f"<organisation {i}>"
    if not ORG_ID.fullmatch(oid) or oid in RESERVED_IDS:
        r.error(f"id {oid!r} must be 2-32 of a-z 0-9 - (starting with a letter), "
                "and not a reserved name", s, "id", i)
    munis = r.get(raw, s, "municipalities", list, [], index=i)
    for code in munis:
        if code in mergers:  # the register changed under the config: say what to write
            m = mergers[code]
            r.error(f"municipality {code} was merged into {m.into} on {m.on} "
                    f"([[merger]]); list {m.into} instead", s, "municipalities", i)
        elif code not in register:
            r.error(f"unknown municipality {code!r} (not in {register.source})",
                    s, "municipalities", i)
    ents: set[Mandate] = set()
    for e in r.get(raw, s, "entitlements", list, [], index=i):
        try:
            ents.add(Mandate(e))
        except ValueError:
            r.error(f"unknown entitlement {e!r}; known: {', '.join(Mandate)}",
                    s, "entitlements", i)
    if not ents:
        r.error("an organisation needs at least one entitlement", s, "entitlements", i)
    fmt = r.get(raw, s, "format", str, "xml-v2", index=i)
    if fmt not in FORMATS:
        r.error(f"format must be one of {', '.join(FORMATS)}", s, "format", i)
        fmt = "xml-v2"
    lang = r.get(raw, s, "language", str, "fi", index=i)
    if lang not in LANGUAGES:
        r.error(f"language must be one of {', '.join(LANGUAGES)}", s, "language", i)
    kind = r.get(raw, s, "kind", str, "municipality", index=i)
    if kind not in KINDS:
        r.error(f"kind must be one of {', '.join(KINDS)}", s, "kind", i)
    keys = raw.get("authorized_keys")
    push = parse_push(r, raw.get("push"), i, home)
    return Organisation(
        id=oid, name=r.get(raw, s, "name", str, oid, index=i), kind=kind,
        municipalities=frozenset(munis), entitlements=frozenset(ents),
        format=cast(Format, fmt), language=lang,
        authorized_keys=(home / keys) if isinstance(keys, str)
        else home / "config" / "keys" / oid / "authorized_keys",
        push=push, line=r.line_of(s, None, i),
        routes=parse_routes(r, raw, i, oid, frozenset(munis), frozenset(ents)),
    )


def parse_push(r: Reader, raw: Any, i: int, home: Path) -> PushTarget | None:
    if raw is None:
        return None
    s = "organisation"
    if not isinstance(raw, dict):
        r.error("push must be a table", s, "push", i)
        return None
    kh = raw.get("known_hosts")
    return PushTarget(
        host=r.get(raw, s, "host", str, "", index=i),
        port=r.get(raw, s, "port", int, 22, index=i),
        user=r.get(raw, s, "user", str, "", index=i),
        key_file=home / r.get(raw, s, "key_file", str, "", index=i),
        remote_dir=r.get(raw, s, "remote_dir", str, "/", index=i),
        known_hosts=(home / kh) if isinstance(kh, str) else None,
        timeout=float(r.get(raw, s, "timeout", (int, float), 30.0, index=i)),
    )
