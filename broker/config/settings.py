"""Operator configuration: ``config/broker.toml`` parsed once into frozen objects.

Every problem is reported with the file, line and key to fix; all problems are
collected before raising so an operator fixes a config in one round.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

from broker.config.municipalities import Register, load_register, packaged_register_path
from broker.config.route_table import Merger, Route, parse_mergers, parse_routes
from broker.config.routing import check_routes
from broker.domain.model import ALL_TYPES, Mandate, is_list_type
from broker.domain.schedule import StaggerPolicy, TypeTiming
from broker.errors import ConfigError, ConfigErrors

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
    database: Path
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


def config_path(home: Path) -> Path:
    return home / "config" / "broker.toml"


class _Reader:
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


def load_config(home: Path, path: Path | None = None, *, check_keys: bool = False) -> Config:
    """Parse and check ``config/broker.toml`` of ``home``; raises ConfigErrors with all problems."""
    path = path or config_path(home)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc.strerror}", file=str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"not valid TOML: {exc}", file=str(path),
                          line=int(m.group(1)) if m else None) from exc
    r = _Reader(path, text)
    broker = data.get("broker", {})
    tz = r.get(broker, "broker", "timezone", str, "Europe/Helsinki")
    register_rel = r.get(broker, "broker", "register", str, "municipalities.csv")
    register_path = (path.parent / register_rel) if register_rel else packaged_register_path()
    try:
        register = load_register(register_path)
    except ConfigErrors as exc:
        r.errors.extend(exc.errors)
        register = Register(source=str(register_path), by_code={})
    except ConfigError as exc:
        r.errors.append(exc)
        register = Register(source=str(register_path), by_code={})

    timing = _timing(r, data.get("timing", {}))
    stagger = _stagger(r, data.get("stagger", {}), tz)
    sftp = _sftp(r, data.get("sftp", {}))
    metrics = data.get("metrics", {})
    try:
        metrics_host, metrics_port = parse_host_port(r.get(metrics, "metrics", "listen", str,
                                                      "127.0.0.1:9464"))
    except ValueError as exc:
        r.error(str(exc), "metrics", "listen")
        metrics_host, metrics_port = "127.0.0.1", 9464
    mergers = parse_mergers(r, data.get("merger"), register)
    orgs = tuple(_organisation(r, raw, i, home, register, mergers)
                 for i, raw in enumerate(data.get("organisation", [])))
    config = Config(
        home=home, path=path, timezone=tz, register=register, organisations=orgs,
        timing=timing, stagger=stagger, sftp=sftp,
        database=home / r.get(broker, "broker", "database", str, "var/state.db"),
        metrics_host=metrics_host, metrics_port=metrics_port,
        rescan_seconds=float(r.get(broker, "broker", "rescan_seconds", (int, float), 2.0)),
        retention_days=r.get(broker, "broker", "retention_days", int, 90),
        max_file_bytes=r.get(broker, "broker", "max_file_mb", int, 4096) * 1024**2,
        settle_seconds=float(r.get(broker, "broker", "settle_seconds", (int, float), 0.5)),
        max_attempts=_positive(r, broker, "max_attempts", 3),
        archive_days=_positive(r, broker, "archive_days", 90),
        quarantine_days=_positive(r, broker, "quarantine_days", 90),
        stale_upload_hours=float(r.get(broker, "broker", "stale_upload_hours", (int, float),
                                       24.0)),
        handover=_handover(r, data.get("handover", {}), {o.id for o in orgs}),
        mergers=mergers,
    )
    _unknown_keys(r, data)
    r.errors.extend(check_routes(config, r.file, r.line_of))
    if check_keys:
        for o in orgs:
            if o.push is None and not o.authorized_keys.is_file():
                r.errors.append(ConfigError(f"key file {o.authorized_keys} is missing",
                                            file=r.file, line=o.line,
                                            key=f"organisation.{o.id}.authorized_keys"))
    if r.errors:
        raise ConfigErrors(r.errors)
    return config


# Tables whose keys are free (type names, organisation ids) or read elsewhere.
_FREE_TABLES = ("timing", "handover", "merger")  # merger: broker.config.route_table
_PUSH_KEYS = frozenset({"host", "port", "user", "key_file", "remote_dir", "known_hosts",
                        "timeout"})


def _unknown_keys(r: _Reader, data: Mapping[str, Any]) -> None:
    """A misspelt key would silently keep its default: every unknown one is an error."""
    for section, table in data.items():
        if section in _FREE_TABLES:
            continue
        if section == "organisation" and isinstance(table, list):
            own = (r.known.get("organisation", set()) - _PUSH_KEYS) | {"push", "authorized_keys"}
            for i, org in enumerate(table):
                for key in org if isinstance(org, dict) else ():
                    if key not in own:
                        r.error(f"unknown key {key!r}", "organisation", key, i)
                push = org.get("push") if isinstance(org, dict) else None
                for key in push if isinstance(push, dict) else ():
                    if key not in _PUSH_KEYS:
                        r.error(f"unknown key {key!r} in push; known: "
                                f"{', '.join(sorted(_PUSH_KEYS))}", "organisation", "push", i)
            continue
        if section not in r.known or not isinstance(table, dict):
            r.error(f"unknown section [{section}]; known: "
                    f"{', '.join(sorted([*r.known, *_FREE_TABLES]))}", section)
            continue
        for key in table:
            if key not in r.known[section]:
                r.error(f"unknown key {key!r}; known: {', '.join(sorted(r.known[section]))}",
                        section, key)


def _positive(r: _Reader, table: Mapping[str, Any], key: str, default: int) -> int:
    value: int = r.get(table, "broker", key, int, default)
    if value < 1:
        r.error("must be 1 or more", "broker", key)
        return default
    return value


def _handover(r: _Reader, table: Any, ids: set[str]) -> dict[str, str]:
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


def _timing(r: _Reader, table: Mapping[str, Any]) -> dict[str, TypeTiming]:
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


def _stagger(r: _Reader, table: Mapping[str, Any], tz: str) -> StaggerPolicy:
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


def _sftp(r: _Reader, table: Mapping[str, Any]) -> SftpSettings:
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
        algorithms=_algorithms(r, table, d.algorithms),
    )


ALGORITHM_PROFILES = ("modern", "compatible")


def _algorithms(r: _Reader, table: Mapping[str, Any], default: str) -> str:
    value = r.get(table, "sftp", "algorithms", str, default)
    if value not in ALGORITHM_PROFILES:
        r.error(f"algorithms must be one of {', '.join(ALGORITHM_PROFILES)}, found {value!r}",
                "sftp", "algorithms")
        return default
    return str(value)


def _organisation(r: _Reader, raw: Mapping[str, Any], i: int, home: Path,
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
    push = _push(r, raw.get("push"), i, home)
    return Organisation(
        id=oid, name=r.get(raw, s, "name", str, oid, index=i), kind=kind,
        municipalities=frozenset(munis), entitlements=frozenset(ents),
        format=cast(Format, fmt), language=lang,
        authorized_keys=(home / keys) if isinstance(keys, str)
        else home / "config" / "keys" / oid / "authorized_keys",
        push=push, line=r.line_of(s, None, i),
        routes=parse_routes(r, raw, i, oid, frozenset(munis), frozenset(ents)),
    )


def _push(r: _Reader, raw: Any, i: int, home: Path) -> PushTarget | None:
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
