"""The two asyncssh patches of adapters/asyncssh_tuning still apply to the installed
asyncssh (if its internals change, these fail rather than the speed quietly going)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncssh
from asyncssh.logging import SSHLogger

from adapters.asyncssh_tuning import drop_ignore_packets, quiet_debug_logging


def test_ignore_packets_are_dropped_and_transfers_still_work(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "f.bin").write_bytes(data)
    counters: list = []

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            counters.append(drop_ignore_packets(conn))

        def begin_auth(self, username: str) -> bool:
            return False  # no authentication: this test is about packets

    async def run() -> bytes:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key], server_factory=Server,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(tmp_path)))
        port = server.sockets[0].getsockname()[1]
        try:
            async with (asyncssh.connect("127.0.0.1", port, known_hosts=None,
                                         username="x") as conn,
                        conn.start_sftp_client() as sftp,
                        sftp.open("/f.bin", "rb") as f):
                return await f.read()
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(run()) == data
    assert counters and counters[0]() > 10  # asyncssh still tries; the patch intercepts


def test_debug_lines_are_not_formatted_when_debug_is_off() -> None:
    quiet_debug_logging()
    quiet_debug_logging()  # idempotent
    formatted = []

    class Loud:
        def __str__(self) -> str:
            formatted.append(1)
            return "x"

    logger = SSHLogger(logging.getLogger("test-asyncssh-tuning"))
    logging.getLogger("test-asyncssh-tuning").setLevel(logging.INFO)
    logger.debug1("value %s", [Loud()])
    assert formatted == []
    logging.getLogger("test-asyncssh-tuning").setLevel(logging.DEBUG)
    logger.debug1("value %s", [Loud()])
    assert formatted == [1]


def test_hardlink_is_no_longer_advertised() -> None:
    from asyncssh.sftp import SFTPServerHandler

    from adapters.asyncssh_tuning import withdraw_hardlink

    withdraw_hardlink()
    names = [n for n, _ in SFTPServerHandler._extensions]
    assert b"hardlink@openssh.com" not in names and b"posix-rename@openssh.com" in names
