"""Login bans: per (address, organisation) for key failures, per address for strangers.

The server tests drive real clients (OpenSSH, paramiko, raw sockets) against a
server on port 0; the command-line tests lift bans of a server that is running.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import pytest
from click.testing import CliRunner
from daemon_support import wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.cli import main
from broker.runtime.metrics import Metrics
from broker.storage.audit import AuditEvent, AuditLog
from broker.storage.bans import GARBAGE_FACTOR, Ban, BanList, BanStore
from broker.storage.state_db import make_engine

if TYPE_CHECKING:
    from sftp_support import Running

pytest_plugins = ("sftp_support",)

T0 = 1_800_000_000.0


# -- the ban list itself --------------------------------------------------------


def test_key_failures_ban_only_that_organisation_from_that_address() -> None:
    bans = BanList(failures=3, window=60, ban_seconds=100)
    assert bans.record_failure("10.0.0.1", "alpha", T0) is None
    assert bans.record_failure("10.0.0.1", "alpha", T0 + 1) is None
    ban = bans.record_failure("10.0.0.1", "alpha", T0 + 2)
    assert ban is not None and ban.until == T0 + 102
    assert bans.banned("10.0.0.1", "alpha", T0 + 3) == ban
    # The same IT provider's other organisation, and alpha elsewhere, are not touched.
    assert bans.banned("10.0.0.1", "beta", T0 + 3) is None
    assert bans.banned("10.0.0.1", None, T0 + 3) is None
    assert bans.banned("10.0.0.2", "alpha", T0 + 3) is None
    assert bans.banned("10.0.0.1", "alpha", T0 + 102) is None  # expired


def test_unknown_users_ban_the_whole_address() -> None:
    bans = BanList(failures=2, window=60, ban_seconds=100)
    bans.record_failure("10.0.0.9", None, T0)
    assert bans.record_failure("10.0.0.9", None, T0 + 1) is not None
    for org in (None, "alpha", "beta"):
        assert bans.banned("10.0.0.9", org, T0 + 2) is not None


def test_failures_outside_the_window_and_before_a_good_login_are_forgotten() -> None:
    bans = BanList(failures=2, window=10, ban_seconds=100)
    bans.record_failure("a", "alpha", T0)
    assert bans.record_failure("a", "alpha", T0 + 10) is None  # the first is out of the window
    bans.record_success("a", "alpha")
    assert bans.record_failure("a", "alpha", T0 + 11) is None
    assert bans.record_failure("a", "alpha", T0 + 12) is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([None, "x", "y"]),
                          st.floats(0, 5)), max_size=40))
def test_a_ban_starts_exactly_when_the_model_says(
    events: list[tuple[str, str | None, float]],
) -> None:
    """Against a plain model: N failures of one (address, org) within the window."""
    failures, window = 3, 6.0
    bans = BanList(failures=failures, window=window, ban_seconds=1000)
    history: dict[tuple[str, str | None], list[float]] = {}
    now = T0
    for address, org, step in events:
        now += step
        recent = [t for t in history.get((address, org), []) if t > now - window] + [now]
        expected = len(recent) >= failures
        history[(address, org)] = [] if expected else recent
        assert (bans.record_failure(address, org, now) is not None) == expected


def test_bans_are_kept_in_the_file_and_a_lift_there_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "var" / "bans.json"
    bans = BanList(failures=1, window=60, ban_seconds=100, path=path)
    ban = bans.record_failure("10.0.0.1", "alpha", time.time())
    assert ban is not None
    assert path.stat().st_mode & 0o777 == 0o600
    # A restarted server still refuses the address.
    again = BanList(failures=1, window=60, ban_seconds=100, path=path)
    assert again.banned("10.0.0.1", "alpha", time.time()) == ban
    # An operator's lift in another process is seen at the next check.
    assert BanStore(path).lift("10.0.0.1", None, time.time()) == [ban]
    assert again.banned("10.0.0.1", "alpha", time.time()) is None
    assert json.loads(path.read_text())["bans"] == []


def test_a_damaged_bans_file_is_reported_and_replaced_by_the_next_ban(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid bans file"):
        BanStore(path).read()
    bans = BanList(failures=1, window=60, ban_seconds=100, path=path)
    assert bans.record_failure("a", None, time.time()) is not None
    assert [b.address for b in BanStore(path).read()] == ["a"]


def test_ban_metrics_count_by_organisation_never_by_user_name() -> None:
    m = Metrics()
    m.observe_sftp(AuditEvent("login", "alpha", "10.0.0.1"))
    m.observe_sftp(AuditEvent("login_failed", None, "10.0.0.1", detail="user 'root'"))
    m.observe_sftp(AuditEvent("ban", None, "10.0.0.1"))
    m.observe_sftp(AuditEvent("logout", "alpha", "10.0.0.1"))

    def value(name: str, org: str) -> float | None:
        return m.registry.get_sample_value(name, {"organisation": org})

    assert value("kela_broker_sftp_logins_total", "alpha") == 1
    assert value("kela_broker_sftp_login_failures_total", "-") == 1
    assert value("kela_broker_sftp_bans_total", "-") == 1
    assert value("kela_broker_sftp_login_failures_total", "root") is None


# -- against a running server ---------------------------------------------------


def _openssh(running: Running, org: str, key: Path) -> subprocess.CompletedProcess[str]:
    batch = running.tmp / "ban-batch.txt"
    batch.write_text("ls /\n")
    return subprocess.run(
        ["sftp", "-b", str(batch), "-i", str(key), "-P", str(running.port),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"{org}@127.0.0.1"],
        capture_output=True, text=True, timeout=60)  # fmt: skip


def _fail_logins(running: Running, org: str, times: int) -> None:
    stranger = running.tmp / "stranger"
    if not stranger.exists():
        running.keygen(stranger)
    for _ in range(times):
        with pytest.raises(paramiko.AuthenticationException):
            running.transport(org, key=stranger)


def test_it_provider_keeps_its_other_organisations_and_is_told_until_when(
    start_sftp: Callable[..., Running],
) -> None:
    running = start_sftp(ban_after_failures=3, ban_window=60, ban_seconds=600)
    _fail_logins(running, "alpha", 3)
    wait_for(lambda: running.actions("ban"), what="ban")
    (ban,) = running.actions("ban")
    assert (ban.org, ban.address) == ("alpha", "127.0.0.1")
    # alpha's right key is refused from that address, with the reason and the time...
    refused = _openssh(running, "alpha", running.keys["alpha"])
    assert refused.returncode != 0
    assert "banned until 20" in refused.stderr and "127.0.0.1 as alpha" in refused.stderr
    # paramiko sends its signed key in the first request: still refused.
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        running.transport("alpha").close()
    # ...never counts as a login, and is not another failure that would extend the ban.
    assert len(running.actions("login_failed")) == 3
    assert running.actions("login") == []
    # beta, served by the same provider from the same address, works as before.
    ok = _openssh(running, "beta", running.keys["beta"])
    assert ok.returncode == 0, ok.stderr


def test_unknown_user_names_ban_the_address_for_everyone(
    start_sftp: Callable[..., Running],
) -> None:
    running = start_sftp(ban_after_failures=2, ban_window=60, ban_seconds=600)
    _fail_logins(running, "root", 2)
    wait_for(lambda: running.actions("ban"), what="ban")
    assert running.actions("ban")[0].org is None
    refused = _openssh(running, "beta", running.keys["beta"])
    assert refused.returncode != 0
    assert "127.0.0.1 is banned until" in refused.stderr


def test_protocol_garbage_before_login_counts_towards_an_address_ban(
    start_sftp: Callable[..., Running],
) -> None:
    running = start_sftp(ban_after_failures=3, ban_window=60, ban_seconds=600)

    def garbage() -> None:
        with socket.create_connection(("127.0.0.1", running.port), timeout=15) as sock:
            sock.sendall(b"SSH-2.0-fuzzer\r\n" + b"\xff" * 256)
            while sock.recv(4096):  # until the server hangs up
                pass

    # A shared address (a provider's NAT, a load balancer's probe) takes more of it
    # than of failed logins before it is banned: four times the threshold.
    for _ in range(3 * GARBAGE_FACTOR - 1):
        garbage()
    wait_for(lambda: len(running.actions("preauth_error")) == 3 * GARBAGE_FACTOR - 1,
             what="errors counted")
    assert running.actions("ban") == []
    garbage()
    wait_for(lambda: running.actions("ban"), what="ban")
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        running.transport("alpha").close()


def test_a_client_that_only_looks_is_never_banned(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(ban_after_failures=1, ban_window=60, ban_seconds=600)
    for _ in range(3):  # port checks, ssh-keyscan, monitoring
        subprocess.run(["ssh-keyscan", "-p", str(running.port), "127.0.0.1"],
                       capture_output=True, timeout=30)
    t = running.transport("alpha")
    t.close()
    assert running.actions("ban") == []


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    assert CliRunner().invoke(main, ["init", str(home)]).exit_code == 0
    return home


def test_operator_lists_and_lifts_a_ban_of_a_running_server(
    start_sftp: Callable[..., Running], tmp_path: Path,
) -> None:
    home = _home(tmp_path)
    running = start_sftp(ban_after_failures=2, ban_window=60, ban_seconds=3600,
                         bans_path=home / "var" / "bans.json")
    _fail_logins(running, "alpha", 2)
    _fail_logins(running, "root", 2)
    wait_for(lambda: len(running.actions("ban")) == 2, what="two bans")
    cli = CliRunner()
    listed = cli.invoke(main, ["--home", str(home), "bans", "list"])
    assert listed.exit_code == 0
    assert "127.0.0.1" in listed.output and "alpha" in listed.output
    assert "(all)" in listed.output
    # Lift only alpha's ban: the address-wide one still refuses everyone.
    lifted = cli.invoke(main, ["--home", str(home), "bans", "lift", "127.0.0.1", "--org", "alpha"])
    assert lifted.exit_code == 0, lifted.output
    assert _openssh(running, "alpha", running.keys["alpha"]).returncode != 0
    lifted = cli.invoke(main, ["--home", str(home), "bans", "lift", "127.0.0.1"])
    assert lifted.exit_code == 0, lifted.output
    # No restart: the server reads the file at the next connection.
    ok = _openssh(running, "alpha", running.keys["alpha"])
    assert ok.returncode == 0, ok.stderr
    again = cli.invoke(main, ["--home", str(home), "bans", "lift", "127.0.0.1"])
    assert again.exit_code == 1 and "no ban in force" in again.output
    assert cli.invoke(main, ["--home", str(home), "bans", "list"]).output.strip() == \
        "no bans in force"
    log = AuditLog(make_engine(home / "var" / "state.db"))
    lifted_rows = [r for r in log.query() if r.action == "ban_lifted"]
    assert sorted(r.org or "" for r in lifted_rows) == ["", "alpha"]
    assert all(r.address == "127.0.0.1" for r in lifted_rows)


def test_ban_message_names_no_one_else() -> None:
    ban = Ban("10.0.0.1", "alpha", T0, T0 + 60, "3 failed logins as alpha within 600s")
    text = ban.message()
    assert "10.0.0.1 as alpha is banned until 2027-01-15T08:01:00Z" in text


def test_an_ipv6_host_is_banned_by_its_64_and_mapped_ipv4_as_ipv4() -> None:
    from broker.storage.bans import ban_scope

    bans = BanList(2, 60, 600)
    assert bans.record_failure("2001:db8:1:2::10", None, 0) is None
    ban = bans.record_failure("2001:db8:1:2:ffff::99", None, 1)  # the same /64: counted
    assert ban is not None and ban.address == "2001:db8:1:2::/64"
    assert bans.banned("2001:db8:1:2::abcd", "alpha", 2) is not None
    assert bans.banned("2001:db8:1:3::1", "alpha", 2) is None
    assert ban_scope("::ffff:10.0.0.1") == "10.0.0.1" and ban_scope("10.0.0.1") == "10.0.0.1"


def test_the_bans_file_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.storage.bans.MAX_STORED_BANS", 20)  # the real cap is 2000
    MAX_STORED_BANS = 20
    store = BanStore(tmp_path / "bans.json")
    for i in range(MAX_STORED_BANS + 50):
        store.add(Ban(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", None, float(i),
                      1e12, "test"), now=float(i))
    kept = store.read()
    assert len(kept) == MAX_STORED_BANS
    assert min(b.since for b in kept) == 50.0  # the oldest went first
