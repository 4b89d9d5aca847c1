"""Attachment bytes, kept by sha256 under ``var/blobs/`` until they are released.

Content addressed: writing the same attachment twice is harmless, and a blob
written for a file that was later rejected is only unused space (``gc`` clears it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from broker.fsutil import atomic_write, private_dir


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, sha256: str, data: bytes) -> None:
        """Store ``data`` (whose sha256 the validator already checked) durably."""
        final = self.path(sha256)
        if final.exists():
            return
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError("blob content does not match its sha256")
        private_dir(final.parent)
        atomic_write(final, data)

    def open(self, sha256: str) -> BinaryIO:
        return self.path(sha256).open("rb")

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size
