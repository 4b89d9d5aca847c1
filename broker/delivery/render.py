"""What the broker writes to ``/from-kela/`` (SPEC 5): deliveries, lists and their names.

Pure functions: the caller passes ``created`` (no clock here) and a binary file to
stream into (normally :func:`broker.storage.files.atomic_writer`). Notification deliveries
are streamed as text, a few hundred notifications at a time, so a backlog of
thousands never sits in memory whole; person lists use ``lxml.etree.xmlfile``.

Formats per organisation: ``xml-v2`` (namespace ``...:2``), ``xml-v1`` (legacy
``...:1``, no ``Phone``) and ``csv``. CSV only changes person lists: organisations on
``csv`` get notification deliveries as ``xml-v2`` (notifications with attachments do
not flatten into rows).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import IO, Literal

from lxml import etree

from broker.delivery.attachments_zip import (
    HELSINKI,
    local_time,
    safe_member_names,
    write_attachments_zip,
)
from broker.delivery.render_csv import CSV_HEADER, write_person_list_csv
from broker.domain.model import ALL_TYPES, Notification, PersonList
from broker.errors import DeliveryError

__all__ = [
    "CSV_HEADER",
    "NAMESPACES",
    "Format",
    "attachments_zip_name",
    "delivery_file_name",
    "delivery_stem",
    "list_file_name",
    "list_stem",
    "render_notification_delivery",
    "render_person_list",
    "safe_member_names",
    "write_attachments_zip",
]

# Same values as broker.config.settings.Format (the organisation's configured format).
Format = Literal["xml-v2", "xml-v1", "csv"]

NS_V1 = "urn:fi:kela:etotu:notification-delivery:1"
NS_V2 = "urn:fi:kela:etotu:notification-delivery:2"
NAMESPACES: dict[str, str] = {"xml-v2": NS_V2, "xml-v1": NS_V1, "csv": NS_V2}

_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_INDENT = "  "


# --- names -----------------------------------------------------------------------


def _stem(prefix: str, org: str, type_: str, created: datetime, seq: int,
          tz: tzinfo) -> str:
    # org and type end up in a file name: refuse anything that could leave the folder.
    if not _NAME_PART.fullmatch(org):
        raise DeliveryError("organisation id is not usable in a file name", key=org)
    if type_ not in ALL_TYPES:
        raise DeliveryError("unknown notification or list type", key=type_)
    if seq < 0:
        raise ValueError("seq must be >= 0")
    return f"{prefix}-{org}-{type_}-{local_time(created, tz):%Y%m%dT%H%M%S}-{seq:06d}"


def delivery_stem(org: str, type_: str, created: datetime, seq: int,
                  tz: tzinfo = HELSINKI) -> str:
    """Stem and deliveryId of a NotificationDelivery, e.g.
    ``D-helsinki-IMMIGRANT-20261120T141000-000001``: organisation, type, local time
    (``tz``, the configured time zone) of ``created``; ``seq`` (the caller's
    never-reused counter) makes it unique.
    """
    return _stem("D", org, type_, created, seq, tz)


def delivery_file_name(stem: str) -> str:
    return f"{stem}.xml"


def attachments_zip_name(stem: str) -> str:
    return f"{stem}.attachments.zip"


def list_stem(org: str, type_: str, created: datetime, seq: int,
              tz: tzinfo = HELSINKI) -> str:
    """Stem and deliveryId of a person list file, e.g.
    ``L-tampere-LABOUR_MARKET_SUBSIDY_200_DAYS-20261101T030000-000007``."""
    return _stem("L", org, type_, created, seq, tz)


def list_file_name(org: str, plist: PersonList, created: datetime, seq: int, fmt: Format,
                   tz: tzinfo = HELSINKI) -> str:
    """File name of a person list: its stem plus ``.csv`` for csv, else ``.xml``."""
    ext = ".csv" if fmt == "csv" else ".xml"
    return list_stem(org, plist.type, created, seq, tz) + ext


# --- XML writing -------------------------------------------------------------------


class _Writer:
    """Indenting helper around an ``xmlfile`` writer in one default namespace.

    Elements are written with ``xf.element`` all the way down: ``xf.write(Element)``
    would re-declare the namespace on every notification.
    """

    def __init__(self, xf: etree.xmlfile, ns: str) -> None:
        self.xf = xf
        self.ns = ns
        self.depth = 0

    def _newline(self) -> None:
        self.xf.write("\n" + _INDENT * self.depth)

    def leaf(
        self, name: str, text: str | None = None, attrib: dict[str, str] | None = None
    ) -> None:
        self._newline()
        with self.xf.element(f"{{{self.ns}}}{name}", attrib or {}):
            if text is not None:
                self.xf.write(text)

    def text_if(self, name: str, text: str | None) -> None:
        if text is not None:
            self.leaf(name, text)

    def open(self, name: str, attrib: dict[str, str] | None = None) -> _Open:
        return _Open(self, name, attrib or {})


class _Open:
    """Context manager for a parent element: children indented, end tag on its own line."""

    def __init__(self, w: _Writer, name: str, attrib: dict[str, str]) -> None:
        self.w = w
        self.cm = w.xf.element(f"{{{w.ns}}}{name}", attrib)

    def __enter__(self) -> None:
        self.w._newline()
        self.cm.__enter__()
        self.w.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.w.depth -= 1
        if exc[0] is None:
            self.w._newline()
        self.cm.__exit__(*exc)


class _Document:
    """The whole document: declaration, root element with the default namespace, final newline."""

    def __init__(self, out: IO[bytes], ns: str, root: str, attrib: dict[str, str]) -> None:
        self.out, self.ns, self.root, self.attrib = out, ns, root, attrib

    def __enter__(self) -> _Writer:
        # The declaration is written by hand for the conventional double quotes.
        self.out.write(_XML_DECLARATION)
        self.xf_cm = etree.xmlfile(self.out, encoding="UTF-8", close=False)
        xf = self.xf_cm.__enter__()
        self.root_cm = xf.element(f"{{{self.ns}}}{self.root}", self.attrib, nsmap={None: self.ns})
        self.root_cm.__enter__()
        self.w = _Writer(xf, self.ns)
        self.w.depth = 1
        return self.w

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.w.xf.write("\n")
        self.root_cm.__exit__(*exc)
        self.xf_cm.__exit__(*exc)
        if exc[0] is None:
            self.out.write(b"\n")


# Notification deliveries are the bulk of what the broker writes (tens of thousands of
# notifications per release after a big batch), so they are written as text, one
# notification per string, with the same escaping and layout lxml's serializer gives
# person lists; tests hold both to the XSDs and read every value back.
_TEXT_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("\r", "&#13;"))
_ATTR_ESCAPES = (*_TEXT_ESCAPES, ('"', "&quot;"), ("\n", "&#10;"), ("\t", "&#9;"))
_NEEDS_ESCAPE = re.compile('[&<>"\r\n\t]')


def _escaped(value: str, table: tuple[tuple[str, str], ...]) -> str:
    if _NEEDS_ESCAPE.search(value) is None:  # the common case: nothing to escape
        return value
    for raw, ref in table:
        value = value.replace(raw, ref)
    return value


def _esc(value: str) -> str:
    """Character data: & < > and CR escaped (a raw CR would read back as LF)."""
    return _escaped(value, _TEXT_ESCAPES)


def _attr(value: str) -> str:
    """An attribute value in double quotes: also " and the whitespace that would normalise."""
    return _escaped(value, _ATTR_ESCAPES)


def _notification_xml(
    n: Notification, with_phone: bool, blob_size: Callable[[str], int] | None
) -> str:
    """One Notification element at depth 1, preceded by its line break and indent."""
    p = n.person
    urgent = ' urgent="true"' if n.urgent else ""
    parts = [
        f'\n  <Notification id="{_attr(n.id)}" type="{_attr(n.type)}"{urgent}>'
        f"\n    <Municipality>{_esc(n.municipality)}</Municipality>"
        f"\n    <DecisionDate>{n.decision_date.isoformat()}</DecisionDate>"
        f"\n    <Person>"
        f"\n      <PersonalIdentityCode>{_esc(p.pic)}</PersonalIdentityCode>"
        f"\n      <FamilyName>{_esc(p.family_name)}</FamilyName>"
        f"\n      <GivenNames>{_esc(p.given_names)}</GivenNames>"
        f"\n      <Language>{_esc(p.language)}</Language>"
    ]
    if with_phone and p.phone is not None:
        parts.append(f"\n      <Phone>{_esc(p.phone)}</Phone>")
    parts.append("\n    </Person>")
    if n.additional_info is not None:
        parts.append(f"\n    <AdditionalInfo>{_esc(n.additional_info)}</AdditionalInfo>")
    names = safe_member_names(n.id, [a.document_name for a in n.attachments])
    for att, file_name in zip(n.attachments, names, strict=True):
        if blob_size is not None and blob_size(att.sha256) != att.size:
            # Promise no size the zip cannot keep: a damaged blob store stops the delivery.
            raise DeliveryError("stored attachment size differs from the recorded size",
                                key=file_name)
        parts.append(
            f'\n    <Attachment documentName="{_attr(att.document_name)}"'
            f' fileName="{_attr(file_name)}" mediaType="{_attr(att.media_type)}"'
            f' size="{att.size}" sha256="{_attr(att.sha256)}"></Attachment>'
        )
    parts.append("\n  </Notification>")
    return "".join(parts)


def render_notification_delivery(
    out: IO[bytes],
    *,
    delivery_id: str,
    organisation: str,
    created: datetime,
    notifications: Sequence[Notification],
    fmt: Format,
    blob_size: Callable[[str], int] | None = None,
    tz: tzinfo = HELSINKI,
) -> None:
    """Stream a NotificationDelivery document into ``out``.

    ``fmt`` picks the namespace: ``xml-v1`` writes the legacy ``:1`` without Phone,
    ``xml-v2`` and ``csv`` write ``:2``. ``count`` is ``len(notifications)``. Each
    Attachment's fileName is its member in the attachments zip (same naming as
    :func:`write_attachments_zip`). ``blob_size(sha256)``, when given, is checked
    against each attachment's recorded size (DeliveryError on a mismatch).
    """
    ns = NAMESPACES[fmt]
    with_phone = ns == NS_V2
    out.write(_XML_DECLARATION)
    out.write(
        f'<NotificationDelivery xmlns="{ns}" deliveryId="{_attr(delivery_id)}"'
        f' organisation="{_attr(organisation)}"'
        f' created="{local_time(created, tz).isoformat()}" count="{len(notifications)}">'
        .encode())
    seen: set[str] = set()
    buf: list[str] = []
    for n in notifications:
        if n.id in seen:
            raise DeliveryError("notification appears twice in one delivery", key=n.id)
        seen.add(n.id)
        buf.append(_notification_xml(n, with_phone, blob_size))
        if len(buf) >= 256:  # bounded memory for big deliveries, few writes for small
            out.write("".join(buf).encode())
            buf = []
    buf.append("\n</NotificationDelivery>\n")
    out.write("".join(buf).encode())


def render_person_list(
    out: IO[bytes],
    *,
    delivery_id: str,
    organisation: str,
    created: datetime,
    plist: PersonList,
    fmt: Format,
    tz: tzinfo = HELSINKI,
) -> None:
    """Write one person list: PersonListDelivery XML in the format's namespace, or CSV.

    The CSV form (see :mod:`broker.delivery.render_csv`) has no delivery header: its file name
    (:func:`list_file_name`) carries organisation, type and time.
    """
    if fmt == "csv":
        write_person_list_csv(out, plist)
        return
    attrib = {
        "deliveryId": delivery_id,
        "organisation": organisation,
        "created": local_time(created, tz).isoformat(),
    }
    list_attrib = {
        "id": plist.id,
        "type": plist.type,
        "municipality": plist.municipality,
        "periodStart": plist.period_start.isoformat(),
        "periodEnd": plist.period_end.isoformat(),
    }
    with _Document(out, NAMESPACES[fmt], "PersonListDelivery", attrib) as w, \
            w.open("PersonList", list_attrib):
        for e in plist.entries:
            with w.open("Entry"):
                w.leaf("PersonalIdentityCode", e.pic)
                w.leaf("FamilyName", e.family_name)
                w.leaf("GivenNames", e.given_names)
                w.text_if("Days", None if e.days is None else str(e.days))
                w.text_if("Reason", e.reason)
                w.text_if("Amount", e.amount)
