"""The attachments zip beside a NotificationDelivery, and the member names inside it.

SPEC 5: all attachments of one delivery go into ``<stem>.attachments.zip``, each as
``<notification id>/<document name>``, made safe for Windows and unique. The XML's
``Attachment/@fileName`` carries exactly the member name, so both come from
:func:`safe_member_names` here.

Document names come from Kela's case system and can hold anything: ``/`` (which would
make a sub-folder), ``:`` (an NTFS stream), reserved device names, bidi controls that
disguise an extension. Municipal staff extract the zip with Explorer, so names must
survive Windows, macOS and Linux unchanged.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zipfile
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import IO
from zoneinfo import ZoneInfo

from broker.domain.model import Notification
from broker.errors import DeliveryError

HELSINKI = ZoneInfo("Europe/Helsinki")

# Bounds on one document name (the part after "<notification id>/"). 100 UTF-16 units
# leave room under Windows' 260-character MAX_PATH for the notification folder and a
# typical "C:\Users\<name>\Downloads\<stem>.attachments\" prefix; 240 UTF-8 bytes stay
# under the 255-byte limit of Linux file systems.
MAX_NAME_UNITS = 100
MAX_NAME_BYTES = 240
MAX_EXT_CHARS = 16  # a longer "extension" is just part of the name
FALLBACK_NAME = "attachment"

_FORBIDDEN_CHARS = frozenset('/\\:*?"<>|')
# Control, format (bidi overrides, zero-width), surrogate, line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789¹²³"}
)
_NOTIFICATION_ID = re.compile(r"[A-Za-z0-9-]{1,40}")
_CHUNK = 1 << 20
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_MEMBER_MODE = 0o100600  # regular file, owner read/write: attachments are personal data
# Formats that are compressed already are stored as they are (as Info-ZIP's -n and 7-Zip
# do): deflating them again costs more time than the bytes it saves (a PDF's streams are
# deflated inside it). Anything else is deflated.
COMPRESSED_TYPES = frozenset({
    "application/pdf", "application/zip", "application/gzip", "application/x-7z-compressed",
    "image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "video/mp4",
    "audio/mpeg",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
})


def compress_type(media_type: str) -> int:
    """How a member of ``media_type`` goes into the zip: stored or deflated."""
    compressed = media_type.split(";", 1)[0].strip().lower() in COMPRESSED_TYPES
    return zipfile.ZIP_STORED if compressed else zipfile.ZIP_DEFLATED


def _utf16_units(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def _fits(name: str) -> bool:
    return _utf16_units(name) <= MAX_NAME_UNITS and len(name.encode("utf-8")) <= MAX_NAME_BYTES


def _split_ext(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0 or len(name) - dot > MAX_EXT_CHARS:
        return name, ""
    return name[:dot], name[dot:]


def _is_reserved(name: str) -> bool:
    # Windows reserves the device name whatever follows the first dot ("CON.tar.gz").
    return name.split(".", 1)[0].rstrip(" ").upper() in RESERVED_NAMES


def _fit(stem: str, suffix: str, ext: str) -> str:
    """``stem + suffix + ext`` shortened in the stem until it fits the bounds."""
    while stem and not _fits(stem + suffix + ext):
        stem = stem[:-1]
    if not ext and not suffix:
        stem = stem.rstrip(". ")  # a cut may end the whole name in a dot or space
    if not stem:
        stem = FALLBACK_NAME
    return stem + suffix + ext


def safe_document_name(document_name: str) -> str:
    """One document name made safe for every desktop file system (not yet unique)."""
    name = unicodedata.normalize("NFC", document_name)  # macOS would store NFD otherwise
    name = "".join(
        "_"
        if ch in _FORBIDDEN_CHARS or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES
        else ch
        for ch in name
    )
    # Windows silently drops trailing dots and spaces; leading spaces confuse everyone.
    name = name.strip().rstrip(". ").lstrip()
    if name.startswith("."):
        name = "_" + name[1:]  # a leading dot hides the file on Unix (and SPEC 1 readers skip it)
    if not name:
        name = FALLBACK_NAME
    if _is_reserved(name):
        name = "_" + name
    stem, ext = _split_ext(name)
    return _fit(stem, "", ext)


def safe_member_names(notification_id: str, document_names: Sequence[str]) -> list[str]:
    """``<notification id>/<safe name>`` for each document, unique within the notification.

    Uniqueness ignores case and Unicode normalisation, as Windows and macOS do; a
    clash gets `` (2)``, `` (3)``... before the extension. The first of equal names
    keeps it unchanged, so the common case reads exactly like the original.
    """
    if not _NOTIFICATION_ID.fullmatch(notification_id):
        raise DeliveryError(
            "notification id is not usable as a folder name in the attachments zip",
            key=notification_id,
        )
    used: set[str] = set()
    out: list[str] = []
    for document_name in document_names:
        name = safe_document_name(document_name)
        if name.casefold() in used:
            stem, ext = _split_ext(name)
            n = 2
            while (name := _fit(stem, f" ({n})", ext)).casefold() in used:
                n += 1
        used.add(name.casefold())
        out.append(f"{notification_id}/{name}")
    return out


def local_time(created: datetime, tz: tzinfo = HELSINKI) -> datetime:
    """``created`` as wall-clock time in ``tz`` (the configured ``[broker] timezone``,
    Europe/Helsinki by default), whole seconds: names, XML and zip all show it."""
    if created.tzinfo is None:
        raise ValueError("created must be timezone-aware")
    return created.astimezone(tz).replace(microsecond=0)


def _zip_time(created: datetime | None, tz: tzinfo) -> tuple[int, int, int, int, int, int]:
    # Zip stores wall-clock time without a zone: use local time, what the reader sees.
    if created is None:
        return _ZIP_EPOCH
    t = local_time(created, tz)
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


def write_attachments_zip(
    out: IO[bytes],
    notifications: Sequence[Notification],
    open_blob: Callable[[str], IO[bytes]],
    *,
    created: datetime | None = None,
    tz: tzinfo = HELSINKI,
) -> int:
    """Write every attachment of the delivery into one zip; return the member count.

    Members are ``<notification id>/<safe document name>`` (same as the XML's fileName),
    in delivery order, deflated unless their media type is compressed already
    (:func:`compress_type`). Each blob is streamed from ``open_blob(sha256)`` in 1 MiB chunks
    and checked against the attachment's sha256 and size on the way, so the zip can never
    disagree with the XML that describes it (DeliveryError otherwise). Timestamps are the
    delivery's ``created`` (wall clock in ``tz``; 1980-01-01 when None) and every header
    field is fixed, so re-rendering the same delivery gives identical bytes.
    """
    when = _zip_time(created, tz)
    seen_ids: set[str] = set()
    count = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for n in notifications:
            if n.id in seen_ids:
                raise DeliveryError("notification appears twice in one delivery", key=n.id)
            seen_ids.add(n.id)
            names = safe_member_names(n.id, [a.document_name for a in n.attachments])
            for att, member in zip(n.attachments, names, strict=True):
                info = zipfile.ZipInfo(member, date_time=when)
                info.compress_type = compress_type(att.media_type)
                info.create_system = 3  # Unix, so external_attr carries the mode
                info.external_attr = _MEMBER_MODE << 16
                info.file_size = att.size  # lets zipfile decide on zip64 up front
                digest = hashlib.sha256()
                written = 0
                with open_blob(att.sha256) as src, zf.open(info, "w") as dst:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        written += len(chunk)
                        dst.write(chunk)
                if written != att.size or digest.hexdigest() != att.sha256:
                    raise DeliveryError(
                        f"stored attachment does not match its sha256/size "
                        f"({written} bytes, expected {att.size})",
                        key=member,
                    )
                count += 1
    return count
