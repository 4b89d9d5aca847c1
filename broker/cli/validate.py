"""``kela-broker validate FILE...``: check contract files before sending them.

Exit 0 when every file is valid, 1 when any is not, 2 for usage errors (click's
convention; a missing file is one).
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from broker.config.municipalities import load_register, packaged_register_path
from broker.errors import ConfigError
from broker.intake.read_policy import validate_any
from broker.intake.validation import BatchContext

DEFAULT_TZ = "Europe/Helsinki"


def _home_config(home: Path) -> dict[str, Any]:
    """The home's broker.toml, read cheaply (no full config check: a broken config is
    `config check`'s to report, and `validate` must work anywhere, even without one)."""
    try:
        return tomllib.loads((home / "config" / "broker.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _known_municipalities(home: Path, data: dict[str, Any]) -> frozenset[str]:
    """The home's register (the same loader as the daemon), else the packaged one; plus
    the old codes of ``[[merger]]`` tables, which the daemon takes too."""
    path = home / "config" / "municipalities.csv"
    try:
        codes = load_register(path if path.is_file() else packaged_register_path()).codes
    except ConfigError as exc:  # a broken register must not silently become another one
        raise click.UsageError(f"municipality register: {exc}") from None
    mergers = data.get("merger", [])
    merged = {m["code"] for m in mergers if isinstance(m, dict)
              and isinstance(m.get("code"), str)} if isinstance(mergers, list) else set()
    return frozenset(codes) | merged


def _timezone(data: dict[str, Any]) -> ZoneInfo:
    """The configured ``[broker] timezone`` (what "today" means for DecisionDate)."""
    name = data.get("broker", {}).get("timezone", DEFAULT_TZ)
    try:
        return ZoneInfo(name if isinstance(name, str) else DEFAULT_TZ)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TZ)


@click.command()
@click.argument(
    "files", nargs=-1, required=True,
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text: one line per problem; json: a list of {file, valid, problems}.",
)
@click.pass_context
def validate(ctx: click.Context, files: tuple[Path, ...], fmt: str) -> None:
    """Validate decision batches, responses and other contract files (by root namespace)."""
    home = getattr(ctx.obj, "home", Path("."))
    data = _home_config(home)
    batch_ctx = BatchContext(
        municipalities=_known_municipalities(home, data),
        today=datetime.now(_timezone(data)).date(),
    )
    results = [(path, validate_any(path, batch_ctx)) for path in files]
    invalid = sum(1 for _, problems in results if problems)
    if fmt == "json":
        click.echo(json.dumps(
            [
                {
                    "file": str(path),
                    "valid": not problems,
                    "problems": [
                        {"line": p.line, "code": p.code, "message": p.message} for p in problems
                    ],
                }
                for path, problems in results
            ],
            ensure_ascii=False, indent=2,
        ))
    else:
        for _path, problems in results:
            for p in problems:
                click.echo(str(p))
        click.echo(f"{len(files) - invalid} of {len(files)} file(s) valid", err=bool(invalid))
    ctx.exit(1 if invalid else 0)


