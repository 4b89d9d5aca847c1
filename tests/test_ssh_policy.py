"""Algorithm profiles: "modern" by default, "compatible" for libssh2 1.10 (curl) and
older .NET/Java clients, both checked by ssh-audit and by a real curl binary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from adapters.ssh_policy import PROFILES
from broker.config.settings import load_config
from broker.errors import ConfigError

if TYPE_CHECKING:
    from sftp_support import Running

pytest_plugins = ("sftp_support",)


def _ssh_audit() -> str | None:
    exe = Path(sys.executable).parent / "ssh-audit"
    return str(exe) if exe.exists() else shutil.which("ssh-audit")


def _audit(port: int) -> dict[str, Any]:
    exe = _ssh_audit()
    assert exe is not None
    result = subprocess.run(
        [exe, "--json", "--skip-rate-test", "-p", str(port), "127.0.0.1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# The warnings the compatible profile accepts, and why (see README, "Algorithm profiles"):
# classical key exchange next to the post-quantum hybrid, and encrypt-and-MAC, which is
# all libssh2 1.10 speaks (strict key exchange still closes Terrapin).
def _accepted(section: str, alg: str, warn: str) -> bool:
    if section == "kex" and "post-quantum" in warn:
        return alg.startswith("curve25519") or alg == "diffie-hellman-group16-sha512"
    return section == "mac" and alg in ("hmac-sha2-256", "hmac-sha2-512") and \
        "encrypt-and-MAC" in warn


@pytest.mark.skipif(_ssh_audit() is None, reason="ssh-audit not installed (pip install ssh-audit)")
def test_compatible_profile_has_no_ssh_audit_failure(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(algorithms="compatible")
    report = _audit(running.port)
    problems = []
    for section in ("kex", "key", "enc", "mac"):
        for alg in report[section]:
            notes = alg.get("notes", {})
            if notes.get("fail"):
                problems.append(f"{section} {alg['algorithm']}: fail {notes['fail']}")
            problems += [f"{section} {alg['algorithm']}: warn {w}" for w in notes.get("warn", [])
                         if not _accepted(section, alg["algorithm"], w)]
    assert problems == []
    assert report["cves"] == []
    offered = {a["algorithm"] for s in ("kex", "enc", "mac") for a in report[s]}
    assert {"aes128-ctr", "aes256-ctr", "hmac-sha2-256", "hmac-sha2-512",
            "diffie-hellman-group16-sha512", "kex-strict-s-v00@openssh.com"} <= offered
    # The modern choices stay first: clients that have them keep using them.
    assert report["enc"][0]["algorithm"] == PROFILES["modern"].encryption[0]
    assert [a["algorithm"] for a in report["key"]] == ["ssh-ed25519"]


def test_modern_profile_offers_nothing_extra() -> None:
    modern, compat = PROFILES["modern"], PROFILES["compatible"]
    assert not any("ctr" in c for c in modern.encryption)
    assert all(m.endswith("-etm@openssh.com") for m in modern.mac)
    assert compat.encryption[: len(modern.encryption)] == modern.encryption
    assert compat.kex[: len(modern.kex)] == modern.kex
    # ssh-audit fails NIST curves and warns on 2048-bit DH: neither is offered.
    assert "ecdh-sha2-nistp256" not in compat.kex
    assert "diffie-hellman-group14-sha256" not in compat.kex


def _curl_has_sftp() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    return "sftp" in subprocess.run([curl, "-V"], capture_output=True, text=True).stdout


def _curl(running: Running, org: str, name: str, dest: Path) -> subprocess.CompletedProcess[str]:
    key = running.keys[org]
    return subprocess.run(
        ["curl", "-sS", "-k", "--key", str(key), "--pubkey", f"{key}.pub", "-o", str(dest),
         f"sftp://{org}@127.0.0.1:{running.port}/from-kela/{name}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


PAYLOAD = b"<delivery>" + b"x" * 200_000 + b"</delivery>"


@pytest.mark.skipif(not _curl_has_sftp(), reason="curl without sftp support")
def test_curl_downloads_with_the_compatible_profile(
    start_sftp: Callable[..., Running], tmp_path: Path,
) -> None:
    running = start_sftp(algorithms="compatible")
    (running.outbox("alpha") / "batch.xml").write_bytes(PAYLOAD)
    got = _curl(running, "alpha", "batch.xml", tmp_path / "c.xml")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "c.xml").read_bytes() == PAYLOAD
    assert [e.org for e in running.actions("login")] == ["alpha"]


@pytest.mark.skipif(not _curl_has_sftp(), reason="curl without sftp support")
def test_curl_cannot_negotiate_the_modern_profile(
    sftp_server: Running, tmp_path: Path,
) -> None:
    (sftp_server.outbox("alpha") / "batch.xml").write_bytes(PAYLOAD)
    refused = _curl(sftp_server, "alpha", "batch.xml", tmp_path / "m.xml")
    # Debian 12's curl (libssh2 1.10) has no AEAD cipher and no etm MAC.
    if refused.returncode == 0:
        pytest.skip("this curl's libssh2 negotiates the modern profile (1.11 or later)")
    assert "Unable to exchange encryption keys" in refused.stderr
    assert not (tmp_path / "m.xml").exists() or (tmp_path / "m.xml").read_bytes() == b""
    # A client that cannot agree on algorithms is not an attacker: no failure counted.
    assert sftp_server.actions("preauth_error") == [] and sftp_server.actions("ban") == []


def test_algorithms_setting_is_checked(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from broker.cli import main

    home = tmp_path / "home"
    assert CliRunner().invoke(main, ["init", str(home)]).exit_code == 0
    path = home / "config" / "broker.toml"
    text = path.read_text()
    assert load_config(home).sftp.algorithms == "modern"
    path.write_text(text.replace('algorithms = "modern"', 'algorithms = "compatible"'))
    assert load_config(home).sftp.algorithms == "compatible"
    path.write_text(text.replace('algorithms = "modern"', 'algorithms = "legacy"'))
    with pytest.raises(ConfigError) as info:
        load_config(home)
    line = next(i + 1 for i, ln in enumerate(text.splitlines()) if ln.startswith("algorithms"))
    assert f"broker.toml:{line}: sftp.algorithms: algorithms must be one of modern, " \
        "compatible, found 'legacy'" in str(info.value)
