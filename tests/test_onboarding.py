"""Onboarding an organisation: host key from `init`, pinned by the integrator with what
`kela-broker hostkey` prints; login keys added and revoked with `kela-broker keys`.

The end-to-end tests log in with the OpenSSH client in strict host key mode against a
real server on port 0 that reads the home's key files.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.ssh_keys import parse_public_key
from adapters.ssh_policy import HOST_KEY_FILE
from broker.cli import main
from broker.config.settings import load_config
from broker.errors import KeyRefused
from broker.storage.audit import AuditLog
from broker.storage.state_db import make_engine

if TYPE_CHECKING:
    from sftp_support import Running

pytest_plugins = ("sftp_support",)

ORG = "keusote"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    result = CliRunner().invoke(main, ["init", str(home)])
    assert result.exit_code == 0, result.output
    return home


def cli(home: Path, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], input=stdin)


def keygen(path: Path, *args: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", f"it-provider {path.name}",
                    "-f", str(path), *args], check=True)
    return path


def start_home_server(start: Callable[..., Running], home: Path) -> Running:
    cfg = load_config(home)
    return start(host_key_path=cfg.var / HOST_KEY_FILE, keys_dir=cfg.keys_dir,
                 organisations=frozenset(cfg.by_id))


def strict_sftp(running: Running, home: Path, key: Path, known_hosts: Path,
                org: str = ORG) -> subprocess.CompletedProcess[str]:
    batch = running.tmp / "onboard-batch.txt"
    batch.write_text("ls /\n")
    return subprocess.run(
        ["sftp", "-b", str(batch), "-i", str(key), "-P", str(running.port),
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"{org}@127.0.0.1"],
        capture_output=True, text=True, timeout=60)  # fmt: skip


def test_init_makes_the_host_key_and_hostkey_prints_every_form(home: Path) -> None:
    path = home / "var" / HOST_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    key = asyncssh.read_private_key(path)
    fp = key.get_fingerprint("sha256")
    out = cli(home, "hostkey", "--host", "sftp.broker.example", "--port", "2222")
    assert out.exit_code == 0, out.output
    blob = key.export_public_key("openssh").decode().split()[1]
    assert f"fingerprint:  {fp}" in out.output
    assert f"known_hosts:  [sftp.broker.example]:2222 ssh-ed25519 {blob}\n" in out.output
    assert f'-hostkey="ssh-ed25519 255 {fp}"' in out.output
    # Port 22 is written without brackets, as OpenSSH does.
    assert f"sftp.broker.example ssh-ed25519 {blob}" in cli(
        home, "hostkey", "--host", "sftp.broker.example", "--port", "22").output
    # ssh-keygen agrees with the fingerprint we print.
    pub = home / "host.pub"
    pub.write_text(f"ssh-ed25519 {blob}\n")
    shown = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                           check=True).stdout
    assert fp in shown


def test_hostkey_without_a_key_says_how_to_get_one(home: Path) -> None:
    (home / "var" / HOST_KEY_FILE).unlink()
    out = cli(home, "hostkey")
    assert out.exit_code == 1 and "kela-broker init" in out.output


def test_integrator_pins_the_host_key_and_logs_in_with_a_putty_key(
    home: Path, start_sftp: Callable[..., Running], tmp_path: Path,
) -> None:
    key = keygen(tmp_path / "it_key", "-t", "ed25519")
    rfc4716 = subprocess.run(["ssh-keygen", "-e", "-f", f"{key}.pub"], capture_output=True,
                             check=True).stdout
    assert rfc4716.startswith(b"---- BEGIN SSH2 PUBLIC KEY ----")
    added = cli(home, "keys", "add", ORG, "-", stdin=rfc4716)
    assert added.exit_code == 0, added.output
    auth = home / "config" / "keys" / ORG / "authorized_keys"
    assert auth.stat().st_mode & 0o777 == 0o600
    running = start_home_server(start_sftp, home)
    out = cli(home, "hostkey", "--host", "127.0.0.1", "--port", str(running.port))
    line = re.search(r"known_hosts:  (.*)", out.output)
    assert line is not None
    known = tmp_path / "known_hosts"
    known.write_text(line.group(1) + "\n")
    first = strict_sftp(running, home, key, known)
    assert first.returncode == 0, first.stderr
    assert "from-kela" in first.stdout
    # Revoked: the next login fails, no restart needed.
    fp = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    assert fp in cli(home, "keys", "list", ORG).output
    removed = cli(home, "keys", "remove", ORG, fp)
    assert removed.exit_code == 0, removed.output
    assert strict_sftp(running, home, key, known).returncode != 0
    actions = [r.action for r in AuditLog(make_engine(home / "var" / "state.db")).query(org=ORG)]
    assert "key_added" in actions and "key_removed" in actions


def test_a_wrong_host_key_pin_is_refused_by_the_client(
    home: Path, start_sftp: Callable[..., Running], tmp_path: Path,
) -> None:
    # The pin means something: another server's key is not accepted.
    key = keygen(tmp_path / "it_key", "-t", "ed25519")
    assert cli(home, "keys", "add", ORG, f"{key}.pub").exit_code == 0
    running = start_home_server(start_sftp, home)
    other = keygen(tmp_path / "other_host", "-t", "ed25519")
    known = tmp_path / "known_hosts"
    blob = Path(f"{other}.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{running.port} {' '.join(blob)}\n")
    result = strict_sftp(running, home, key, known)
    assert result.returncode != 0
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_openssh_key_with_options_and_comment_is_listed(home: Path, tmp_path: Path) -> None:
    key = keygen(tmp_path / "rsa_key", "-t", "rsa", "-b", "3072")
    assert cli(home, "keys", "add", ORG, f"{key}.pub").exit_code == 0
    listed = cli(home, "keys", "list", ORG)
    assert "ssh-rsa (3072)" in listed.output and "it-provider rsa_key" in listed.output
    every = cli(home, "keys", "list")
    assert ORG in every.output
    empty = cli(home, "keys", "list", "ita-uusimaa")
    assert "no keys yet" in empty.output


def _private_openssh(tmp_path: Path) -> bytes:
    return keygen(tmp_path / "priv", "-t", "ed25519").read_bytes()


def _rsa(bits: int) -> bytes:
    return asyncssh.generate_private_key("ssh-rsa", key_size=bits).export_public_key()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_private_openssh, "PRIVATE key"),
        (lambda _: b"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n", "PRIVATE key"),
        (lambda _: asyncssh.generate_private_key("ssh-dss").export_public_key(), "DSA"),
        (lambda _: _rsa(1024), "1024 bits is too short"),
        (lambda _: b"", "empty"),
        (lambda _: b"hello world\n", "not an OpenSSH or RFC 4716"),
        (lambda _: _rsa(2048) + _rsa(2048), "one key at a time"),
    ],
    ids=["openssh-private", "putty-private", "dsa", "rsa-1024", "empty", "garbage", "two"],
)
def test_refused_keys_leave_the_file_alone(
    home: Path, tmp_path: Path, make: Callable[[Path], bytes], message: str,
) -> None:
    result = cli(home, "keys", "add", ORG, "-", stdin=make(tmp_path))
    assert result.exit_code == 1
    assert message in result.output
    assert not (home / "config" / "keys" / ORG / "authorized_keys").exists()


def test_duplicates_unknown_organisations_and_unknown_fingerprints(
    home: Path, tmp_path: Path,
) -> None:
    key = keygen(tmp_path / "k", "-t", "ed25519")
    assert cli(home, "keys", "add", ORG, f"{key}.pub").exit_code == 0
    auth = home / "config" / "keys" / ORG / "authorized_keys"
    before = auth.read_bytes()
    dup = cli(home, "keys", "add", ORG, f"{key}.pub")
    assert dup.exit_code == 1 and "already there" in dup.output
    # The same key in PuTTY's form is the same key.
    rfc = subprocess.run(["ssh-keygen", "-e", "-f", f"{key}.pub"], capture_output=True,
                         check=True).stdout
    assert cli(home, "keys", "add", ORG, "-", stdin=rfc).exit_code == 1
    assert auth.read_bytes() == before
    unknown = cli(home, "keys", "add", "no-such-org", f"{key}.pub")
    assert unknown.exit_code == 1 and "unknown organisation 'no-such-org'" in unknown.output
    gone = cli(home, "keys", "remove", ORG, "SHA256:doesnotexist")
    assert gone.exit_code == 1 and "no key SHA256:doesnotexist" in gone.output


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.text(max_size=120).map(lambda t: f"ssh-ed25519 {t}".encode()),
    st.text(max_size=120).map(lambda t: f"---- BEGIN SSH2 PUBLIC KEY ----\n{t}\n".encode()),
))
def test_any_input_is_a_key_or_a_clear_refusal(data: bytes) -> None:
    """What an operator pastes comes from outside: never a traceback."""
    try:
        key = parse_public_key(data)
    except KeyRefused as exc:
        assert str(exc)
    else:
        assert key.fingerprint.startswith("SHA256:")


@pytest.mark.parametrize("org", ["pirha", "tampere"])
def test_demo_for_one_organisation_routes_everything_to_it(home: Path, org: str) -> None:
    """`demo --org` gives a new organisation test files of its own (and nobody else's)."""
    made = cli(home, "demo", "--org", org, "--count", "40", "--lists", "3")
    assert made.exit_code == 0, made.output
    batch = next((home / "inbox" / "kela").glob("demo-*.xml"))
    ingested = cli(home, "ingest", str(batch))
    assert ingested.exit_code == 0, ingested.output
    cli(home, "release-due")
    status = cli(home, "status", "--json")
    orgs = {row["organisation"] for row in json.loads(status.output)["assignments"]}
    assert orgs == {org}


def test_demo_for_an_unknown_organisation_is_refused(home: Path) -> None:
    out = cli(home, "demo", "--org", "nobody")
    assert out.exit_code == 1 and "unknown organisation 'nobody'" in out.output


def test_key_options_such_as_from_are_kept(home: Path, tmp_path: Path) -> None:
    key = keygen(tmp_path / "k")
    line = 'from="10.0.0.0/8" ' + Path(f"{key}.pub").read_text().strip()
    added = cli(home, "keys", "add", "pirha", "-", stdin=line.encode())
    assert added.exit_code == 0, added.output
    stored = (home / "config" / "keys" / "pirha" / "authorized_keys").read_text()
    assert stored.startswith('from="10.0.0.0/8" ssh-')
