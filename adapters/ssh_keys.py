"""Organisations' public keys for onboarding: parse, check, add, list, remove.

Accepts what integrators are sent or generate: one OpenSSH line (``ssh-ed25519 AAAA...
comment``, also with authorized_keys options) or RFC 4716 (PuTTYgen's "Save public
key", ``---- BEGIN SSH2 PUBLIC KEY ----``). The file written is the
``authorized_keys`` the server reads (:class:`adapters.ssh_policy.AuthorizedKeys`),
replaced atomically with mode 0600, so a running server sees the change at the next
login and never a half-written file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from broker.errors import KeyRefused
from broker.storage.files import atomic_write, private_dir

MIN_RSA_BITS = 2048
_PRIVATE_MARKERS = (b"PRIVATE KEY", b"PuTTY-User-Key-File", b"SSH2 ENCRYPTED PRIVATE KEY")
# The key part of an authorized_keys line that may start with options (from="a b", ...).
_KEY_PART = re.compile(
    r"(?:^|\s)((?:ssh|ecdsa-sha2|sk-ssh|sk-ecdsa)-\S+\s+[A-Za-z0-9+/=]+(?:\s.*)?)$")


@dataclass(frozen=True)
class PublicKey:
    algorithm: str
    bits: int
    fingerprint: str  # SHA256:..., as `ssh-keygen -lf` shows it
    comment: str
    line: str  # the authorized_keys line (without newline)


def _bits(key: asyncssh.SSHKey) -> int:
    pyca = getattr(key, "pyca_key", None)
    size = getattr(pyca, "key_size", None)
    if isinstance(size, int):
        return size
    return 255 if "ed25519" in key.get_algorithm() else 0


def _describe(key: asyncssh.SSHKey, line: str) -> PublicKey:
    comment = key.get_comment() or ""
    return PublicKey(key.get_algorithm(), _bits(key), key.get_fingerprint("sha256"),
                     comment, line)


def parse_public_key(data: bytes, source: str = "key") -> PublicKey:
    """One public key, checked for use as a login key; KeyRefused says why not."""
    if any(m in data for m in _PRIVATE_MARKERS):
        raise KeyRefused("this is a PRIVATE key: send only the public key (the .pub file, "
                         "or PuTTYgen's \"Save public key\"); the private key must never "
                         "leave the organisation", file=source)
    text = data.decode("utf-8", "replace").strip()
    if not text:
        raise KeyRefused("no key found (the input is empty)", file=source)
    options = ""  # authorized_keys options (from="10.0.0.0/8", ...): kept, the server honours them
    if not text.startswith("---- BEGIN"):
        lines = [ln.strip() for ln in text.splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        if len(lines) != 1:
            raise KeyRefused(f"expected one key, found {len(lines)} lines; add one key "
                             "at a time", file=source)
        match = _KEY_PART.search(lines[0])
        text = match.group(1) if match else lines[0]
        options = lines[0][:match.start(1)].strip() if match else ""
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise KeyRefused(f"not an OpenSSH or RFC 4716 (PuTTY) public key: {exc}",
                         file=source) from None
    alg = key.get_algorithm()
    if alg == "ssh-dss":
        raise KeyRefused("DSA keys are refused (broken since OpenSSH 7.0); make an "
                         "ed25519 key: ssh-keygen -t ed25519", file=source)
    if alg == "ssh-rsa" and _bits(key) < MIN_RSA_BITS:
        raise KeyRefused(f"RSA key of {_bits(key)} bits is too short (at least "
                         f"{MIN_RSA_BITS}); better, make an ed25519 key", file=source)
    if alg.startswith("x509") or "-cert-" in alg:
        raise KeyRefused(f"{alg}: certificates are not accepted, send the plain public key",
                         file=source)
    line = key.export_public_key("openssh").decode("ascii").strip()
    return _describe(key, f"{options} {line}" if options else line)


def read_keys(path: Path) -> list[PublicKey]:
    """The keys in an authorized_keys file (lines that do not parse are skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _KEY_PART.search(stripped)
        try:
            key = asyncssh.import_public_key(match.group(1) if match else stripped)
        except (asyncssh.KeyImportError, ValueError):
            continue
        out.append(_describe(key, stripped))
    return out


def _write(path: Path, lines: list[str]) -> None:
    private_dir(path.parent)
    atomic_write(path, "".join(f"{ln}\n" for ln in lines).encode())  # mode 0600


def add_key(path: Path, key: PublicKey) -> None:
    """Append ``key`` to the file; a key already there is refused (by fingerprint)."""
    current = read_keys(path)
    if any(k.fingerprint == key.fingerprint for k in current):
        raise KeyRefused(f"key {key.fingerprint} is already there", file=str(path))
    kept = _raw_lines(path)
    _write(path, [*kept, key.line])


def remove_key(path: Path, fingerprint: str) -> PublicKey:
    """Remove the key with this fingerprint (``SHA256:...``, the prefix may be left out)."""
    want = fingerprint if fingerprint.startswith("SHA256:") else f"SHA256:{fingerprint}"
    found = [k for k in read_keys(path) if k.fingerprint == want]
    if not found:
        raise KeyRefused(f"no key {want} (see `kela-broker keys list`)", file=str(path))
    lines = [ln for ln in _raw_lines(path) if ln.strip() not in {k.line for k in found}]
    _write(path, lines)
    return found[0]


def _raw_lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        return []
