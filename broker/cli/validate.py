"""``kela-broker validate FILE...``: check contract files before sending them.

Exit 0 when every file is valid, 1 when any is not, 2 for usage errors (click's
convention; a missing file is one).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from broker.validation import BatchContext, validate_any

HELSINKI = ZoneInfo("Europe/Helsinki")


def _known_municipalities(home: Path) -> frozenset[str]:
    # The home's register wins; the packaged copy keeps `validate` usable anywhere.
    path = home / "config" / "municipalities.csv"
    if not path.is_file():
        path = Path(__file__).resolve().parents[1] / "data" / "municipalities.csv"
    with path.open(encoding="utf-8", newline="") as f:
        codes = {row["code"].strip() for row in csv.DictReader(f) if row.get("code")}
    return frozenset(codes | _merged_codes(home))


def _merged_codes(home: Path) -> set[str]:
    """Old codes of ``[[merger]]`` tables: the daemon takes them, so validate does too.
    Read cheaply (no full config check): a broken config is `config check`'s to report."""
    import tomllib

    try:
        data = tomllib.loads((home / "config" / "broker.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return set()
    mergers = data.get("merger", [])
    return {m["code"] for m in mergers if isinstance(m, dict) and isinstance(m.get("code"), str)
            } if isinstance(mergers, list) else set()


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
    batch_ctx = BatchContext(
        municipalities=_known_municipalities(home),
        today=datetime.now(HELSINKI).date(),
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


