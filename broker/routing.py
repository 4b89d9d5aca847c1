"""Routing: every (type, municipality) goes to exactly one organisation (SPEC 3).

The route is the organisation that serves the municipality and holds the
mandate the type needs. Pure functions over the parsed config; the config check
runs ``check_routes`` so a gap or an overlap is found before any file is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.errors import ConfigError, RoutingError
from broker.model import ALL_TYPES, MANDATE_OF

if TYPE_CHECKING:
    from broker.config import Config, Organisation


def candidates(orgs: Iterable[Organisation], type_: str, municipality: str) -> list[Organisation]:
    mandate = MANDATE_OF[type_]
    return [o for o in orgs if municipality in o.municipalities and mandate in o.entitlements]


def route(config: Config, type_: str, municipality: str) -> Organisation:
    """The one organisation receiving ``type_`` for ``municipality``."""
    if type_ not in MANDATE_OF:
        raise RoutingError(f"unknown type {type_!r}")
    if municipality not in config.register:
        raise RoutingError(f"unknown municipality {municipality!r}")
    hit = config.routes.get((type_, municipality))
    if hit is not None:
        return hit
    found = candidates(config.organisations, type_, municipality)
    if len(found) != 1:
        names = ", ".join(o.id for o in found) or "none"
        raise RoutingError(f"{type_} for {config.register.describe(municipality)}: "
                           f"{len(found)} organisations ({names}); exactly one is required")
    return found[0]


@dataclass(frozen=True)
class Explanation:
    type: str
    municipality: str
    organisation: Organisation | None
    reasons: tuple[str, ...]


def explain(config: Config, type_: str, municipality: str) -> Explanation:
    """Where (type, municipality) goes and why, for ``kela-broker routes explain``."""
    reasons: list[str] = []
    if type_ not in MANDATE_OF:
        return Explanation(type_, municipality, None,
                           (f"unknown type; known: {', '.join(ALL_TYPES)}",))
    m = config.register.by_code.get(municipality)
    if m is None:
        return Explanation(type_, municipality, None,
                           (f"{municipality} is not in the register {config.register.source}",))
    mandate = MANDATE_OF[type_]
    reasons.append(f"{type_} needs the mandate {mandate.value}")
    reasons.append(f"{m.code} {m.name_fi} / {m.name_sv} belongs to area {m.area_code} "
                   f"{m.area_name_fi}")
    serving = [o for o in config.organisations if municipality in o.municipalities]
    for o in serving:
        verdict = "holds" if mandate in o.entitlements else "does not hold"
        reasons.append(f"{o.id} ({o.name}) serves {m.code} and {verdict} {mandate.value}")
    found = candidates(config.organisations, type_, municipality)
    return Explanation(type_, municipality, found[0] if len(found) == 1 else None, tuple(reasons))


def check_routes(config: Config, file: str,
                 line_of: Callable[..., int | None]) -> list[ConfigError]:
    """Every (type, municipality) of the register must have exactly one route."""
    errors: list[ConfigError] = []
    index = {o.id: i for i, o in enumerate(config.organisations)}
    seen: dict[str, int] = {}
    for i, o in enumerate(config.organisations):
        if o.id in seen:
            errors.append(ConfigError(f"organisation id {o.id!r} is used twice (first at "
                                      f"organisation[{seen[o.id]}])", file=file,
                                      line=o.line, key=f"organisation[{i}].id"))
        seen.setdefault(o.id, i)
    for type_ in ALL_TYPES:
        missing: list[str] = []
        for code in sorted(config.register.codes):
            found = candidates(config.organisations, type_, code)
            if not found:
                missing.append(code)
            elif len(found) > 1:
                o = found[1]
                errors.append(ConfigError(
                    f"{type_} for {config.register.describe(code)} has two routes: "
                    f"{found[0].id} and {o.id}", file=file, line=o.line,
                    key=f"organisation[{index[o.id]}].municipalities"))
        if missing:
            shown = ", ".join(config.register.describe(c) for c in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            errors.append(ConfigError(
                f"{type_} has no route for {shown}{more}: no organisation serving them "
                f"holds {MANDATE_OF[type_].value}", file=file,
                line=line_of("organisation", None, 0), key="organisation"))
    return errors
