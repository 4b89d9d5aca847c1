"""Operator configuration: ``config/broker.toml`` parsed once into frozen objects.

Every problem is reported with the file, line and key to fix; all problems are
collected before raising so an operator fixes a config in one round. The objects are
in ``types``, the section readers in ``sections``; this module is the loader.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.config.municipalities import Register, load_register, packaged_register_path
from broker.config.route_table import parse_mergers
from broker.config.routing import check_routes
from broker.config.sections import (
    Reader,
    parse_handover,
    parse_host_port,
    parse_organisation,
    parse_positive,
    parse_sftp,
    parse_stagger,
    parse_storage,
    parse_timing,
)
from broker.config.types import Config, Format, Organisation, PushTarget, SftpSettings

# What other packages import from here (the loader's module is the config's front door).
__all__ = ["Config", "Format", "Organisation", "PushTarget", "SftpSettings", "config_path",
           "load_config", "parse_host_port"]
from broker.errors import ConfigError, ConfigErrors


def config_path(home: Path) -> Path:
    return home / "config" / "broker.toml"


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
    r = Reader(path, text)
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

    timing = parse_timing(r, data.get("timing", {}))
    stagger = parse_stagger(r, data.get("stagger", {}), tz)
    sftp = parse_sftp(r, data.get("sftp", {}))
    metrics = data.get("metrics", {})
    try:
        metrics_host, metrics_port = parse_host_port(r.get(metrics, "metrics", "listen", str,
                                                      "127.0.0.1:9464"))
    except ValueError as exc:
        r.error(str(exc), "metrics", "listen")
        metrics_host, metrics_port = "127.0.0.1", 9464
    mergers = parse_mergers(r, data.get("merger"), register)
    orgs = tuple(parse_organisation(r, raw, i, home, register, mergers)
                 for i, raw in enumerate(data.get("organisation", [])))
    config = Config(
        home=home, path=path, timezone=tz, register=register, organisations=orgs,
        timing=timing, stagger=stagger, sftp=sftp,
        storage_url=parse_storage(r, data.get("storage", {}), broker, home),
        metrics_host=metrics_host, metrics_port=metrics_port,
        rescan_seconds=float(r.get(broker, "broker", "rescan_seconds", (int, float), 2.0)),
        retention_days=r.get(broker, "broker", "retention_days", int, 90),
        max_file_bytes=r.get(broker, "broker", "max_file_mb", int, 4096) * 1024**2,
        settle_seconds=float(r.get(broker, "broker", "settle_seconds", (int, float), 0.5)),
        max_attempts=parse_positive(r, broker, "max_attempts", 3),
        archive_days=parse_positive(r, broker, "archive_days", 90),
        quarantine_days=parse_positive(r, broker, "quarantine_days", 90),
        stale_upload_hours=float(r.get(broker, "broker", "stale_upload_hours", (int, float),
                                       24.0)),
        handover=parse_handover(r, data.get("handover", {}), {o.id for o in orgs}),
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


def _unknown_keys(r: Reader, data: Mapping[str, Any]) -> None:
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
