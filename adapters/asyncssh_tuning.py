"""Two measured costs of asyncssh 2.x removed from the SFTP server's download path.

Measured with bench/sftp_bench.py (a 500 MB get with the OpenSSH client's defaults, see
the field note on SFTP download speed): the server is one CPU-bound Python thread, so
work per packet is what decides the speed.

1. ``SSHConnection.send_packet`` puts an empty SSH_MSG_IGNORE in front of every packet
   once encryption is on. That was a countermeasure for CBC-mode ciphers (predictable
   IVs); the broker offers no CBC cipher, only AEAD (AES-GCM) and CTR with
   encrypt-then-MAC, so the extra packet buys nothing and doubles the encryptions and
   ``send()`` calls (OpenSSH's sshd sends none). We drop exactly those packets on our own
   server connections; nothing else in the broker sends SSH_MSG_IGNORE.
2. ``SSHLogger.debug1`` converts its arguments (decoding paths) before the logging
   module checks the level; the SFTP handler logs two such lines per request. We check
   the level first, so nothing changes when debug logging is on.

3. Not a speed matter: asyncssh's SFTP server advertises ``hardlink@openssh.com`` to
   every client, but the broker refuses links (a link would escape the jail's rules),
   so clients are told only of extensions that work (``withdraw_hardlink``).

All patch asyncssh from outside, so ``tests/test_asyncssh_tuning.py`` checks that they
still apply to the installed version: if asyncssh changes these internals the test
fails instead of the speed silently going away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh.constants import MSG_IGNORE
from asyncssh.logging import SSHLogger
from asyncssh.packet import String
from asyncssh.sftp import SFTPServerHandler

_EMPTY_IGNORE = (String(b""),)


def drop_ignore_packets(conn: asyncssh.SSHServerConnection) -> Callable[[], int]:
    """Stop ``conn`` from sending the empty SSH_MSG_IGNORE before each packet.

    Returns a function giving how many were dropped (for the test that proves the patch
    still applies)."""
    send: Callable[..., None] = conn.send_packet
    dropped = 0

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        nonlocal dropped
        if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE:
            dropped += 1
            return
        send(pkttype, *args, handler=handler)

    # asyncssh calls self.send_packet(MSG_IGNORE, ...) from inside send_packet: an
    # instance attribute is found first, so the recursive call comes back here.
    conn.send_packet = send_packet  # type: ignore[method-assign]
    return lambda: dropped


def quiet_debug_logging() -> None:
    """Make asyncssh's level-1 debug lines cost nothing unless DEBUG is enabled."""
    if getattr(SSHLogger.debug1, "_broker_checked", False):
        return
    original = SSHLogger.debug1

    def debug1(self: SSHLogger, msg: str, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(logging.DEBUG):
            original(self, msg, *args, **kwargs)

    debug1._broker_checked = True  # type: ignore[attr-defined]
    SSHLogger.debug1 = debug1  # type: ignore[method-assign]


def withdraw_hardlink() -> None:
    """Stop advertising ``hardlink@openssh.com`` (the broker refuses it). Process-wide:
    asyncssh keeps the list on its handler class, and this process serves only us."""
    SFTPServerHandler._extensions = [
        (name, data) for name, data in SFTPServerHandler._extensions
        if name != b"hardlink@openssh.com"]
