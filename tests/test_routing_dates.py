"""Dated routes (SPEC 3): the item's date picks the route; the 2025 reform; mergers."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon_support import make_home
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from broker.cli import main
from broker.config.route_table import Route
from broker.config.routing import _timeline, decide, route
from broker.config.settings import load_config
from broker.domain.model import ALL_TYPES
from broker.errors import ConfigErrors, RoutingError
from broker.intake.ingest import ingest_batch, report_text
from broker.intake.synthetic import write_batch
from broker.storage.state_db import make_engine
from broker.storage.store import Store

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "broker.toml"


def assigned(store: Store) -> dict[str, tuple[str, str, str]]:
    """item id -> (organisation, type, municipality) of its first assignment."""
    with store.engine.connect() as c:
        rows = c.execute(text(
            "SELECT i.id, a.organisation, i.type, i.municipality FROM items i"
            " JOIN assignments a ON a.item_seq = i.seq ORDER BY a.id")).all()
    out: dict[str, tuple[str, str, str]] = {}
    for r in rows:
        out.setdefault(r[0], (r[1], r[2], r[3]))
    return out


def batch_across_2025(path: Path, *, municipality: str = "837", count: int = 60) -> None:
    """One batch: the first half decided 2024-12-31, the rest 2025-01-01, all types."""
    write_batch(path, count=count, municipalities=[municipality], decision_date=date(2024, 12, 31),
                batch_id="ACROSS-2025", seed=4, lists=10)
    body = path.read_text(encoding="utf-8")
    notes = body.split("<Notification ")
    half = 1 + count // 2
    later = [n.replace("<DecisionDate>2024-12-31", "<DecisionDate>2025-01-01")
             for n in notes[half:]]
    body = "<Notification ".join(notes[:half] + later)
    # Lists: periodEnd decides. The first five end on 2024-12-31, the rest a day later.
    lists = body.split("<PersonList ")
    body = "<PersonList ".join(lists[:6] + [p.replace('periodEnd="2024-12-31"',
                                                      'periodEnd="2025-01-01"')
                                            for p in lists[6:]])
    path.write_text(body, encoding="utf-8")


def test_same_batch_routes_by_decision_date_on_both_sides_of_the_2025_reform(
        tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    config = load_config(home)
    store = Store(make_engine(config.storage_url))
    batch = tmp_path / "across.xml"
    batch_across_2025(batch)
    out = ingest_batch(batch, config=config, store=store,
                       now=datetime(2025, 1, 2, 10, 0, tzinfo=UTC))
    assert out.status == "accepted", report_text(out)
    assert out.warnings == []
    body = batch.read_text(encoding="utf-8")
    dates = dict(re.findall(r'<Notification id="([^"]+)".*?<DecisionDate>([^<]+)', body, re.S))
    got = assigned(store)
    seen: set[tuple[str, str, str]] = set()
    for nid, (org, type_, _) in got.items():
        if nid.startswith("L-"):
            continue
        on = dates[nid]
        expected = ("tampere" if type_ == "IMMIGRANT" and on >= "2025-01-01" else "pirha")
        assert org == expected, (nid, type_, on, org)
        seen.add((type_, on, org))
    # Both sides of the reform for IMMIGRANT, and the county kept the other types after it.
    assert ("IMMIGRANT", "2024-12-31", "pirha") in seen
    assert ("IMMIGRANT", "2025-01-01", "tampere") in seen
    assert any(t != "IMMIGRANT" and on == "2025-01-01" and org == "pirha"
               for t, on, org in seen)
    lists = {nid: v for nid, v in got.items() if nid.startswith("L-")}
    assert len(lists) == 10 and {org for org, _, _ in lists.values()} == {"tampere"}


@pytest.mark.parametrize(("type_", "on", "org"), [
    ("IMMIGRANT", date(2023, 1, 1), "pirha"),
    ("IMMIGRANT", date(2024, 12, 31), "pirha"),
    ("IMMIGRANT", date(2025, 1, 1), "tampere"),
    ("SOCIAL_WORK_NEED", date(2025, 1, 1), "pirha"),
    ("LABOUR_MARKET_SUBSIDY_300_DAYS", date(2019, 6, 30), "tampere"),  # lists: always
])
def test_sample_config_history(type_: str, on: date, org: str) -> None:
    assert route(load_config(REPO), type_, "837", on).id == org


def test_before_the_counties_there_is_no_route() -> None:
    with pytest.raises(RoutingError, match="no route yet; the first begins 2023-01-01"):
        route(load_config(REPO), "SOCIAL_WORK_NEED", "837", date(2022, 12, 31))


def test_helsinki_and_aland_take_their_own_on_every_date() -> None:
    cfg = load_config(REPO)
    for on in (date(2020, 1, 1), date(2024, 12, 31), date(2025, 1, 1)):
        for type_ in ALL_TYPES:
            assert route(cfg, type_, "091", on).id == "helsinki"
            assert route(cfg, type_, "478", on).id == "mariehamn"


def undated(text_: str) -> str:
    """The sample config as written before routes had dates: no `routes`, municipalities
    hold only the list mandates."""
    text_ = re.sub(r"(?m)^routes = \[\n(?:  \{.*\},\n)+\]\n", "", text_)
    return text_.replace(
        'entitlements = ["SOCIAL_ASSISTANCE", "LABOUR_MARKET_SUBSIDY", "CHILDCARE_SUPPORT"]',
        'entitlements = ["LABOUR_MARKET_SUBSIDY", "CHILDCARE_SUPPORT"]')


def test_a_config_without_dates_keeps_working(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    path = home / "config" / "broker.toml"
    path.write_text(undated(path.read_text()))
    assert "routes =" not in path.read_text()
    cfg = load_config(home)
    for on in (date(1999, 1, 1), date(2025, 1, 1), date(2040, 1, 1)):
        assert route(cfg, "IMMIGRANT", "837", on).id == "pirha"
        assert route(cfg, "LABOUR_MARKET_SUBSIDY_300_DAYS", "837", on).id == "tampere"


# --- config check: gaps, overlaps, an ending --------------------------------------------


def check(home: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--home", str(home), "config", "check"])
    return result.exit_code, result.output


def line_of(home: Path, needle: str, after: str) -> int:
    lines = (home / "config" / "broker.toml").read_text().splitlines()
    start = lines.index(after)
    return next(i + 1 for i in range(start, len(lines)) if needle in lines[i])


def edit_org(home: Path, org: str, old: str, new: str) -> None:
    path = home / "config" / "broker.toml"
    body = path.read_text()
    start = body.index(f'id = "{org}"')
    end = body.find("[[organisation]]", start)
    end = len(body) if end < 0 else end
    block = body[start:end]
    assert old in block, block
    path.write_text(body[:start] + block.replace(old, new, 1) + body[end:])


def test_config_check_finds_a_gap_with_file_line_and_key(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    edit_org(home, "pirha", "until = 2024-12-31", "until = 2024-12-29")
    code, out = check(home)
    assert code == 1
    line = line_of(home, "until = 2024-12-29", 'id = "pirha"')
    assert (f"broker.toml:{line}: organisation[7].routes[1].until: IMMIGRANT for 020 Akaa, "
            "108 Hämeenkyrö") in out
    assert "and 18 more has no route from 2024-12-30 to 2024-12-31: pirha's route ends " \
        "2024-12-29" in out
    assert out.count("has no route from") == 1  # one error for the county, not 23


def test_config_check_finds_an_overlap(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    edit_org(home, "tampere", 'types = ["IMMIGRANT"], from = 2025-01-01',
             'types = ["IMMIGRANT"], from = 2024-12-01')
    code, out = check(home)
    assert code == 1
    line = line_of(home, "from = 2024-12-01", 'id = "tampere"')
    assert f"broker.toml:{line}: organisation[288].routes[0]: IMMIGRANT for 837 Tampere has " \
        "two routes: pirha and tampere" in out
    assert "both apply 2024-12-01 to 2024-12-31" in out


def test_config_check_finds_a_route_that_ends_with_none_after_it(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    edit_org(home, "tampere", 'types = ["IMMIGRANT"], from = 2025-01-01 }',
             'types = ["IMMIGRANT"], from = 2025-01-01, until = 2030-12-31 }')
    code, out = check(home)
    assert code == 1
    assert "organisation[288].routes[0].until: IMMIGRANT for 837 Tampere has no route after " \
        "2030-12-31" in out


def test_route_values_are_checked_with_their_keys(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    edit_org(home, "tampere", 'types = ["IMMIGRANT"], from = 2025-01-01 }',
             'types = ["IMMIGRANT", "TOURIST"], from = "1.1.2025", untill = 2026-01-01 }')
    edit_org(home, "turku", 'types = ["IMMIGRANT"], from = 2025-01-01 }',
             'types = ["IMMIGRANT"], from = 2025-01-01, until = 2024-01-01 }')
    edit_org(home, "tampere", 'entitlements = ["SOCIAL_ASSISTANCE", ',
             'entitlements = [')
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    text_ = str(exc.value)
    assert "organisation[288].routes[0].untill: unknown key 'untill'" in text_
    assert "organisation[288].routes[0].types: unknown type 'TOURIST'" in text_
    assert "organisation[288].routes[0].from: from must be a date such as 2025-01-01, " \
        "found '1.1.2025'" in text_
    assert "tampere would receive IMMIGRANT but is not entitled to it" in text_
    assert "until 2024-01-01 is before from 2025-01-01" in text_


# --- mergers ------------------------------------------------------------------------


def pertunmaa_batch(path: Path, on: date) -> None:
    write_batch(path, count=8, municipalities=["588"], decision_date=on,
                batch_id=f"PERTUNMAA-{on:%Y%m%d}", seed=2, lists=2)


def test_merged_code_before_the_merger_goes_to_the_successor_quietly(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    config = load_config(home)
    store = Store(make_engine(config.storage_url))
    batch = tmp_path / "b.xml"
    pertunmaa_batch(batch, date(2025, 12, 31))
    out = ingest_batch(batch, config=config, store=store,
                       now=datetime(2026, 1, 2, 10, 0, tzinfo=UTC))
    assert out.status == "accepted", report_text(out)
    assert out.warnings == []
    orgs = {(org, t.startswith("LABOUR") or t.startswith("CHILD"))
            for org, t, _ in assigned(store).values()}
    # Pertunmaa's county is Mäntyharju's: Etelä-Savo; its lists and IMMIGRANT to Mäntyharju.
    assert orgs <= {("eloisa", False), ("mantyharju", False), ("mantyharju", True)}
    assert ("mantyharju", True) in orgs


def test_merged_code_after_the_merger_is_routed_with_a_warning(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    config = load_config(home)
    store = Store(make_engine(config.storage_url))
    batch = tmp_path / "b.xml"
    pertunmaa_batch(batch, date(2026, 1, 5))
    out = ingest_batch(batch, config=config, store=store,
                       now=datetime(2026, 1, 6, 10, 0, tzinfo=UTC))
    assert out.status == "accepted"
    assert len(out.warnings) == 10  # every notification and list
    w = out.warnings[0]
    assert w.line is not None and "merged into 507 Mäntyharju on 2026-01-01" in w.message
    assert "routed to " in w.message
    assert "588" in report_text(out) and "Warnings" in report_text(out)
    assert {org for org, _, m in assigned(store).values()} <= {"eloisa", "mantyharju"}


def test_merged_code_after_the_merger_is_rejected_when_configured(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    path = home / "config" / "broker.toml"
    path.write_text(path.read_text().replace('after = "successor"', 'after = "reject"'))
    config = load_config(home)
    store = Store(make_engine(config.storage_url))
    batch = tmp_path / "b.xml"
    pertunmaa_batch(batch, date(2026, 1, 5))
    out = ingest_batch(batch, config=config, store=store,
                       now=datetime(2026, 1, 6, 10, 0, tzinfo=UTC))
    assert out.status == "rejected"
    assert len(out.problems) == 10
    assert all("municipality 588 was merged into 507" in p.message for p in out.problems)
    assert assigned(store) == {}
    # The day before the merger the same code is still routed.
    assert decide(config, "IMMIGRANT", "588", date(2025, 12, 31)).organisation.id == "mantyharju"


def test_merger_declarations_are_checked(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    path = home / "config" / "broker.toml"
    body = path.read_text()
    body = body.replace('code = "588"', 'code = "837"').replace('into = "507"', 'into = "999"')
    body = body.replace('after = "successor"', 'after = "maybe"')
    body = body.replace('municipalities = ["507"]', 'municipalities = ["507", "588"]', 1)
    path.write_text(body.replace("on = 2026-01-01\n", "on = 2026-01-01\nwhen = 1\n", 1))
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    text_ = str(exc.value)
    lines = body.splitlines()
    at = next(i + 1 for i, ln in enumerate(lines) if ln.startswith('code = "837"'))
    assert f"broker.toml:{at}: merger[0].code: 837 is still in the register" in text_
    assert "merger[0].into: into must be a municipality of the register" in text_
    assert "merger[0].after: after must be one of successor, reject" in text_
    assert "merger[0].when: unknown key 'when'" in text_
    # With the merger gone, the old code is just unknown.
    assert "unknown municipality '588'" in text_


def test_an_organisation_listing_a_merged_code_is_told_the_successor(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    edit_org(home, "eloisa", '"507", ', '"507", "588", ')
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    assert "municipality 588 was merged into 507 on 2026-01-01 ([[merger]]); list 507 " \
        "instead" in str(exc.value)


def test_routes_explain_a_merged_code() -> None:
    result = CliRunner().invoke(main, ["--home", str(REPO), "routes", "explain", "588",
                                       "IMMIGRANT", "--on", "2026-02-01"])
    assert result.exit_code == 0, result.output
    assert "588 was merged into 507 Mäntyharju on 2026-01-01" in result.output
    assert "with a warning" in result.output and "mantyharju" in result.output


def test_sample_register_and_config_stay_in_step() -> None:
    # The shipped config names Pertunmaa only as a merger: its code left the register.
    cfg = load_config(REPO)
    assert "588" not in cfg.register and cfg.mergers["588"].into == "507"
    assert "588" in cfg.known_codes


# --- the timeline check against counting routes day by day ------------------------------

BASE = date(2025, 1, 1)
DAYS = st.one_of(st.none(), st.integers(0, 30).map(lambda n: BASE + timedelta(days=n)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(DAYS, DAYS), min_size=1, max_size=5))
def test_property_gaps_overlaps_and_endings_are_exactly_those_in_time(
        spans: list[tuple[date | None, date | None]]) -> None:
    routes = sorted((Route(f"org-{i}", frozenset({"IMMIGRANT"}), frozenset({"837"}),
                           min(s, u) if s and u else s, max(s, u) if s and u else u, i, 0)
                     for i, (s, u) in enumerate(spans)),
                    key=lambda r: (r.start or date.min, r.org_index))
    window = [BASE + timedelta(days=n) for n in range(-3, 35)]
    count = {d: sum(r.covers(d) for r in routes) for d in window}
    found = {kind for kind, *_ in _timeline(routes)}
    assert ("overlap" in found) == any(n > 1 for n in count.values())
    hole = any(count[d] == 0 and any(count[e] for e in window if e < d)
               and any(count[e] for e in window if e > d) for d in window)
    assert ("gap" in found) == hole
    assert ("end" in found) == all(r.until is not None for r in routes)


def test_a_transfer_is_routed_by_the_notifications_decision_date(tmp_path: Path) -> None:
    """SPEC 3 and 6: a misdirected IMMIGRANT notification from 2024 goes to the county of
    the new municipality, one from 2026 to the municipality itself."""
    from response_support import T0, T1, Env, response, transfer

    home = make_home(tmp_path / "home")
    config = load_config(home)
    env = Env(home, config, Store(make_engine(config.storage_url)))
    old, new = tmp_path / "2024.xml", tmp_path / "2026.xml"
    write_batch(old, count=1, municipalities=["837"], types=["IMMIGRANT"],
                decision_date=date(2024, 12, 20), batch_id="T-2024", seed=5)
    write_batch(new, count=1, municipalities=["837"], types=["IMMIGRANT"],
                decision_date=date(2026, 11, 20), batch_id="T-2026", seed=6)
    for path in (old, new):
        assert ingest_batch(path, config=config, store=env.store, now=T0).status == "accepted"
    env.release(T0)
    assert assigned(env.store)["N-2024-000000001"][0] == "pirha"
    assert assigned(env.store)["N-2026-000000001"][0] == "tampere"
    county = env.process("pirha", "1.xml", response(transfer("N-2024-000000001", "853")), T1)
    assert county.status == "accepted" and county.transfers == [("N-2024-000000001", "varha")]
    town = env.process("tampere", "2.xml", response(transfer("N-2026-000000001", "853")), T1)
    assert town.status == "accepted" and town.transfers == [("N-2026-000000001", "turku")]


@pytest.mark.parametrize(("start", "until", "text_"), [
    (None, None, "always"), (None, date(2024, 12, 31), "until 2024-12-31"),
    (date(2025, 1, 1), None, "from 2025-01-01 onwards"),
    (date(2023, 1, 1), date(2024, 12, 31), "2023-01-01 to 2024-12-31")])
def test_a_period_reads_as_written(start: date | None, until: date | None, text_: str) -> None:
    r = Route("pirha", frozenset({"IMMIGRANT"}), frozenset({"837"}), start, until)
    assert r.period == text_


def test_validate_knows_merged_codes_as_ingest_does(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    batch = tmp_path / "b.xml"
    pertunmaa_batch(batch, date(2025, 12, 31))
    ok = CliRunner().invoke(main, ["--home", str(home), "validate", str(batch)])
    assert ok.exit_code == 0, ok.output
    path = home / "config" / "broker.toml"
    body = path.read_text()
    start = body.index("[[merger]]")
    path.write_text(body[:start] + body[body.index("\n\n", start):])
    gone = CliRunner().invoke(main, ["--home", str(home), "validate", str(batch)])
    assert gone.exit_code == 1 and "588" in gone.output


def test_a_route_narrowed_to_some_municipalities(tmp_path: Path) -> None:
    """A county whose IMMIGRANT route for one municipality ends early, that municipality
    taking over: `municipalities` narrows a route; foreign codes are refused."""
    home = make_home(tmp_path / "home")
    edit_org(home, "pirha", '  { types = ["IMMIGRANT"], from = 2023-01-01, until = 2024-12-31 },\n',
             '  { types = ["IMMIGRANT"], from = 2023-01-01, until = 2024-12-31, '
             'municipalities = ["020", "108", "143", "177", "211", "250", "291", "418", "508", '
             '"536", "562", "581", "604", "619", "635", "702", "790", "887", "908", "922", '
             '"936", "980"] },\n  { types = ["IMMIGRANT"], from = 2023-01-01, until = '
             '2024-06-30, municipalities = ["837"] },\n')
    edit_org(home, "tampere", 'types = ["IMMIGRANT"], from = 2025-01-01',
             'types = ["IMMIGRANT"], from = 2024-07-01')
    cfg = load_config(home)
    assert route(cfg, "IMMIGRANT", "837", date(2024, 6, 30)).id == "pirha"
    assert route(cfg, "IMMIGRANT", "837", date(2024, 7, 1)).id == "tampere"
    assert route(cfg, "IMMIGRANT", "020", date(2024, 7, 1)).id == "pirha"
    edit_org(home, "pirha", 'municipalities = ["837"]', 'municipalities = ["837", "091"]')
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    assert "organisation[7].routes[2].municipalities: municipalities of a route must be some " \
        "of the organisation's own; not its: 091" in str(exc.value)
