"""Start the real daemon (``kela-broker run``) as a process, on free ports, and stop it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import storage_support

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "contracts" / "examples"
KELA_BROKER = str(Path(sys.executable).parent / "kela-broker")


def make_home(root: Path) -> Path:
    """A broker home with the repo's sample configuration and empty data folders."""
    shutil.copytree(REPO / "config", root / "config", ignore=shutil.ignore_patterns("keys"))
    for sub in ("config/keys", "inbox/kela", "outbox", "var"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return storage_support.apply(root)


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A passphrase-less client key pair at ``path`` and ``path.pub`` (ssh-keygen)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)],
                   check=True)
    return path


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    """Poll until ``predicate`` is truthy; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


@dataclass
class DaemonProcess:
    home: Path
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, object] = field(default_factory=dict)
    log_path: Path | None = None
    nofile: int | None = None  # RLIMIT_NOFILE (soft and hard) for the daemon, if set
    until_idle: bool = False  # the daemon stops by itself once it has nothing to do

    def _limits(self) -> None:
        import resource

        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self, wait: bool = True) -> DaemonProcess:
        run_file = self.home / "var" / "run.json"
        run_file.unlink(missing_ok=True)
        self.log_path = self.home / "daemon.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [KELA_BROKER, "--home", str(self.home), "run", "--sftp-listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", *(["--until-idle"] if self.until_idle else [])],
            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=self._limits if self.nofile is not None else None)
        log.close()
        if wait:
            wait_for(lambda: run_file.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                     what="daemon start")
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited at start:\n{self.log()}")
            self.info = json.loads(run_file.read_text())
        return self

    @property
    def sftp_port(self) -> int:
        return int(self.info["sftp_port"])  # type: ignore[arg-type]

    @property
    def metrics_port(self) -> int:
        return int(self.info["metrics_port"])  # type: ignore[arg-type]

    def wait_idle(self, timeout: float = 120.0) -> int:
        """Wait for a daemon started ``until_idle`` to stop by itself; its exit code."""
        assert self.until_idle and self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon not idle within {timeout} s:\n{self.log()}") from None

    def log(self) -> str:
        """The raw log (for failure messages; tests assert on :meth:`events`)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def events(self, event: str | None = None, **fields: object) -> list[dict[str, object]]:
        """The daemon's structured log events (JSON lines), as structlog's capture_logs
        gives them in-process: those named ``event`` with these ``fields``, in order."""
        found = []
        for line in self.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a library's plain line (never ours)
            if event is not None and entry.get("event") != event:
                continue
            if all(entry.get(k) == v for k, v in fields.items()):
                found.append(entry)
        return found

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([KELA_BROKER, "--home", str(home), *args], capture_output=True,
                            text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"kela-broker {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def drop(home: Path, source: Path, name: str | None = None) -> Path:
    """Drop a file into inbox/kela/ the way SPEC 1 says writers must: temp name, rename."""
    name = name or source.name
    inbox = home / "inbox" / "kela"
    tmp = inbox / f".{name}.part"
    shutil.copyfile(source, tmp)
    final = inbox / name
    tmp.rename(final)
    return final


def set_keys(home: Path, section: str, **values: object) -> None:
    """Set ``key = value`` in ``[section]`` of the home's broker.toml (replacing the key
    where the section already has it)."""
    import re

    cfg = home / "config" / "broker.toml"
    text = cfg.read_text()
    header = re.compile(rf"^\[{re.escape(section)}\]\n", re.MULTILINE)
    m = header.search(text)
    if m:
        end = text.find("\n[", m.end())
        body = text[m.end():end if end >= 0 else len(text)]
        for k in values:
            body = re.sub(rf"^{re.escape(k)}\s*=.*\n", "", body, flags=re.MULTILINE)
        text = text[:m.end()] + body + (text[end:] if end >= 0 else "")
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    if header.search(text):
        text = header.sub(lambda m: m.group(0) + lines, text, count=1)
    else:
        at = text.index("\n[[organisation]]") + 1
        text = text[:at] + f"[{section}]\n{lines}\n" + text[at:]
    cfg.write_text(text)


def health(port: int) -> tuple[int, str]:
    """(HTTP status, body) of the daemon's /healthz."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of the daemon's /metrics (0.0 when absent)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def delivered_ids(folder: Path) -> list[str]:
    """Notification ids in the D-*.xml delivery files of one outbox folder."""
    from lxml import etree

    ids: list[str] = []
    for path in sorted(folder.glob("D-*.xml")):
        for _, el in etree.iterparse(str(path), tag="{*}Notification"):
            ids.append(el.get("id"))
    return ids


def wait_released(daemon: DaemonProcess, archived: int) -> None:
    """Wait until ``archived`` batches are archived and a release pass that began after
    the last of them has finished: every delivery due from them is then on disk."""
    archive = daemon.home / "var" / "archive"

    def done() -> bool:
        files = list(archive.rglob("*.xml"))
        if len(files) < archived:
            return False
        newest = max(f.stat().st_ctime for f in files)  # moved in: ctime, not mtime
        return metric(daemon.metrics_port, "kela_broker_last_release_pass_timestamp") >= newest

    wait_for(done, what=f"{archived} archived batch(es) released")
