"""Onboarding an organisation: its login keys, and the host key its integrator pins.

``keys add`` writes the authorized_keys file the SFTP server reads at every login,
so a key added or removed works at once, without a restart.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import BinaryIO

import click
from rich.table import Table

from adapters.sftp_keys import KeyFiles
from adapters.ssh_keys import add_key, parse_public_key, read_keys, remove_key
from adapters.ssh_policy import HOST_KEY_FILE, host_key_lines, read_host_key
from broker.cli.common import Home, console, fail, home_of
from broker.errors import KeyRefused
from broker.storage.audit import AuditEvent

# Listen addresses that are not a name a client can use.
_WILDCARDS = {"", "0.0.0.0", "::", "*"}  # noqa: S104


def _org(home: Home, org: str) -> str:
    if org not in home.config.by_id:
        known = ", ".join(sorted(home.config.by_id)[:5])
        fail(f"unknown organisation {org!r} (not in {home.config.path}; e.g. {known})")
    return org


def _audit(home: Home, action: str, org: str, detail: str) -> None:
    home.audit.record(AuditEvent(action, org, detail=detail), datetime.now(UTC))


@click.group("keys")
def keys_group() -> None:
    """Organisations' SFTP login keys (public keys only)."""


@keys_group.command("add")
@click.argument("org")
@click.argument("source", metavar="FILE|-", type=click.File("rb"))
@click.pass_context
def keys_add(ctx: click.Context, org: str, source: BinaryIO) -> None:
    """Let ORG log in with the public key in FILE (OpenSSH or PuTTY/RFC 4716; - reads stdin)."""
    home = home_of(ctx)
    _org(home, org)
    path = KeyFiles(home.config.keys_dir).path_of(org)
    try:
        key = parse_public_key(source.read(1 << 20), getattr(source, "name", "key"))
        add_key(path, key)
    except KeyRefused as exc:
        fail(f"key refused: {exc}")
        return
    _audit(home, "key_added", org, f"{key.algorithm} {key.fingerprint} {key.comment}".strip())
    click.echo(f"{org}: added {key.algorithm} {key.fingerprint} {key.comment}".rstrip())


@keys_group.command("list")
@click.argument("org", required=False)
@click.pass_context
def keys_list(ctx: click.Context, org: str | None) -> None:
    """The login keys of ORG (of every organisation when left out)."""
    home = home_of(ctx)
    orgs = [_org(home, org)] if org else sorted(home.config.by_id)
    store = KeyFiles(home.config.keys_dir)
    table = Table("organisation", "type", "fingerprint", "comment")
    for o in orgs:
        for key in read_keys(store.path_of(o)):
            table.add_row(o, f"{key.algorithm} ({key.bits})", key.fingerprint, key.comment)
    if org and not table.rows:
        click.echo(f"{org}: no keys yet (kela-broker keys add {org} FILE)")
        return
    console().print(table)


@keys_group.command("remove")
@click.argument("org")
@click.argument("fingerprint")
@click.pass_context
def keys_remove(ctx: click.Context, org: str, fingerprint: str) -> None:
    """Revoke ORG's key with FINGERPRINT (SHA256:..., as `keys list` shows it)."""
    home = home_of(ctx)
    _org(home, org)
    try:
        key = remove_key(KeyFiles(home.config.keys_dir).path_of(org), fingerprint)
    except KeyRefused as exc:
        fail(str(exc))
        return
    _audit(home, "key_removed", org, f"{key.algorithm} {key.fingerprint} {key.comment}".strip())
    click.echo(f"{org}: removed {key.fingerprint} {key.comment}".rstrip())


@click.command("hostkey")
@click.option("--host", "host_name", metavar="NAME",
              help="The name clients connect to (default: the [sftp] listen host, or this "
                   "machine's name when it listens on all addresses).")
@click.option("--port", type=int, help="The port clients connect to (default: [sftp] listen).")
@click.pass_context
def hostkey(ctx: click.Context, host_name: str | None, port: int | None) -> None:
    """The SFTP host key for integrators to pin: fingerprint, known_hosts, PuTTY/WinSCP."""
    home = home_of(ctx)
    cfg = home.config
    path = cfg.var / HOST_KEY_FILE
    try:
        key = read_host_key(path)
    except (OSError, ValueError):
        fail(f"no host key at {path} yet: `kela-broker init` or the first `run` makes it")
        return
    host = host_name or (socket.getfqdn() if cfg.sftp.host in _WILDCARDS else cfg.sftp.host)
    lines = host_key_lines(key, host, port or cfg.sftp.port)
    click.echo(f"fingerprint:  {lines.fingerprint}")
    click.echo(f"known_hosts:  {lines.known_hosts}")
    click.echo(f"PuTTY/WinSCP: -hostkey=\"{lines.putty}\"")
