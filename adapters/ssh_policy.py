"""SSH policy of the SFTP server: algorithms and the host key (client keys are read by
``sftp_keys``, checked by ``ssh_keys``; bans live in ``broker.storage.bans``).

Kept apart from the server so the security-relevant choices are in one short
file an auditor can read (and ``ssh-audit`` checks them in the tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.encryption import get_encryption_algs
from asyncssh.kex import get_kex_algs
from asyncssh.mac import get_mac_algs

# Post-quantum hybrids first where this asyncssh/cryptography build offers them;
# curve25519 as the classical fallback every OpenSSH since 6.5 speaks.
_KEX_WANTED = (
    "mlkem768x25519-sha256",
    "sntrup761x25519-sha512",
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
# AES-GCM only. Clients choose by *their* preference order (RFC 4253 7.1), and the
# OpenSSH client puts chacha20-poly1305 first: offered, it is what every download
# uses, and asyncssh builds it per packet from three ChaCha20 ciphers plus Poly1305
# (28.5 us per 32 KiB packet against 7.3 us for AES-GCM on AES-NI; bench/sftp_bench.py
# measured 0.57x of sshd with it, about 1.0x without). Every client we document speaks
# AES-GCM (OpenSSH 6.2+, PuTTY/WinSCP 0.76+/5.19+, paramiko, asyncssh, rclone); older
# ones use the "compatible" profile's AES-CTR.
_CIPHERS_WANTED = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
)
_MACS_WANTED = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
HOST_KEY_ALGS = ("ssh-ed25519",)
HOST_KEY_FILE = "ssh_host_ed25519_key"  # under the home's var/, made by `kela-broker init`
# Client key signature algorithms: no SHA-1 ("ssh-rsa"), no DSA.
SIGNATURE_ALGS = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)


# What "compatible" adds, for clients without AEAD ciphers or etm MACs: libssh2
# 1.10 (Debian 12's curl), SSH.NET before 2024.0, JSch forks before 0.2.x.
# Measured with ssh-audit 3.x (tests/test_ssh_policy.py): left out are
# ecdh-sha2-nistp256 (ssh-audit FAIL: NIST curve) and diffie-hellman-group14-sha256
# (warn: 2048-bit modulus); curve25519 and group16 serve those clients instead.
# The non-etm MACs carry ssh-audit's one "encrypt-and-MAC" warning: libssh2 1.10
# has no other MAC, and strict key exchange (Terrapin) is still enforced.
_COMPAT_KEX = ("diffie-hellman-group16-sha512",)
_COMPAT_CIPHERS = ("aes128-ctr", "aes256-ctr")
_COMPAT_MACS = ("hmac-sha2-256", "hmac-sha2-512")


def _available(wanted: tuple[str, ...], offered: list[bytes]) -> tuple[str, ...]:
    have = {a.decode("ascii") for a in offered}
    return tuple(a for a in wanted if a in have)


KEX_ALGS = _available(_KEX_WANTED, get_kex_algs())
ENCRYPTION_ALGS = _available(_CIPHERS_WANTED, get_encryption_algs())
MAC_ALGS = _available(_MACS_WANTED, get_mac_algs())


@dataclass(frozen=True)
class AlgorithmProfile:
    """The algorithm lists handed to ``asyncssh.listen`` (server preference order)."""

    name: str
    kex: tuple[str, ...]
    encryption: tuple[str, ...]
    mac: tuple[str, ...]


PROFILES = {
    "modern": AlgorithmProfile("modern", KEX_ALGS, ENCRYPTION_ALGS, MAC_ALGS),
    # The additions go last: a client that speaks both still gets the modern choice.
    "compatible": AlgorithmProfile(
        "compatible",
        KEX_ALGS + _available(_COMPAT_KEX, get_kex_algs()),
        ENCRYPTION_ALGS + _available(_COMPAT_CIPHERS, get_encryption_algs()),
        MAC_ALGS + _available(_COMPAT_MACS, get_mac_algs()),
    ),
}


def algorithm_profile(name: str) -> AlgorithmProfile:
    """``[sftp] algorithms``; the config loader has already refused other names."""
    return PROFILES[name]


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The server's ed25519 host key; generated (mode 0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519")
        # O_EXCL: two starting servers never overwrite each other's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.export_private_key())
    key = asyncssh.read_private_key(path)
    if key.get_algorithm() != "ssh-ed25519":
        raise ValueError(f"{path}: host key must be ssh-ed25519, not {key.get_algorithm()}")
    return key


def fingerprint(key: asyncssh.SSHKey) -> str:
    """OpenSSH-style fingerprint, e.g. ``SHA256:abc...`` (what ``ssh`` shows on first use)."""
    return key.get_fingerprint("sha256")


@dataclass(frozen=True)
class HostKeyLines:
    """What an integrator pins before the first connection."""

    fingerprint: str  # SHA256:... (OpenSSH's first-use prompt, WinSCP's dialog)
    known_hosts: str  # a line for ~/.ssh/known_hosts
    putty: str  # PuTTY/psftp/WinSCP -hostkey value, e.g. "ssh-ed25519 255 SHA256:..."


def host_key_lines(key: asyncssh.SSHKey, host: str, port: int) -> HostKeyLines:
    public = key.convert_to_public()
    public.set_comment(None)
    blob = public.export_public_key("openssh").decode("ascii").strip()
    # OpenSSH writes a non-default port as "[host]:port" (sshd(8), SSH_KNOWN_HOSTS FORMAT).
    name = host if port == 22 else f"[{host}]:{port}"
    fp = fingerprint(key)
    # The host key is always ed25519 (load_or_create_host_key), which PuTTY calls 255 bits.
    return HostKeyLines(fp, f"{name} {blob}", f"{key.get_algorithm()} 255 {fp}")


def read_host_key(path: Path) -> asyncssh.SSHKey:
    """The existing host key (OSError when there is none yet)."""
    return asyncssh.read_private_key(path)
