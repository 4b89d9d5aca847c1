"""The files a response produces: the acknowledgement (SPEC 7) and the forward to Kela.

Acknowledgement: ``outbox/<org>/acks/<uploaded name>.ack.xml`` is always about the
latest upload of that name (SPEC 7): when a new upload of a name is taken, the ack there
moves at once to ``acks/history/<uploaded name>.<its received time, UTC
yyyymmddThhmmssZ>.ack.xml``, and the new ack appears once the upload is processed. A
fixed file re-uploaded under the same name therefore never leaves a stale REJECTED
beside it. Each ack names the sha256 of the bytes it is about.

Forward: ``outbox/kela/response-<org>-<local time>-<sha256 prefix>.xml``, an envelope
``ForwardedResponse`` (namespace urn:fi:kela:etotu:forwarded-response:1, XSD
schemas/forwarded-response-1.xsd) stamped with the organisation, the sha256 of the
original upload, when it was received and its name, holding the organisation's
``MunicipalityResponse`` element unchanged.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from lxml import etree

from broker.errors import InvalidFile, Problem
from broker.xml import safe as xmlsafe

# An acknowledgement lists at most a few thousand findings; far more is not ours.
ACK_MAX_BYTES = 16 * 1024**2

ACK_NS = "urn:fi:kela:etotu:acknowledgement:1"
FWD_NS = "urn:fi:kela:etotu:forwarded-response:1"
ACK_SUFFIX = ".ack.xml"
# Bytes in one file name (255 on every filesystem we run on), less the ".<name>.part"
# that fsutil.atomic_writer writes first.
NAME_MAX = 255 - len(".") - len(".part")
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str, limit: int | None = None) -> str:
    """Text safe for an XML attribute or element: characters XML 1.0 forbids become U+FFFD."""
    clean = _XML_ILLEGAL.sub("\ufffd", text)
    return clean[:limit] if limit is not None else clean


def local_time(now: datetime, tz: str) -> str:
    """xs:dateTime with the offset of ``tz`` (Europe/Helsinki), whole seconds."""
    return now.astimezone(ZoneInfo(tz)).isoformat(timespec="seconds")


def render_ack(*, file: str, sha256: str, received: datetime, tz: str, status: str,
               problems: Sequence[Problem] = ()) -> bytes:
    root = etree.Element(f"{{{ACK_NS}}}Acknowledgement", nsmap={None: ACK_NS})
    root.set("file", xml_text(file, 255) or "?")
    root.set("sha256", sha256)
    root.set("received", local_time(received, tz))
    root.set("status", status)
    for p in problems:
        err = etree.SubElement(root, f"{{{ACK_NS}}}Error")
        if p.line is not None and p.line > 0:
            err.set("line", str(p.line))
        err.set("code", p.code)
        err.text = xml_text(p.message)
    return _document(root, pretty=True)


def _fit(name: str, tail: str) -> str:
    """``name + tail`` cut, if needed, so it stays within NAME_MAX bytes."""
    room = NAME_MAX - len(tail.encode())
    raw = name.encode()
    if len(raw) <= room:
        return name + tail
    return raw[:room].decode("utf-8", "ignore") + tail


def ack_name(upload_name: str) -> str:
    """The ack of the latest upload of ``upload_name`` (cut to fit a file name)."""
    return _fit(upload_name, ACK_SUFFIX)


def history_name(upload_name: str, received: datetime, n: int = 1) -> str:
    """Where an earlier ack of ``upload_name`` goes (``n`` > 1 only if two share a second)."""
    stamp = received.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return _fit(upload_name, f".{stamp}{'' if n == 1 else f'-{n}'}{ACK_SUFFIX}")


def received_of(ack_xml: bytes) -> datetime | None:
    """The ``received`` time an ack file states (None if it cannot be read)."""
    try:  # the same safe parser as every input, though we wrote this file ourselves
        root = xmlsafe.parse(ack_xml, max_bytes=ACK_MAX_BYTES, name="ack").getroot()
        return datetime.fromisoformat(root.get("received", ""))
    except (InvalidFile, ValueError):
        return None


def forward_name(org: str, received: datetime, sha256: str, tz: str) -> str:
    stamp = received.astimezone(ZoneInfo(tz)).strftime("%Y%m%dT%H%M%S")
    return f"response-{org}-{stamp}-{sha256[:16]}.xml"


def render_forward(root: Any, *, organisation: str, sha256: str, received: datetime, tz: str,
                   file: str) -> bytes:
    """The envelope for Kela around the organisation's MunicipalityResponse element."""
    env = etree.Element(f"{{{FWD_NS}}}ForwardedResponse", nsmap={None: FWD_NS})
    env.set("organisation", organisation)
    env.set("sha256", sha256)
    env.set("received", local_time(received, tz))
    env.set("file", xml_text(file, 255) or "?")
    inner = copy.deepcopy(root)
    inner.tail = None
    env.text = "\n"
    env.append(inner)
    inner.tail = "\n"
    return _document(env, pretty=False)  # pretty printing would re-indent the content


def _document(root: Any, *, pretty: bool) -> bytes:
    body = etree.tostring(root, xml_declaration=False, encoding="UTF-8", pretty_print=pretty)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + bytes(body).rstrip(b"\n") + b"\n"
