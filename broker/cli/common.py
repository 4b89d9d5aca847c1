"""What every command needs: the home's config and store, opened the same way."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from broker.config.settings import Config, load_config
from broker.errors import ConfigError

if TYPE_CHECKING:
    from broker.storage.audit import AuditLog
    from broker.storage.store import Store


def console() -> Console:
    # Piped output (scripts, tests) gets wide tables instead of 80-column wrapping.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"kela-broker: {message}", err=True)
    sys.exit(code)


def parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise click.BadParameter("give the offset too, e.g. 2026-11-23T06:00:00+02:00")
    return value.astimezone(UTC)


@dataclass
class Home:
    """A broker home opened for a command; the database is opened on first use."""

    path: Path

    @cached_property
    def config(self) -> Config:
        try:
            return load_config(self.path)
        except ConfigError as exc:
            fail(f"configuration is not valid:\n{exc}")
            raise

    @cached_property
    def store(self) -> Store:
        from broker.errors import StoreError
        from broker.storage.files import private_dir
        from broker.storage.state_db import make_engine
        from broker.storage.state_guard import check_state_store
        from broker.storage.store import Store

        try:  # never create an empty database in a home that has been used
            check_state_store(self.config)
            private_dir(self.config.var)  # the trail's key and anchor live there
            return Store(make_engine(self.config.storage_url))
        except StoreError as exc:  # also a schema newer than this release
            fail(str(exc))
            raise

    @cached_property
    def audit(self) -> AuditLog:
        """The trail in the state database; an old separate var/audit.db is moved in first."""
        from broker.storage.audit import HEAD_FILE, LEGACY_FILE, AuditLog
        from broker.storage.audit_legacy import migrate_legacy

        var = self.config.var
        engine = self.store.engine
        migrate_legacy(engine, var / LEGACY_FILE, var / HEAD_FILE, datetime.now(UTC))
        return AuditLog(engine, var / HEAD_FILE)


def home_of(ctx: click.Context) -> Home:
    return Home(ctx.find_root().obj.home)
