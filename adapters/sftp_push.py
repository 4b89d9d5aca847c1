"""Push an organisation's released files to its own SFTP server (paramiko).

Each file goes up as ``.<name>.part`` and is renamed into place (SPEC 1), so the
organisation's readers never see half a file. The server's host key must be in
the configured known_hosts: an unknown or changed key is refused, never trusted.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable
from pathlib import Path

import paramiko

from broker.config.settings import PushTarget
from broker.errors import DeliveryError


class SftpPusher:
    """Bounded in time: every network step (TCP connect, SSH banner, authentication and
    each SFTP request) waits at most ``target.timeout`` seconds, so a server that black-
    holes packets or stalls mid-transfer ends the push with an error, never hangs it."""

    def __init__(self, target: PushTarget) -> None:
        self.target = target
        self.timeout = target.timeout

    def push(self, local_root: Path, files: list[str],
             on_pushed: Callable[[str, int, str], None]) -> int:
        """Upload ``files`` (relative to ``local_root``); ``on_pushed`` after each rename."""
        if not files:
            return 0
        t = self.target
        if t.known_hosts is None or not t.known_hosts.is_file():
            raise DeliveryError("push needs a known_hosts file with the server's host key",
                                key=f"push.{t.host}")
        client = paramiko.SSHClient()
        client.load_host_keys(str(t.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(t.host, port=t.port, username=t.user, key_filename=str(t.key_file),
                           timeout=self.timeout, banner_timeout=self.timeout,
                           auth_timeout=self.timeout, channel_timeout=self.timeout,
                           allow_agent=False, look_for_keys=False)
        except (paramiko.SSHException, OSError) as exc:
            raise DeliveryError(f"cannot connect to {t.user}@{t.host}:{t.port}: {exc}") from exc
        count = 0
        try:
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.timeout)  # type: ignore[union-attr]
            made: set[str] = set()
            for rel in files:
                remote = posixpath.join(t.remote_dir, rel)
                parent = posixpath.dirname(remote)
                if parent not in made:
                    self._mkdirs(sftp, parent)
                    made.add(parent)
                tmp = posixpath.join(parent, f".{posixpath.basename(remote)}.part")
                size = (local_root / rel).stat().st_size
                sftp.put(str(local_root / rel), tmp, confirm=True)
                try:
                    sftp.posix_rename(tmp, remote)
                except OSError:
                    # Servers without posix-rename: a plain rename fails if the target
                    # exists (an earlier push cut short after the rename), so remove it.
                    with contextlib.suppress(OSError):
                        sftp.remove(remote)
                    sftp.rename(tmp, remote)
                on_pushed(rel, size, remote)
                count += 1
        except (paramiko.SSHException, OSError) as exc:
            raise DeliveryError(f"push to {t.user}@{t.host}:{t.port} stopped after {count} "
                                f"file(s): {exc}") from exc
        finally:
            client.close()
        return count

    @staticmethod
    def _mkdirs(sftp: paramiko.SFTPClient, path: str) -> None:
        parts: list[str] = []
        while path not in ("", "/"):
            parts.append(path)
            path = posixpath.dirname(path)
        for p in reversed(parts):
            try:
                sftp.stat(p)
            except OSError:
                sftp.mkdir(p)
