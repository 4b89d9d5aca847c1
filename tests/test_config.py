"""Operator config, register and routing: the checks an operator relies on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.cli import main
from broker.config import load_config
from broker.errors import ConfigErrors, RoutingError
from broker.model import ALL_TYPES
from broker.municipalities import load_register, packaged_register_path
from broker.routing import explain, route
from broker.sample_config import render_sample

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
    for type_ in ALL_TYPES:
        for code in register.codes:
            assert route(cfg, type_, code).entitled(type_)


def test_register_matches_shared_reference_data() -> None:
    shipped = packaged_register_path().read_bytes()
    assert (REPO / "config" / "municipalities.csv").read_bytes() == shipped
    if (SHARED_DATA / "municipalities.csv").exists():
        assert (SHARED_DATA / "municipalities.csv").read_bytes() == shipped
    register = load_register(packaged_register_path())
    assert len(register.by_code) == 308
    assert register["091"].area_code == "90"


@pytest.mark.parametrize(("type_", "code", "org"), [
    ("IMMIGRANT", "091", "helsinki"),  # Helsinki takes its own
    ("SOCIAL_WORK_NEED", "092", "vakehyva"),  # Vantaa -> Vantaa-Kerava county
    ("SUPPLEMENTARY_ASSISTANCE_NEED", "837", "pirha"),  # Tampere -> Pirkanmaa
    ("LABOUR_MARKET_SUBSIDY_200_DAYS", "837", "tampere"),  # lists -> the municipality
    ("CHILDCARE_SUPPORT_PAYMENTS", "853", "turku"),
    ("IMMIGRANT", "478", "mariehamn"),  # Åland municipalities take their own
    ("CHILDCARE_SUPPORT_RECIPIENTS", "091", "helsinki"),
])
def test_routes(type_: str, code: str, org: str) -> None:
    assert route(load_config(REPO), type_, code).id == org


def test_route_unknown_municipality() -> None:
    with pytest.raises(RoutingError, match="unknown municipality '000'"):
        route(load_config(REPO), "IMMIGRANT", "000")


def test_explain_says_why() -> None:
    ex = explain(load_config(REPO), "IMMIGRANT", "837")
    assert ex.organisation is not None and ex.organisation.id == "pirha"
    text = "\n".join(ex.reasons)
    assert "tampere" in text and "does not hold SOCIAL_ASSISTANCE" in text
    assert "pirha" in text and "holds SOCIAL_ASSISTANCE" in text


def test_two_routes_reported_with_line_and_key(home: Path) -> None:
    edit(home, 'id = "tampere"\nname = "Tampere"\nkind = "municipality"\nmunicipalities = ["837"]\n'
         'entitlements = ["LABOUR_MARKET_SUBSIDY", "CHILDCARE_SUPPORT"]',
         'id = "tampere"\nname = "Tampere"\nkind = "municipality"\nmunicipalities = ["837"]\n'
         'entitlements = ["LABOUR_MARKET_SUBSIDY", "CHILDCARE_SUPPORT", "SOCIAL_ASSISTANCE"]')
    with pytest.raises(ConfigErrors) as exc:
        load_config(home)
    messages = [str(e) for e in exc.value.errors]
    expected = "IMMIGRANT for 837 Tampere has two routes: pirha and tampere"
    hit = [m for m in messages if expected in m]
    assert hit, messages
    text = (home / "config" / "broker.toml").read_text().splitlines()
    line = next(i + 1 for i, ln in enumerate(text) if ln == 'id = "tampere"') - 1
    assert f"broker.toml:{line}:" in hit[0]
    assert "municipalities" in hit[0]


def test_missing_route_unknown_municipality_and_bad_values(home: Path) -> None:
    edit(home, 'municipalities = ["091"]', 'municipalities = ["091", "999"]')
    edit(home, 'format = "xml-v2"', 'format = "xml-v3"')
    edit(home, 'id = "pirha"', 'id = "Pirha!"')
    edit(home, 'entitlements = ["LABOUR_MARKET_SUBSIDY", "CHILDCARE_SUPPORT"]',
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
    strict = CliRunner().invoke(main, ["--home", str(home), "config", "check", "--keys"])
    assert strict.exit_code == 1
    assert "config/keys/helsinki/authorized_keys is missing" in strict.output


def test_routes_explain_cli() -> None:
    result = CliRunner().invoke(main, ["--home", str(REPO), "routes", "explain", "091",
                                       "IMMIGRANT"])
    assert result.exit_code == 0, result.output
    assert "helsinki" in result.output and "xml-v2" in result.output
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
