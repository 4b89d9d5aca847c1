"""Every common integrator tool against the running daemon, over a 30 ms round trip.

Localhost answers in microseconds and hides what clients do after an upload: SETSTAT
after CLOSE, a rename then SETSTAT, a STAT to confirm the size. Each test uploads a
distinct response under its own name and asserts what an integrator sees: the client
exits 0 (or raises nothing) and exactly one ACCEPTED acknowledgement appears.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import asyncssh
import paramiko
import pytest
from daemon_support import (
    EXAMPLES,
    DaemonProcess,
    drop,
    keygen,
    make_home,
    metric,
    set_keys,
    wait_for,
)
from latency_proxy import LatencyProxy
from lxml import etree

ORG = "pirha"
RTT = 0.03
_serial = count(1)
SSH_OPTS = ["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]


@dataclass
class Broker:
    home: Path
    key: Path
    port: int  # the proxy's port: every client goes through the latency
    metrics_port: int

    @property
    def outbox(self) -> Path:
        return self.home / "outbox" / ORG


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    root = tmp_path_factory.mktemp("clients")
    home = make_home(root / "home")
    key = root / "key"
    keygen(key)
    (home / "config" / "keys" / ORG).mkdir(parents=True)
    shutil.copyfile(f"{key}.pub", home / "config" / "keys" / ORG / "authorized_keys")
    d = DaemonProcess(home).start()
    try:
        drop(home, EXAMPLES / "decision-batch.xml")
        wait_for(lambda: len(list((home / "outbox" / ORG).glob("D-*.xml"))) == 2,
                 what="deliveries")
        with LatencyProxy(("127.0.0.1", d.sftp_port), rtt=RTT) as proxy:
            yield Broker(home, key, proxy.port, d.metrics_port)
    finally:
        d.stop()


def response(tmp: Path) -> tuple[str, Path]:
    """A fresh valid response (a payment demand of its own) and its local path."""
    n = next(_serial)
    name = f"vastaus-{os.getpid()}-{n}.xml"
    text = (EXAMPLES / "municipality-response.xml").read_text()
    start, end = text.index("  <Receipt"), text.index("  <PaymentDemand")
    text = text[:start] + text[end:]  # a receipt or transfer is taken only once
    text = text.replace("PIRHA-2026-11-21-001", f"PIRHA-2026-11-21-{os.getpid()}-{n}")
    text = text.replace("PD-PIRHA-2026-0042", f"PD-PIRHA-2026-{os.getpid()}-{n}")
    path = tmp / name
    path.write_text(text)
    return name, path


def assert_one_accepted_ack(b: Broker, name: str) -> None:
    ack = b.outbox / "acks" / f"{name}.ack.xml"
    wait_for(ack.exists, what=f"acknowledgement of {name}")
    assert etree.parse(str(ack)).getroot().get("status") == "ACCEPTED", ack.read_text()
    history = b.outbox / "acks" / "history"
    assert not list(history.glob(f"{name}*")) if history.exists() else True


def paramiko_client(b: Broker) -> paramiko.SFTPClient:
    t = paramiko.Transport(("127.0.0.1", b.port))
    t.connect(username=ORG, pkey=paramiko.Ed25519Key.from_private_key_file(str(b.key)))
    return paramiko.SFTPClient.from_transport(t)  # type: ignore[return-value]


def test_paramiko_put_with_confirm(broker: Broker, tmp_path: Path) -> None:
    name, local = response(tmp_path)
    sftp = paramiko_client(broker)
    try:
        attrs = sftp.put(str(local), f"/to-kela/{name}", confirm=True)  # STATs after close
        assert attrs.st_size == local.stat().st_size
        names = sorted(n for n in sftp.listdir("/from-kela") if n.startswith("D-"))
        got = tmp_path / "got.xml"
        out_before = metric(broker.metrics_port, "kela_broker_sftp_bytes_total",
                            organisation=ORG, direction="out")
        sftp.get(f"/from-kela/{names[0]}", str(got))
        assert got.read_bytes() == (broker.outbox / names[0]).read_bytes()
    finally:
        sftp.close()
    assert_one_accepted_ack(broker, name)
    # The SFTP metrics saw the login, the upload and the download.
    assert metric(broker.metrics_port, "kela_broker_sftp_logins_total", organisation=ORG) >= 1
    assert metric(broker.metrics_port, "kela_broker_sftp_bytes_total", organisation=ORG,
                  direction="in") >= local.stat().st_size
    wait_for(lambda: metric(broker.metrics_port, "kela_broker_sftp_bytes_total",
                            organisation=ORG, direction="out") - out_before == got.stat().st_size,
             what="download counted")


def test_asyncssh_put_preserve(broker: Broker, tmp_path: Path) -> None:
    name, local = response(tmp_path)
    os.utime(local, (1_700_000_000, 1_700_000_000))

    async def run() -> None:
        async with (asyncssh.connect("127.0.0.1", broker.port, username=ORG,
                                     client_keys=[str(broker.key)], known_hosts=None) as conn,
                    conn.start_sftp_client() as sftp):
            await sftp.put(str(local), f"/to-kela/{name}", preserve=True)

    asyncio.run(run())
    assert_one_accepted_ack(broker, name)


def test_winscp_style_filepart_rename_then_setstat(broker: Broker, tmp_path: Path) -> None:
    """WinSCP's defaults: upload to .filepart, rename, then set the timestamp."""
    name, local = response(tmp_path)
    sftp = paramiko_client(broker)
    try:
        with sftp.open(f"/to-kela/{name}.filepart", "wb") as f:
            f.write(local.read_bytes())
        sftp.rename(f"/to-kela/{name}.filepart", f"/to-kela/{name}")
        sftp.utime(f"/to-kela/{name}", (1_700_000_000, 1_700_000_000))
        assert sftp.stat(f"/to-kela/{name}").st_size == local.stat().st_size
    finally:
        sftp.close()
    assert_one_accepted_ack(broker, name)


def test_winscp_style_close_then_setstat(broker: Broker, tmp_path: Path) -> None:
    """Without transfer resume WinSCP writes the final name and sets times after CLOSE."""
    name, local = response(tmp_path)
    sftp = paramiko_client(broker)
    try:
        with sftp.open(f"/to-kela/{name}", "wb") as f:
            f.write(local.read_bytes())
        sftp.utime(f"/to-kela/{name}", (1_700_000_000, 1_700_000_000))
        sftp.chmod(f"/to-kela/{name}", 0o644)
        st = sftp.stat(f"/to-kela/{name}")
        assert st.st_size == local.stat().st_size and st.st_mtime == 1_700_000_000
    finally:
        sftp.close()
    assert_one_accepted_ack(broker, name)


def openssh(tool: str, broker: Broker, *args: str, legacy: bool = False,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(tool)
    if binary is None:
        pytest.skip(f"{tool} is not installed")
    cmd = [binary, "-i", str(broker.key), *SSH_OPTS, "-P", str(broker.port)]
    if legacy:
        cmd.insert(1, "-O")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60,
                          input=stdin)


def test_openssh_sftp_batch(broker: Broker, tmp_path: Path) -> None:
    name, local = response(tmp_path)
    r = openssh("sftp", broker, "-b", "-", f"{ORG}@127.0.0.1",
                stdin=f"ls /from-kela\nput -p {local} /to-kela/{name}\nbye\n")
    assert r.returncode == 0, r.stderr
    assert_one_accepted_ack(broker, name)


def test_openssh_df_gets_real_numbers_and_no_hard_links_are_offered(broker: Broker) -> None:
    r = openssh("sftp", broker, "-b", "-", f"{ORG}@127.0.0.1",
                stdin="df /to-kela\n-ln /to-kela/a /to-kela/b\nbye\n")
    assert r.returncode == 0, r.stderr
    numbers = [line.split() for line in r.stdout.splitlines()
               if line.split() and line.split()[0].isdigit()]
    assert numbers, r.stdout
    size, _used, avail = (int(x) for x in numbers[-1][:3])
    assert size > 0 and 0 < avail <= size, r.stdout  # KiB, as df prints them
    assert "does not support hardlink@openssh.com" in r.stderr  # not advertised


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-sftp-mode", "scp-O-legacy"])
def test_openssh_scp_both_ways(broker: Broker, tmp_path: Path, legacy: bool) -> None:
    name, local = response(tmp_path)
    up = openssh("scp", broker, str(local), f"{ORG}@127.0.0.1:/to-kela/{name}", legacy=legacy)
    assert up.returncode == 0, up.stderr
    assert_one_accepted_ack(broker, name)
    first = sorted(broker.outbox.glob("D-*.xml"))[0].name
    down = openssh("scp", broker, f"{ORG}@127.0.0.1:/from-kela/{first}", str(tmp_path / first),
                   legacy=legacy)
    assert down.returncode == 0, down.stderr
    assert (tmp_path / first).read_bytes() == (broker.outbox / first).read_bytes()
    # The same jail as SFTP: nothing outside the two folders, not even by scp's own paths.
    for escape in ("/../../config/broker.toml", "/etc/passwd", "/from-kela/../../var"):
        out = openssh("scp", broker, f"{ORG}@127.0.0.1:{escape}", str(tmp_path / "x"),
                      legacy=legacy)
        assert out.returncode != 0 and not (tmp_path / "x").exists(), escape


def test_rclone_default_flags(broker: Broker, tmp_path: Path) -> None:
    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.skip("rclone is not installed (make test installs it)")
    name, local = response(tmp_path)
    env = {**os.environ, "RCLONE_CONFIG_BROKER_TYPE": "sftp",
           "RCLONE_CONFIG_BROKER_HOST": "127.0.0.1",
           "RCLONE_CONFIG_BROKER_PORT": str(broker.port),
           "RCLONE_CONFIG_BROKER_USER": ORG,
           "RCLONE_CONFIG_BROKER_KEY_FILE": str(broker.key),
           "RCLONE_CONFIG": str(tmp_path / "rclone.conf")}
    r = subprocess.run([rclone, "copyto", str(local), f"broker:/to-kela/{name}"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert_one_accepted_ack(broker, name)
    acks = [p for p in (broker.outbox / "acks").rglob(f"{name}*")]
    assert len(acks) == 1, acks  # uploaded once, not retried
    listing = subprocess.run([rclone, "lsf", "broker:/from-kela"], capture_output=True,
                             text=True, timeout=60, env=env)
    assert listing.returncode == 0, listing.stderr
    files = [n for n in listing.stdout.split() if not n.endswith("/")]  # acks/ is a folder
    assert sorted(files) == sorted(p.name for p in broker.outbox.glob("D-*"))


def test_curl_with_the_compatible_profile(tmp_path: Path) -> None:
    """Debian's curl (libssh2 1.10) needs `algorithms = "compatible"`: upload and download
    through the latency proxy, one ACCEPTED ack."""
    curl = shutil.which("curl")
    if curl is None or "sftp" not in subprocess.run([curl, "-V"], capture_output=True,
                                                     text=True).stdout:
        pytest.skip("curl without sftp support")
    home = make_home(tmp_path / "home")
    set_keys(home, "sftp", algorithms="compatible")
    key = tmp_path / "key"
    keygen(key)
    (home / "config" / "keys" / ORG).mkdir(parents=True)
    shutil.copyfile(f"{key}.pub", home / "config" / "keys" / ORG / "authorized_keys")
    d = DaemonProcess(home).start()
    try:
        drop(home, EXAMPLES / "decision-batch.xml")
        outbox = home / "outbox" / ORG
        wait_for(lambda: list(outbox.glob("D-*.xml")), what="deliveries")
        with LatencyProxy(("127.0.0.1", d.sftp_port), rtt=RTT) as proxy:
            b = Broker(home, key, proxy.port, d.metrics_port)
            name, local = response(tmp_path)
            base = f"sftp://{ORG}@127.0.0.1:{proxy.port}"
            auth = ["-sS", "-k", "--key", str(key), "--pubkey", f"{key}.pub"]
            up = subprocess.run([curl, *auth, "-T", str(local), f"{base}/to-kela/{name}"],
                                capture_output=True, text=True, timeout=60)
            assert up.returncode == 0, up.stderr
            assert_one_accepted_ack(b, name)
            first = sorted(outbox.glob("D-*.xml"))[0]
            down = subprocess.run([curl, *auth, "-o", str(tmp_path / "d.xml"),
                                   f"{base}/from-kela/{first.name}"],
                                  capture_output=True, text=True, timeout=60)
            assert down.returncode == 0, down.stderr
            assert (tmp_path / "d.xml").read_bytes() == first.read_bytes()
    finally:
        d.stop()


def test_an_upload_cut_by_a_lost_connection_is_answered_never_processed(
        broker: Broker, tmp_path: Path) -> None:
    """The connection dies mid-upload: the ack says it was cut off and nothing was
    processed, the fragment is not taken after a rescan, and a complete re-upload of the
    same name is ACCEPTED (the cut ack moves to history)."""
    name, local = response(tmp_path)
    body = local.read_bytes()
    padded = body.replace(b"</MunicipalityResponse>",
                          b"<!--" + b"x" * 400_000 + b"-->\n</MunicipalityResponse>")
    t = paramiko.Transport(("127.0.0.1", broker.port))
    t.connect(username=ORG, pkey=paramiko.Ed25519Key.from_private_key_file(str(broker.key)))
    sftp = paramiko.SFTPClient.from_transport(t)
    assert sftp is not None
    fh = sftp.open(f"/to-kela/{name}", "wb")
    fh.write(padded[:200_000])
    fh.flush()
    t.sock.close()  # the network goes away: no CLOSE ever arrives
    ack = broker.outbox / "acks" / f"{name}.ack.xml"
    wait_for(ack.exists, what="ack of the cut upload")
    text = ack.read_text()
    assert etree.fromstring(ack.read_bytes()).get("status") == "REJECTED"
    assert "katkesi" in text or "cut off" in text, text  # in the organisation's language
    fragment = broker.home / "inbox" / ORG / name
    assert fragment.exists()  # kept for a resume, marked: never processed as whole
    time.sleep(3)  # more than one inbox rescan (rescan_seconds = 2)
    assert fragment.exists() and etree.parse(str(ack)).getroot().get("status") == "REJECTED"
    sftp2 = paramiko_client(broker)
    try:
        sftp2.put(str(local), f"/to-kela/{name}")
    finally:
        sftp2.close()
    wait_for(lambda: etree.parse(str(ack)).getroot().get("status") == "ACCEPTED",
             what="the re-upload's ack")
    assert list((broker.outbox / "acks" / "history").glob(f"{name}.*.ack.xml"))
