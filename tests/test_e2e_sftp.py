"""The whole exchange through the daemon with real SFTP clients (issues 6 and 7).

Kela drops a batch; the county downloads its delivery with OpenSSH ``sftp``,
uploads the contract's response, reads its acknowledgement; the transfer reaches
the other county; Kela's back-end finds the accepted response in outbox/kela/.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest
from daemon_support import EXAMPLES, DaemonProcess, cli, drop, keygen, make_home, wait_for
from lxml import etree

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

ACK_NS = "{urn:fi:kela:etotu:acknowledgement:1}"


class Client:
    """The OpenSSH sftp client in batch mode, checking the broker's host key."""

    def __init__(self, daemon: DaemonProcess, org: str, key: Path, work: Path) -> None:
        self.daemon, self.org, self.key, self.work = daemon, org, key, work
        host_pub = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(daemon.home / "var" / "ssh_host_ed25519_key")],
            capture_output=True, text=True, check=True).stdout.strip()
        self.known_hosts = work / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{daemon.sftp_port} {host_pub}\n")

    def options(self, port_flag: str = "-P") -> list[str]:  # sftp -P, ssh -p
        return [port_flag, str(self.daemon.sftp_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]

    def batch(self, *commands: str) -> subprocess.CompletedProcess[str]:
        script = self.work / "batch.txt"
        script.write_text("\n".join(commands) + "\n")
        return subprocess.run(["sftp", "-b", str(script), "-i", str(self.key), *self.options(),
                               f"{self.org}@127.0.0.1"], capture_output=True, text=True,
                              timeout=60, cwd=self.work)


@pytest.fixture()
def exchange(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = make_home(tmp_path / "home")
    keys = {}
    for org in ("pirha", "varha"):
        key = keygen(tmp_path / f"{org}_key")
        (home / "config" / "keys" / org).mkdir(parents=True)
        shutil.copyfile(f"{key}.pub", home / "config" / "keys" / org / "authorized_keys")
        keys[org] = key
    d = DaemonProcess(home).start()
    work = tmp_path / "client"
    work.mkdir()
    try:
        yield d, {org: Client(d, org, key, work) for org, key in keys.items()}
    finally:
        d.stop()


def test_county_downloads_answers_and_kela_gets_the_answer(exchange, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daemon, clients = exchange
    home: Path = daemon.home
    pirha = clients["pirha"]
    drop(home, EXAMPLES / "decision-batch.xml")
    wait_for(lambda: len(list((home / "outbox" / "pirha").glob("D-*.xml"))) == 2,
             what="both pirha deliveries (837: next-day type already due, urgent one)")

    listing = pirha.batch("ls -1 /", "ls -l /from-kela")
    assert listing.returncode == 0, listing.stderr
    assert "/from-kela" in listing.stdout and "/to-kela" in listing.stdout
    names = sorted(p.name for p in (home / "outbox" / "pirha").glob("D-*.xml"))
    for name in names:
        assert name in listing.stdout
    got = pirha.batch(*(f"get /from-kela/{n}" for n in names))
    assert got.returncode == 0, got.stderr
    for n in names:
        assert (pirha.work / n).read_bytes() == (home / "outbox" / "pirha" / n).read_bytes()

    # Upload under a temporary name, then rename: the broker must not touch the .part.
    shutil.copyfile(EXAMPLES / "municipality-response.xml", pirha.work / "vastaus.xml")
    up = pirha.batch("put vastaus.xml /to-kela/vastaus.xml.part",
                     "rename /to-kela/vastaus.xml.part /to-kela/vastaus.xml")
    assert up.returncode == 0, up.stderr
    ack = home / "outbox" / "pirha" / "acks" / "vastaus.xml.ack.xml"
    wait_for(ack.exists, what="acknowledgement")
    root = etree.parse(str(ack)).getroot()
    assert root.get("status") == "ACCEPTED", etree.tostring(root)
    sha = hashlib.sha256((EXAMPLES / "municipality-response.xml").read_bytes()).hexdigest()
    assert root.get("sha256") == sha
    got_ack = pirha.batch("get /from-kela/acks/vastaus.xml.ack.xml")
    assert got_ack.returncode == 0, got_ack.stderr

    # The transfer of N-2026-000000004 to Turku (853) reaches Varsinais-Suomi.
    def transferred() -> list[Path]:
        return [p for p in (home / "outbox" / "varha").glob("D-*.xml")
                if "N-2026-000000004" in p.read_text()]
    wait_for(transferred, what="transfer delivered to varha")
    varha = clients["varha"].batch("ls -1 /from-kela")
    assert transferred()[0].name in varha.stdout
    forwarded = [p for p in (home / "outbox" / "kela").iterdir() if p.is_file()]
    assert len(forwarded) == 1 and sha in forwarded[0].read_text() + forwarded[0].name

    # Same bytes again: DUPLICATE, nothing changes.
    again = pirha.batch("put vastaus.xml /to-kela/vastaus-2.xml")
    assert again.returncode == 0, again.stderr
    ack2 = home / "outbox" / "pirha" / "acks" / "vastaus-2.xml.ack.xml"
    wait_for(ack2.exists, what="second acknowledgement")
    assert etree.parse(str(ack2)).getroot().get("status") == "DUPLICATE"
    assert len([p for p in (home / "outbox" / "kela").iterdir() if p.is_file()]) == 1

    story = cli(home, "notification", "show", "N-2026-000000004").stdout
    assert "pirha" in story and "varha" in story and "060885V907H" not in story
    audit = json.loads(cli(home, "audit", "show", "--org", "pirha", "--json").stdout)
    actions = {r["action"] for r in audit}
    assert {"login", "download", "upload", "rename"} <= actions, actions
    assert "audit trail intact" in cli(home, "audit", "verify").stdout


def test_forbidden_operations_fail_and_the_session_goes_on(exchange) -> None:  # type: ignore[no-untyped-def]
    daemon, clients = exchange
    home: Path = daemon.home
    pirha = clients["pirha"]
    drop(home, EXAMPLES / "decision-batch.xml")
    wait_for(lambda: list((home / "outbox" / "varha").glob("*")) or
             list((home / "outbox" / "pirha").glob("D-*.xml")), what="deliveries")
    (pirha.work / "x.txt").write_text("x")
    result = pirha.batch(
        "-get /etc/passwd", "-get /from-kela/../../config/broker.toml",
        "-ls /varha", "-ls /../../", "-put x.txt /from-kela/x.txt",
        "-symlink /etc/passwd /to-kela/link", "-get ../../var/state.db",
        "ls /from-kela")
    assert result.returncode == 0, result.stderr  # the session survived every refusal
    assert not (pirha.work / "passwd").exists()
    assert not (pirha.work / "broker.toml").exists()
    assert not (pirha.work / "state.db").exists()
    assert not (home / "outbox" / "pirha" / "x.txt").exists()
    assert not (home / "inbox" / "pirha" / "link").exists()
    refusals = [ln for ln in result.stderr.splitlines()
                if "not found" in ln or "Permission denied" in ln]
    assert len(refusals) == 6, result.stderr  # one per refused command
    # "/../.." is clamped to the client's own root, as in a chroot: only its two folders.
    listed = {name for ln in result.stdout.splitlines() if not ln.startswith("sftp>")
              for name in ln.split() if name.startswith("/../../")}
    assert listed == {"/../../from-kela", "/../../to-kela"}, result.stdout
    # No password login, whatever the client tries.
    pw = subprocess.run(["ssh", *pirha.options("-p"), "-o", "PreferredAuthentications=password",
                         "-o", "PubkeyAuthentication=no", "pirha@127.0.0.1", "true"],
                        capture_output=True, text=True, timeout=30)
    assert pw.returncode != 0 and "Permission denied" in pw.stderr
    assert daemon.alive()


def test_paramiko_client_downloads_with_its_defaults(exchange) -> None:  # type: ignore[no-untyped-def]
    daemon, clients = exchange
    home: Path = daemon.home
    drop(home, EXAMPLES / "decision-batch.xml")
    wait_for(lambda: list((home / "outbox" / "pirha").glob("D-*.xml")), what="delivery")
    transport = paramiko.Transport(("127.0.0.1", daemon.sftp_port))
    try:
        transport.connect(username="pirha",
                          pkey=paramiko.Ed25519Key.from_private_key_file(
                              str(clients["pirha"].key)))
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        names = [n for n in sftp.listdir("/from-kela") if n.startswith("D-")]
        assert names
        local = clients["pirha"].work / names[0]
        sftp.get(f"/from-kela/{names[0]}", str(local))
        assert local.read_bytes() == (home / "outbox" / "pirha" / names[0]).read_bytes()
        with pytest.raises(PermissionError):
            sftp.open("/from-kela/new.xml", "w")
    finally:
        transport.close()


def test_a_fixed_file_under_the_same_long_name_gets_the_current_ack(exchange) -> None:  # type: ignore[no-untyped-def]
    """SPEC 7: acks/<name>.ack.xml is about the latest upload of that name, the earlier one
    moves to acks/history/; a name too long for the quarantine's time stamp is answered once."""
    daemon, clients = exchange
    home: Path = daemon.home
    pirha = clients["pirha"]
    name = "v" * 240 + ".xml"  # with a time stamp in front it would not fit in one name
    bad = (EXAMPLES / "municipality-response.xml").read_text().replace(
        "FI1086094555154084", "FI1086094555154085")  # the IBAN check digits fail
    (pirha.work / "fix.xml").write_text(bad)
    up = pirha.batch(f"put fix.xml /to-kela/{name}")
    assert up.returncode == 0, up.stderr
    acks = home / "outbox" / "pirha" / "acks"
    current = wait_for(lambda: list(acks.glob("v*.ack.xml")), what="first ack")
    (first,) = current  # type: ignore[misc]
    assert b'status="REJECTED"' in first.read_bytes()
    wait_for(lambda: not (home / "inbox" / "pirha" / name).exists(), what="first settled")
    assert len(list((home / "var" / "quarantine" / "pirha").glob("*.report.txt"))) == 1

    shutil.copyfile(EXAMPLES / "municipality-response.xml", pirha.work / "fix.xml")
    drop(home, EXAMPLES / "decision-batch.xml")  # so the response's notifications exist
    wait_for(lambda: len(list((home / "outbox" / "pirha").glob("D-*.xml"))) == 2,
             what="pirha deliveries")
    up = pirha.batch(f"put fix.xml /to-kela/{name}")
    assert up.returncode == 0, up.stderr
    wait_for(lambda: first.exists() and b'status="ACCEPTED"' in first.read_bytes(),
             what="the new current ack")
    (old,) = (acks / "history").iterdir()
    assert b'status="REJECTED"' in old.read_bytes() and old.name.endswith(".ack.xml")
    listing = pirha.batch("ls -1 /from-kela/acks", "ls -1 /from-kela/acks/history")
    assert listing.returncode == 0 and old.name in listing.stdout
