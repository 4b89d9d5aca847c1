"""Operator commands: run the daemon, make a home, check config (routes: broker.cli.routes)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import click

from broker.cli.common import fail, home_of
from broker.config.municipalities import load_register, packaged_register_path
from broker.config.sample import render_sample
from broker.config.settings import Config, load_config, parse_host_port
from broker.errors import ConfigError, ConfigErrors, HomeBusy, StoreError


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--sftp-listen", metavar="HOST:PORT", help="Override [sftp] listen (port 0: any).")
@click.option("--metrics-listen", metavar="HOST:PORT", help="Override [metrics] listen.")
@click.option("--initialise", is_flag=True,
              help="Make a new, empty state database even though this home has been used "
                   "(only when the old one is lost for good).")
@click.option("--until-idle", is_flag=True,
              help="Stop once everything waiting is taken in and everything due released.")
@click.pass_context
def run(ctx: click.Context, sftp_listen: str | None, metrics_listen: str | None,
        initialise: bool, until_idle: bool) -> None:
    """Run the broker daemon: watch inboxes, release on schedule, serve SFTP."""
    from broker import logs
    from broker.runtime.daemon import Daemon, Overrides

    logs.configure()
    home = home_of(ctx)
    overrides = Overrides(sftp=_host_port(sftp_listen) if sftp_listen else None,
                          metrics=_host_port(metrics_listen) if metrics_listen else None,
                          initialise=initialise, until_idle=until_idle)
    try:
        daemon = Daemon(home.path, overrides)
        asyncio.run(daemon.run())
    except ConfigError as exc:
        fail(f"configuration is not valid:\n{exc}")
    except StoreError as exc:
        fail(f"cannot start: {exc}")
    except HomeBusy as exc:
        fail(str(exc))


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a fresh broker home in DIRECTORY with the sample configuration."""
    cfg = directory / "config"
    if (cfg / "broker.toml").exists():
        fail(f"{cfg / 'broker.toml'} exists already; not overwriting it")
    for sub in ("config/keys", "inbox/kela", "outbox/kela", "var"):
        (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(packaged_register_path(), cfg / "municipalities.csv")
    register = load_register(cfg / "municipalities.csv")
    (cfg / "broker.toml").write_text(render_sample(register), encoding="utf-8")
    # Made now, so the fingerprint can go to integrators before the first start.
    from adapters.ssh_policy import HOST_KEY_FILE, fingerprint, load_or_create_host_key

    host_key = load_or_create_host_key(directory / "var" / HOST_KEY_FILE)
    click.echo(f"Created a broker home in {directory} with {len(register.by_code)} "
               f"municipalities; SFTP host key {fingerprint(host_key)}. Next: kela-broker "
               f"--home {directory} config check, then kela-broker --home {directory} run")


@click.group("config")
def config_group() -> None:
    """Operator configuration."""


@config_group.command("check")
@click.option("--keys/--no-keys", default=False,
              help="Also require every SFTP organisation's authorized_keys file.")
@click.pass_context
def config_check(ctx: click.Context, keys: bool) -> None:
    """Load and check the configuration; every problem with file, line and key."""
    home = home_of(ctx)
    try:
        cfg = load_config(home.path, check_keys=keys)
        _check_against_store(cfg)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        fail("configuration is not valid")
        return
    missing = [o.id for o in cfg.organisations
               if o.push is None and not o.authorized_keys.is_file()]
    click.echo(f"{cfg.path}: OK: {len(cfg.organisations)} organisations, "
               f"{len(cfg.register.by_code)} municipalities, every type routed exactly once "
               "on every day from its first route on.")
    _route_changes(cfg)
    if missing:
        click.echo(f"note: {len(missing)} organisation(s) have no authorized_keys yet and "
                   f"cannot log in (e.g. {', '.join(missing[:3])}); --keys makes this an error.")


def _route_changes(cfg: Config) -> None:
    """What the dated routes will do: who starts receiving what, and when (SPEC 3, 4)."""
    from collections import defaultdict

    from broker.config.routing import route_changes

    changes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in route_changes(cfg):
        changes[(c.start.isoformat(), c.type)].append(c.organisation)
    for (start, type_), orgs in sorted(changes.items()):
        shown = ", ".join(orgs[:3]) + (f" and {len(orgs) - 3} more" if len(orgs) > 3 else "")
        click.echo(f"route change {start}: {len(orgs)} organisation(s) start receiving "
                   f"{type_} ({shown}); a first delivery of {cfg.stagger.describe()}.")
    for m in cfg.mergers.values():
        click.echo(f"merger {m.on}: {cfg.register.describe(m.into)} succeeds {m.code}; "
                   f"later decisions under {m.code}: "
                   + ("rejected" if m.after == "reject" else "routed there with a warning"))


def _check_against_store(cfg: Config) -> None:
    """An organisation removed while it holds items needs a [handover] (broker.delivery.handover).
    Read only: a home without a state database holds nothing yet."""
    from broker.delivery.handover import removed_with_items
    from broker.storage.state_guard import database_state

    if database_state(cfg) != "ok":
        return
    from broker.storage.state_db import make_engine
    from broker.storage.store import Store

    problems = removed_with_items(cfg, Store(make_engine(cfg.storage_url)).undelivered_by_org())
    if problems:
        raise ConfigErrors(problems)
