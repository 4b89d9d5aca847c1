"""Operator config, register and routing: the checks an operator relies on."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.cli import main
from broker.config.municipalities import load_register, packaged_register_path
from broker.config.routing import explain, route
from broker.config.sample import render_sample
from broker.config.settings import load_config
from broker.domain.model import ALL_TYPES
from broker.errors import ConfigErrors, RoutingError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "config", tmp_path / "config",
                    ignore=shutil.ignore_patterns("keys"))
    return tmp_path


def edit(home: Path, old: str, new: str) -> None:
    path = home / "config" / "broker.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_repo_sample_config_is_generated_and_routes_every_pair() -> None:
    register = load_register(packaged_register_path())
    assert (REPO / "config" / "broker.toml").read_text() == render_sample(register)
    cfg = load_config(REPO)
    for on in (date(2023, 1, 1), date(2024, 12, 31), date(2025, 1, 1), date(2026, 11, 20)):
        for type_ in ALL_TYPES:
            for code in register.codes:
                assert route(cfg, type_, code, on).entitled(type_)


def test_register_matches_shared_reference_data() -> None:
    shipped = packaged_register_path().read_bytes()
    assert (REPO / "config" / "municipalities.csv").read_bytes() == shipped
    if (SHARED_DATA / "municipalities.csv").exists():
        assert (SHARED_DATA / "municipalities.csv").read_bytes() == shipped
    register = load_register(packaged_register_path())
    assert len(register.by_code) == 308
    assert register["091"].area_code == "90"


ON = date(2026, 11, 20)


@pytest.mark.parametrize(("type_", "code", "org"), [
    ("IMMIGRANT", "091", "helsinki"),  # Helsinki takes its own
    ("IMMIGRANT", "837", "tampere"),  # since 2025 to the municipality itself
    ("SOCIAL_WORK_NEED", "837", "pirha"),  # the other five still to the county
    ("SOCIAL_WORK_NEED", "092", "vakehyva"),  # Vantaa -> Vantaa-Kerava county
    ("SUPPLEMENTARY_ASSISTANCE_NEED", "837", "pirha"),  # Tampere -> Pirkanmaa
    ("LABOUR_MARKET_SUBSIDY_200_DAYS", "837", "tampere"),  # lists -> the municipality
    ("LABOUR_MARKET_SUBSIDY_300_DAYS", "837", "tampere"),
    ("CHILDCARE_SUPPORT_PAYMENTS", "853", "turku"),
    ("IMMIGRANT", "478", "mariehamn"),  # Åland municipalities take their own
    ("CHILDCARE_SUPPORT_RECIPIENTS", "091", "helsinki"),
])
def test_routes(type_: str, code: str, org: str) -> None:
    assert route(load_config(REPO), type_, code, ON).id == org


def test_route_unknown_municipality() -> None:
    with pytest.raises(RoutingError, match="unknown municipality '000'"):
        route(load_config(REPO), "IMMIGRANT", "000", ON)


def test_explain_says_why() -> None:
    cfg = load_config(REPO)
    ex = explain(cfg, "IMMIGRANT", "837", date(2024, 12, 31))
    assert ex.organisation is not None and ex.organisation.id == "pirha"
    text = "\n".join(ex.reasons)
    assert "to pirha, 2023-01-01 to 2024-12-31: applies on 2024-12-31" in text
    assert "to tampere, from 2025-01-01 onwards: does not apply on 2024-12-31" in text
    after = explain(cfg, "IMMIGRANT", "837", date(2025, 1, 1))
    assert after.organisation is not None and after.organisation.id == "tampere"
    assert "tampere starts receiving IMMIGRANT on 2025-01-01 (before: pirha)" in \
        "\n".join(after.reasons)
    lists = explain(cfg, "SOCIAL_WORK_NEED", "837", date(2026, 1, 1))
    assert "tampere (Tampere) serves 837, holds SOCIAL_ASSISTANCE and has no route for " \
        "SOCIAL_WORK_NEED" in "\n".join(lists.reasons)


def test_two_routes_reported_with_line_and_key(home: Path) -> None:
    # An organisation without `routes` receives all its entitlements cover, always: Tampere
    # written the pre-2025 way, but holding SOCIAL_ASSISTANCE, overlaps the county's routes.
    text = (home / "config" / "broker.toml").read_text()
    start = text.index('id = "tampere"')
    end = text.index("[[organisation]]", start)
    cut = text.index("routes = [", start)
    assert cut < end
    (home / "config" / "broker.toml").write_text(text[:cut] + "\n" + text[end:])
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    messages = [str(e) for e in exc.value.errors]
    expected = "SOCIAL_WORK_NEED for 837 Tampere has two routes: tampere and pirha"
    hit = [m for m in messages if expected in m]
    assert hit, messages
    text = (home / "config" / "broker.toml").read_text().splitlines()
    line = next(i + 1 for i, ln in enumerate(text) if ln.startswith("  { types = [\"SOCIAL_WORK")
                and text[i - 8] == 'id = "pirha"')
    # Blamed: the route that starts later, at its own line; both are named with their keys.
    assert f"broker.toml:{line}: organisation[7].routes[0]:" in hit[0]
    assert "organisation[288].municipalities: always" in hit[0]
    assert "both apply from 2023-01-01 onwards" in hit[0]


def test_missing_route_unknown_municipality_and_bad_values(home: Path) -> None:
    edit(home, 'municipalities = ["091"]', 'municipalities = ["091", "999"]')
    edit(home, 'format = "xml-v2"', 'format = "xml-v3"')
    edit(home, 'id = "pirha"', 'id = "Pirha!"')
    edit(home, 'entitlements = ["SOCIAL_ASSISTANCE", "LABOUR_MARKET_SUBSIDY", "CHILDCARE_SUPPORT"]',
         'entitlements = []')
    edit(home, 'IMMIGRANT = "immediate"', 'IMMIGRANT = "tomorrow-ish"')
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    text = str(exc.value)
    assert "unknown municipality '999'" in text
    assert "organisation[0].format: format must be one of xml-v2, xml-v1, csv" in text
    assert "id 'Pirha!' must be 2-32 of a-z 0-9 -" in text
    assert "an organisation needs at least one entitlement" in text
    assert "timing.IMMIGRANT" in text and "tomorrow-ish" in text
    assert "has no route for" in text  # the emptied municipality lost its lists
    assert "alajarvi would receive IMMIGRANT but is not entitled to it: add SOCIAL_ASSISTANCE" \
        in text  # a route never gives a type the organisation holds no mandate for


def test_misspelt_keys_and_sections_are_errors_with_their_lines(home: Path) -> None:
    edit(home, "max_attempts = 3", "max_attempt = 3")
    edit(home, "[metrics]", "[metrix]")
    edit(home, 'language = "fi"', 'language = "fi"\nlangauge = "sv"')
    edit(home, "[stagger]", "[handover]\nold-org = \"pirha\"\n\n[stagger]")
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    lines = (home / "config" / "broker.toml").read_text().splitlines()
    text = str(exc.value)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("max_attempt = 3")) + 1
    assert f"broker.toml:{at}: broker.max_attempt: unknown key 'max_attempt'" in text
    assert "unknown section [metrix]" in text
    misspelt = lines.index('langauge = "sv"') + 1
    assert f"broker.toml:{misspelt}" in text
    assert "unknown key 'langauge'" in text
    assert "old-org" not in text  # [handover] takes any old id
    edit(home, "max_attempt = 3", "max_attempts = 3")
    edit(home, "[metrix]", "[metrics]")
    edit(home, 'langauge = "sv"', "")
    assert load_config(home).handover == {"old-org": "pirha"}


def test_handover_must_name_a_configured_successor_of_a_removed_id(home: Path) -> None:
    edit(home, "[stagger]", '[handover]\npirha = "varha"\ngone = "nobody"\n\n[stagger]')
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    assert "'pirha' is still configured" in str(exc.value)
    assert "hands over to 'nobody', which is not a configured organisation" in str(exc.value)


def test_invalid_toml_names_the_line(home: Path) -> None:
    path = home / "config" / "broker.toml"
    path.write_text(path.read_text() + "\n[broken\n")
    result = CliRunner().invoke(main, ["--home", str(home), "config", "check"])
    assert result.exit_code == 1
    n = len(path.read_text().splitlines())
    assert f"broker.toml:{n}" in result.output


def test_config_check_cli_ok_and_keys(home: Path) -> None:
    ok = CliRunner().invoke(main, ["--home", str(home), "config", "check"])
    assert ok.exit_code == 0, ok.output
    assert "329 organisations" in ok.output and "no authorized_keys" in ok.output
    # Every municipality outside Helsinki and Åland starts receiving IMMIGRANT in 2025.
    assert "route change 2025-01-01: 291 organisation(s) start receiving IMMIGRANT" in ok.output
    assert "merger 2026-01-01: 507 Mäntyharju succeeds 588" in ok.output
    strict = CliRunner().invoke(main, ["--home", str(home), "config", "check", "--keys"])
    assert strict.exit_code == 1
    assert "config/keys/helsinki/authorized_keys is missing" in strict.output


def test_routes_explain_cli() -> None:
    result = CliRunner().invoke(main, ["--home", str(REPO), "routes", "explain", "091",
                                       "IMMIGRANT"])
    assert result.exit_code == 0, result.output
    assert "helsinki" in result.output and "xml-v2" in result.output
    before = CliRunner().invoke(main, ["--home", str(REPO), "routes", "explain", "837",
                                       "IMMIGRANT", "--on", "2024-12-31"])
    assert before.exit_code == 0, before.output
    assert "pirha (Pirkanmaan hyvinvointialue)" in before.output
    assert "applies on 2024-12-31" in before.output
    after = CliRunner().invoke(main, ["--home", str(REPO), "routes", "explain", "837",
                                      "immigrant", "--on", "2025-01-01"])
    assert after.exit_code == 0 and "tampere (Tampere)" in after.output
    early = CliRunner().invoke(main, ["--home", str(REPO), "routes", "explain", "837",
                                      "IMMIGRANT", "--on", "2022-12-31"])
    assert early.exit_code == 1 and "the first begins 2023-01-01" in early.output
    garbled = CliRunner().invoke(main, ["--home", str(REPO), "routes", "explain", "837",
                                        "IMMIGRANT", "--on", "31.12.2024"])
    assert garbled.exit_code == 2 and "not a date" in garbled.output
    bad = CliRunner().invoke(main, ["--home", str(REPO), "routes", "explain", "000",
                                    "IMMIGRANT"])
    assert bad.exit_code == 1 and "not in the register" in bad.output


def test_init_creates_a_working_home(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    cfg = load_config(tmp_path / "h")
    assert len(cfg.organisations) == 329
    again = CliRunner().invoke(main, ["init", str(tmp_path / "h")])
    assert again.exit_code == 1 and "not overwriting" in again.output
