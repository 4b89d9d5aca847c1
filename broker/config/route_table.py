"""Dated routes and municipality mergers as ``broker.toml`` declares them (SPEC 3).

The law moves routes (the 2025 Integration Act sent IMMIGRANT notifications from
the wellbeing services county to the municipality), so a route carries the first
and last day it applies to; the item's own date picks the route, never the clock.

An organisation without ``routes`` receives every type its entitlements cover for
all its municipalities, always: that keeps configurations written before routes had
dates working unchanged. An organisation with ``routes`` receives exactly what they
list::

    routes = [
      { types = ["IMMIGRANT"], from = 2025-01-01 },
      { types = ["LABOUR_MARKET_SUBSIDY", "CHILDCARE_SUPPORT"] },
    ]

``types`` holds type names or mandate names (a mandate stands for all its types);
``from`` and ``until`` are inclusive days, either may be left out (since always, for
good); ``municipalities`` narrows a route to some of the organisation's own.

A merger (``[[merger]]``) keeps a vanished municipality code routable: decisions under
the old code go to the successor; those dated on or after the merger are the sender's
mistake, so they go there with a warning in the report, or are rejected, as configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from broker.config.municipalities import Register
from broker.domain.model import ALL_TYPES, MANDATE_OF, Mandate
from broker.errors import ConfigError

if TYPE_CHECKING:
    from broker.config.sections import Reader

MergerAction = Literal["successor", "reject"]
MERGER_ACTIONS: tuple[str, ...] = ("successor", "reject")
ROUTE_KEYS = frozenset({"types", "municipalities", "from", "until"})
MERGER_KEYS = frozenset({"code", "into", "on", "after"})


@dataclass(frozen=True)
class Route:
    """``organisation`` receives ``types`` for ``municipalities`` from ``start`` to ``until``."""

    organisation: str
    types: frozenset[str]
    municipalities: frozenset[str]
    start: date | None = None  # first day it applies; None: since always
    until: date | None = None  # last day it applies (inclusive); None: for good
    org_index: int = 0
    number: int | None = None  # position in the organisation's `routes`; None: implicit
    line: int | None = field(default=None, compare=False)

    def covers(self, day: date) -> bool:
        return (self.start is None or self.start <= day) and (self.until is None
                                                              or day <= self.until)

    @property
    def key(self) -> str:
        """Where an operator finds it: ``organisation[3].routes[1]``."""
        where = f"organisation[{self.org_index}]"
        # An implicit route comes of the organisation's municipalities and entitlements.
        return f"{where}.routes[{self.number}]" if self.number is not None else \
            f"{where}.municipalities"

    @property
    def period(self) -> str:
        """As an operator reads it: ``2023-01-01 to 2024-12-31``, ``from 2025-01-01 onwards``."""
        if self.start is None:
            return "always" if self.until is None else f"until {self.until}"
        return f"from {self.start} onwards" if self.until is None else \
            f"{self.start} to {self.until}"


@dataclass(frozen=True)
class Merger:
    """Municipality ``code`` became part of ``into`` on ``on``."""

    code: str
    into: str
    on: date
    after: MergerAction = "successor"
    index: int = 0
    line: int | None = field(default=None, compare=False)


def types_of(names: Iterable[str]) -> tuple[set[str], list[str]]:
    """Type names, with a mandate name standing for all its types; and the unknown names."""
    out: set[str] = set()
    unknown: list[str] = []
    for name in names:
        if name in MANDATE_OF:
            out.add(name)
        elif name in Mandate.__members__:
            out.update(t for t in ALL_TYPES if MANDATE_OF[t] == Mandate(name))
        else:
            unknown.append(str(name))
    return out, unknown


def _day(value: Any) -> date | None:
    """A TOML date (``2025-01-01``) or the same as a string; anything else is None."""
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None


def _brace_line(r: Reader, start: int | None, k: int) -> int | None:
    """The line of the k-th inline table after ``routes =``: one route a line, as written."""
    if start is None:
        return None
    seen = -1
    for i in range(start - 1, len(r.lines)):
        seen += r.lines[i].split("#", 1)[0].count("{")
        if seen >= k:
            return i + 1
        if i > start - 1 and r.lines[i].lstrip().startswith("["):
            break
    return start


def parse_routes(r: Reader, raw: Mapping[str, Any], i: int, oid: str,
                 munis: frozenset[str], ents: frozenset[Mandate]) -> tuple[Route, ...]:
    """The routes of organisation ``i``; problems go to ``r`` with their line and key."""
    s = "organisation"
    r.known.setdefault(s, set()).add("routes")
    org_line = r.line_of(s, None, i)
    if "routes" not in raw:
        entitled = frozenset(t for t in ALL_TYPES if MANDATE_OF[t] in ents)
        return (Route(oid, entitled, munis, org_index=i, line=org_line),)
    items = raw["routes"]
    if not isinstance(items, list):
        r.error("routes must be a list of { types = [...], from = YYYY-MM-DD, until = ... }",
                s, "routes", i)
        return ()
    routes_line = r.line_of(s, "routes", i)
    out: list[Route] = []
    for k, item in enumerate(items):
        line = _brace_line(r, routes_line, k)

        def bad(message: str, part: str, line: int | None = line, k: int = k) -> None:
            r.errors.append(_error(message, r.file, line, f"{s}[{i}].routes[{k}]{part}"))

        if not isinstance(item, dict):
            bad("a route must be a table { types = [...], from = ..., until = ... }", "")
            continue
        for extra in sorted(set(item) - ROUTE_KEYS):
            bad(f"unknown key {extra!r}; known: {', '.join(sorted(ROUTE_KEYS))}", f".{extra}")
        names = item.get("types")
        if not isinstance(names, list) or not names:
            bad("types must list at least one type or mandate name", ".types")
            continue
        types, unknown = types_of(str(n) for n in names)
        for name in unknown:
            bad(f"unknown type {name!r}; known: types {', '.join(ALL_TYPES)} "
                f"and mandates {', '.join(Mandate)}", ".types")
        for t in sorted(types):
            if MANDATE_OF[t] not in ents:  # reported, and left out: never delivered to it
                bad(f"{oid} would receive {t} but is not entitled to it: add "
                    f"{MANDATE_OF[t].value} to its entitlements", ".types")
                types.discard(t)
        own = item.get("municipalities", sorted(munis))
        if not isinstance(own, list) or not all(isinstance(c, str) for c in own):
            bad("municipalities of a route must be a list of codes", ".municipalities")
            own = sorted(munis)
        elif not set(own) <= munis:
            bad("municipalities of a route must be some of the organisation's own; not its: "
                f"{', '.join(sorted(set(own) - munis))}", ".municipalities")
            own = sorted(munis)
        days: dict[str, date | None] = {}
        for key in ("from", "until"):
            value = item.get(key)
            days[key] = _day(value)
            if value is not None and days[key] is None:
                bad(f"{key} must be a date such as 2025-01-01, found {value!r}", f".{key}")
        start, until = days["from"], days["until"]
        if start is not None and until is not None and until < start:
            bad(f"until {until} is before from {start}; until is the last day the route "
                "applies", ".until")
        out.append(Route(oid, frozenset(types), frozenset(own), start, until, i, k, line))
    return tuple(out)


def parse_mergers(r: Reader, table: Any, register: Register) -> dict[str, Merger]:
    """``[[merger]]`` tables: old code -> its successor from a date."""
    if table is None:
        return {}
    starts = [i + 1 for i, ln in enumerate(r.lines) if ln.strip().startswith("[[merger]]")]
    if not isinstance(table, list):
        r.errors.append(_error("merger must be written as [[merger]] tables", r.file,
                               None, "merger"))
        return {}
    out: dict[str, Merger] = {}
    for n, raw in enumerate(table):
        line = starts[n] if n < len(starts) else None

        def bad(message: str, key: str, line: int | None = line, n: int = n) -> None:
            r.errors.append(_error(message, r.file, _key_line(r, line, key), f"merger[{n}].{key}"
                                   if key else f"merger[{n}]"))

        if not isinstance(raw, dict):
            bad("a merger is a table with code, into, on and after", "")
            continue
        for extra in sorted(set(raw) - MERGER_KEYS):
            bad(f"unknown key {extra!r}; known: {', '.join(sorted(MERGER_KEYS))}", extra)
        code, into, on = raw.get("code"), raw.get("into"), _day(raw.get("on"))
        after = raw.get("after", "successor")
        ok = True
        if not isinstance(code, str) or not re.fullmatch(r"\d{3}", code):
            bad(f"code must be the old 3-digit municipality code, found {code!r}", "code")
            ok = False
        elif code in register:
            bad(f"{code} is still in the register {register.source}: a merged municipality "
                "is removed from it", "code")
            ok = False
        elif code in out:
            bad(f"{code} is merged twice", "code")
            ok = False
        if not isinstance(into, str) or into not in register:
            bad(f"into must be a municipality of the register (the successor), found {into!r}",
                "into")
            ok = False
        if on is None:
            bad(f"on must be the first day of the merged municipality, e.g. 2026-01-01, "
                f"found {raw.get('on')!r}", "on")
            ok = False
        if after not in MERGER_ACTIONS:
            bad(f"after must be one of {', '.join(MERGER_ACTIONS)}", "after")
            ok = False
        if ok:
            assert isinstance(code, str) and isinstance(into, str) and on is not None
            out[code] = Merger(code, into, on, after, n, line)
    return out


def _key_line(r: Reader, start: int | None, key: str) -> int | None:
    if start is None or not key:
        return start
    for i in range(start, len(r.lines)):
        stripped = r.lines[i].strip()
        if stripped.startswith("["):
            break
        if re.match(rf"{re.escape(key)}\s*=", stripped):
            return i + 1
    return start



def _error(message: str, file: str, line: int | None, key: str) -> ConfigError:
    return ConfigError(message, file=file, line=line, key=key)
