"""Routing: every (type, municipality, date) goes to exactly one organisation (SPEC 3).

Routes carry validity dates (broker.config.route_table) because the law moves them; the
date that decides is the item's own (a notification's DecisionDate, a list's
periodEnd), passed in: nothing here reads the clock. ``check_routes`` runs with
the config check, so a gap or an overlap in time is found before any file is
accepted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from broker.config.route_table import Route
from broker.domain.model import ALL_TYPES, MANDATE_OF
from broker.errors import ConfigError, RoutingError

if TYPE_CHECKING:
    from broker.config.settings import Config, Organisation


def candidates(orgs: Iterable[Organisation], type_: str, municipality: str,
               on: date) -> list[Organisation]:
    """Organisations with a route for (type, municipality) that applies on ``on``."""
    return [o for o in orgs if any(type_ in r.types and municipality in r.municipalities
                                   and r.covers(on) for r in o.routes)]


@dataclass(frozen=True)
class Decision:
    organisation: Organisation
    route: Route
    municipality: str  # the code routed by: the successor's for a merged code
    warning: str | None = None  # for the report: a merged code after the merger


def decide(config: Config, type_: str, municipality: str, on: date) -> Decision:
    """The one route for ``type_`` in ``municipality`` on the item's date ``on``."""
    if type_ not in MANDATE_OF:
        raise RoutingError(f"unknown type {type_!r}")
    code, warning = municipality, None
    merger = config.mergers.get(municipality)
    if merger is not None:
        code = merger.into
        if on >= merger.on:
            text = (f"municipality {municipality} was merged into "
                    f"{config.register.describe(code)} on {merger.on}, so a decision of {on} "
                    f"should carry {code}")
            if merger.after == "reject":
                raise RoutingError(text)
            warning = text
    if code not in config.register:
        raise RoutingError(f"unknown municipality {municipality!r}")
    routes = config.route_index.get((type_, code), ())
    hits = [r for r in routes if r.covers(on)]
    if len(hits) != 1:
        what = f"{type_} for {config.register.describe(code)} on {on}"
        if not hits and routes and all(r.start is not None and on < r.start for r in routes):
            raise RoutingError(f"{what}: no route yet; the first begins {routes[0].start}")
        names = ", ".join(f"{r.organisation} ({r.period})" for r in hits) or "none"
        raise RoutingError(f"{what}: {len(hits)} routes ({names}); exactly one is required")
    org = config.by_id[hits[0].organisation]
    if warning is not None:
        warning += f"; routed to {org.id}"
    return Decision(org, hits[0], code, warning)


def route(config: Config, type_: str, municipality: str, on: date) -> Organisation:
    """The one organisation receiving ``type_`` for ``municipality`` on the item's date."""
    return decide(config, type_, municipality, on).organisation


@dataclass(frozen=True)
class Explanation:
    type: str
    municipality: str
    organisation: Organisation | None
    reasons: tuple[str, ...]


def explain(config: Config, type_: str, municipality: str, on: date) -> Explanation:
    """Where (type, municipality) goes on ``on`` and why, for ``kela-broker routes explain``."""
    if type_ not in MANDATE_OF:
        return Explanation(type_, municipality, None,
                           (f"unknown type; known: {', '.join(ALL_TYPES)}",))
    reasons: list[str] = []
    code = municipality
    merger = config.mergers.get(municipality)
    if merger is not None:
        code = merger.into
        reasons.append(f"{municipality} was merged into {config.register.describe(code)} on "
                       f"{merger.on}: its items go to the successor's routes"
                       + ("" if on < merger.on else
                          f"; dated {on}, after the merger, so "
                          + ("rejected" if merger.after == "reject" else "with a warning")))
    m = config.register.by_code.get(code)
    if m is None:
        return Explanation(type_, municipality, None,
                           (f"{municipality} is not in the register {config.register.source}",))
    mandate = MANDATE_OF[type_]
    reasons.append(f"{type_} needs the mandate {mandate.value}; the item's date decides "
                   f"(DecisionDate, or a list's periodEnd): {on}")
    reasons.append(f"{m.code} {m.name_fi} / {m.name_sv} belongs to area {m.area_code} "
                   f"{m.area_name_fi}")
    routes = config.route_index.get((type_, code), ())
    for r in routes:
        verdict = "applies" if r.covers(on) else "does not apply"
        where = f" (line {r.line})" if r.line else ""
        reasons.append(f"route {r.key}{where} sends {type_} for {code} to {r.organisation}, "
                       f"{r.period}: {verdict} on {on}")
    routed = {r.organisation for r in routes}
    for o in config.organisations:
        if code in o.municipalities and o.id not in routed:
            verdict = "holds" if mandate in o.entitlements else "does not hold"
            reasons.append(f"{o.id} ({o.name}) serves {m.code}, {verdict} {mandate.value} "
                           f"and has no route for {type_}")
    try:
        decision = decide(config, type_, municipality, on)
    except RoutingError as exc:
        reasons.append(exc.message)
        return Explanation(type_, municipality, None, tuple(reasons))
    r = decision.route
    earlier = [p for p in routes if p.until is not None and r.start is not None
               and p.until < r.start and p.organisation != r.organisation]
    if earlier:
        reasons.append(f"{r.organisation} starts receiving {type_} on {r.start} (before: "
                       f"{earlier[-1].organisation}): its first delivery of "
                       f"{config.stagger.describe()} (SPEC 4)")
    return Explanation(type_, municipality, decision.organisation, tuple(reasons))


def _munis(config: Config, codes: Sequence[str]) -> str:
    shown = ", ".join(config.register.describe(c) for c in codes[:5])
    return shown + (f" and {len(codes) - 5} more" if len(codes) > 5 else "")


def _timeline(routes: Sequence[Route]) -> Iterable[tuple[str, Route, Route | None, str]]:
    """Overlaps and gaps in time of one (type, municipality)'s routes, earliest first.

    Yields (kind, route to blame, other route, period): ``overlap`` names the later of
    two routes applying on the same day; ``gap`` the route after which none applies
    until the next begins; ``end`` the last route when it ends (nothing after it).
    """
    reach: Route | None = None  # the route reaching furthest so far
    for r in routes:  # sorted by start, "since always" first
        if reach is not None:
            if reach.until is None or r.start is None or reach.until >= r.start:
                last = r.until if reach.until is None or (
                    r.until is not None and r.until < reach.until) else reach.until
                # The days both apply, worded as Route.period words a span.
                yield "overlap", r, reach, Route("", r.types, r.municipalities, r.start,
                                                 last).period
            elif reach.until + timedelta(days=1) < r.start:
                yield ("gap", reach, r,
                       f"{reach.until + timedelta(days=1)} to {r.start - timedelta(days=1)}")
        if reach is None or (reach.until is not None and (r.until is None
                                                           or r.until > reach.until)):
            reach = r
    if reach is not None and reach.until is not None:
        yield "end", reach, None, f"after {reach.until}"


def check_routes(config: Config, file: str,
                 line_of: Callable[..., int | None]) -> list[ConfigError]:
    """Every (type, municipality) of the register has, on any day from its first route on,
    exactly one route: overlaps, gaps and an ending in time are errors with file and key."""
    errors: list[ConfigError] = []
    seen: dict[str, int] = {}
    for i, o in enumerate(config.organisations):
        if o.id in seen:
            errors.append(ConfigError(f"organisation id {o.id!r} is used twice (first at "
                                      f"organisation[{seen[o.id]}])", file=file,
                                      line=o.line, key=f"organisation[{i}].id"))
        seen.setdefault(o.id, i)
    index = config.route_index
    for type_ in ALL_TYPES:
        missing: list[str] = []
        found: dict[tuple[str, Route, Route | None, str], list[str]] = defaultdict(list)
        nexts: dict[tuple[str, Route, Route | None, str], Route | None] = {}
        for code in sorted(config.register.codes):
            routes = index.get((type_, code), ())
            if not routes:
                missing.append(code)
            for kind, r, other, period in _timeline(routes):
                # A gap is the ending route's: one error for a county, whoever comes next
                # (the period is the same, so the next route's first day is too).
                group = (kind, r, other if kind == "overlap" else None, period)
                found[group].append(code)
                nexts.setdefault(group, other)
        for (kind, r, other, period), codes in found.items():
            where = _munis(config, codes)
            nxt = nexts[(kind, r, other, period)]
            if kind == "overlap":
                assert other is not None
                msg = (f"{type_} for {where} has two routes: {other.organisation} and "
                       f"{r.organisation} ({other.key}: {other.period}; {r.key}: {r.period}); "
                       f"both apply {period}")
            elif kind == "gap":
                assert nxt is not None
                msg = (f"{type_} for {where} has no route from {period}: {r.organisation}'s "
                       f"route ends {r.until}, the next begins {nxt.start}")
            else:
                msg = (f"{type_} for {where} has no route {period}: the route to "
                       f"{r.organisation} ends then and none follows")
            key = r.key + (".until" if kind != "overlap" and r.number is not None else "")
            errors.append(ConfigError(msg, file=file, line=r.line, key=key))
        if missing:
            errors.append(ConfigError(
                f"{type_} has no route for {_munis(config, missing)}: no organisation serving "
                f"them receives it (needs {MANDATE_OF[type_].value})", file=file,
                line=line_of("organisation", None, 0), key="organisation"))
    return errors


@dataclass(frozen=True)
class RouteChange:
    """``organisation`` starts receiving ``type`` on ``start``, taking it over from
    ``previous``: its first delivery of the type falls under SPEC 4 (the release pass
    staggers any first delivery of an (organisation, type) over the threshold)."""

    type: str
    organisation: str
    start: date
    previous: str


def route_changes(config: Config) -> list[RouteChange]:
    """Every route change of the configuration, for ``config check`` and operators."""
    found: set[RouteChange] = set()
    for (type_, _code), routes in config.route_index.items():
        for k, r in enumerate(routes):
            before = {p.organisation for p in routes[:k]}
            if k and r.start is not None and r.organisation not in before:
                found.add(RouteChange(type_, r.organisation, r.start, routes[k - 1].organisation))
    return sorted(found, key=lambda c: (c.start, c.type, c.organisation))
