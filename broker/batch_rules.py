"""Business rules of a decision batch (SPEC 2) that an XSD cannot express.

``Rules`` turns one closed ``Notification`` or ``PersonList`` element into a model
item and appends what is wrong with it to a problem list. It reads children by
index (the XSD fixes their order) because this runs once per element of a batch
that may be gigabytes long; an element of the wrong shape raises ``ShapeError``,
and the caller then relies on the XSD pass to describe it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from broker import pic
from broker.errors import Problem
from broker.model import LIST_FIELDS, Attachment, ListEntry, Notification, Person, PersonList

NS = "urn:fi:kela:etotu:decision-batch:2"
ROOT = f"{{{NS}}}DecisionBatch"
NOTIFICATION = f"{{{NS}}}Notification"
PERSON_LIST = f"{{{NS}}}PersonList"
_MUNICIPALITY = f"{{{NS}}}Municipality"
_PERSON = f"{{{NS}}}Person"
_ADDITIONAL_INFO = f"{{{NS}}}AdditionalInfo"
_ENTRY_FIELDS = {f"{{{NS}}}{name}": name for name in ("Days", "Reason", "Amount")}

# Which Entry Reason values belong to which list type (the XSD only knows the union).
_REASONS: dict[str, frozenset[str]] = {
    "LABOUR_MARKET_SUBSIDY_200_DAYS": frozenset({"PAID_200_DAYS", "AFTER_MAX_PERIOD"}),
    "CHILDCARE_SUPPORT_RECIPIENTS": frozenset({"HOME_CARE", "PRIVATE_CARE", "FLEXIBLE_CARE"}),
    "CHILDCARE_SUPPORT_PAYMENTS": frozenset({"HOME_CARE", "PRIVATE_CARE", "FLEXIBLE_CARE"}),
}

# An element proxy from lxml; typed loosely because lxml's stubs are not installed.
Element = Any


class ShapeError(Exception):
    """The element does not have the structure the XSD prescribes."""


@dataclass(frozen=True)
class RuleContext:
    file: str
    municipalities: frozenset[str]
    today: date
    max_attachment_bytes: int


class Rules:
    """Stateful across one file: remembers ids to find duplicates."""

    def __init__(
        self, ctx: RuleContext, on_attachment: Callable[[str, bytes], None] | None = None
    ) -> None:
        self.ctx = ctx
        self.on_attachment = on_attachment
        # Only ids, not their lines: a batch of millions of notifications must stay small.
        self.seen_ids: set[str] = set()

    def _problem(self, out: list[Problem], line: int | None, message: str, code: str) -> None:
        out.append(Problem(self.ctx.file, line, code, message))

    def _check_id(self, out: list[Problem], kind: str, item_id: str, line: int | None) -> None:
        if item_id in self.seen_ids:
            self._problem(
                out, line, f"{kind} {item_id}: id appears more than once in this file",
                "INVALID_VALUE",
            )
        else:
            self.seen_ids.add(item_id)

    def _check_pic(self, out: list[Problem], where: str, el: Element) -> str:
        code = el.text or ""
        what = pic.problem(code)
        if what is not None:
            self._problem(out, el.sourceline, f"{where}: {what}", "INVALID_VALUE")
        return code

    def _check_municipality(self, out: list[Problem], where: str, code: str, line: int) -> None:
        if code not in self.ctx.municipalities:
            self._problem(
                out, line, f"{where}: municipality {code} is not a known municipality code",
                "INVALID_VALUE",
            )

    def notification(self, el: Element, out: list[Problem]) -> Notification:
        try:
            kids = list(el)
            mun_el, date_el, person_el = kids[0], kids[1], kids[2]
            if mun_el.tag != _MUNICIPALITY or person_el.tag != _PERSON:
                raise ShapeError
            nid = el.get("id")
            if nid is None:
                raise ShapeError
            where = f"Notification {nid}"
            self._check_id(out, "Notification", nid, el.sourceline)
            municipality = mun_el.text or ""
            self._check_municipality(out, where, municipality, mun_el.sourceline)
            decision_date = date.fromisoformat((date_el.text or "").strip()[:10])
            if decision_date > self.ctx.today:
                self._problem(
                    out, date_el.sourceline,
                    f"{where}: DecisionDate {decision_date} is in the future "
                    f"(today is {self.ctx.today})",
                    "INVALID_VALUE",
                )
            pk = list(person_el)
            person = Person(
                pic=self._check_pic(out, where, pk[0]),
                family_name=pk[1].text or "",
                given_names=pk[2].text or "",
                language=pk[3].text or "",
                phone=pk[4].text if len(pk) > 4 else None,
            )
            info = None
            attachments: list[Attachment] = []
            for child in kids[3:]:
                if child.tag == _ADDITIONAL_INFO:
                    info = child.text or ""
                else:
                    attachments.append(self._attachment(child, where, out))
            urgent = el.get("urgent", "false").strip() in ("true", "1")
            return Notification(
                id=nid,
                type=el.get("type") or "",
                municipality=municipality,
                decision_date=decision_date,
                person=person,
                urgent=urgent,
                additional_info=info,
                attachments=tuple(attachments),
                line=el.sourceline,
            )
        except (IndexError, AttributeError, TypeError, ValueError) as exc:
            raise ShapeError from exc

    def _attachment(self, el: Element, where: str, out: list[Problem]) -> Attachment:
        name = el.get("documentName") or ""
        declared = el.get("sha256") or ""
        what = f'{where}: attachment "{name}"'
        try:
            data = base64.b64decode(el.text or "")
        except binascii.Error:
            self._problem(out, el.sourceline, f"{what}: content is not valid base64", "SCHEMA")
            return Attachment(name, el.get("mediaType") or "", declared, 0)
        if len(data) > self.ctx.max_attachment_bytes:
            self._problem(
                out, el.sourceline,
                f"{what} is {len(data)} bytes, more than the limit of "
                f"{self.ctx.max_attachment_bytes} bytes",
                "TOO_LARGE",
            )
        actual = hashlib.sha256(data).hexdigest()
        if actual != declared:
            self._problem(
                out, el.sourceline,
                f"{what}: sha256 does not match the content "
                f"(declared {declared[:12]}..., content has {actual[:12]}...)",
                "INVALID_VALUE",
            )
        elif self.on_attachment is not None and len(data) <= self.ctx.max_attachment_bytes:
            self.on_attachment(actual, data)
        return Attachment(name, el.get("mediaType") or "", declared, len(data))

    def person_list(self, el: Element, out: list[Problem]) -> PersonList:
        try:
            lid = el.get("id")
            type_ = el.get("type")
            municipality = el.get("municipality")
            if lid is None or type_ not in LIST_FIELDS or municipality is None:
                raise ShapeError
            where = f"PersonList {lid}"
            line = el.sourceline
            self._check_id(out, "PersonList", lid, line)
            self._check_municipality(out, where, municipality, line)
            start = date.fromisoformat(el.get("periodStart", "")[:10])
            end = date.fromisoformat(el.get("periodEnd", "")[:10])
            if start > end:
                self._problem(
                    out, line, f"{where}: periodStart {start} is after periodEnd {end}",
                    "INVALID_VALUE",
                )
            required = LIST_FIELDS[type_]
            reasons = _REASONS.get(type_)
            entries = [
                self._entry(entry, n, where, type_, required, reasons, out)
                for n, entry in enumerate(el, start=1)
            ]
            if not entries:
                raise ShapeError
            return PersonList(
                id=lid, type=type_, municipality=municipality, period_start=start,
                period_end=end, entries=tuple(entries), line=line,
            )
        except (IndexError, AttributeError, TypeError, ValueError, KeyError) as exc:
            raise ShapeError from exc

    def _entry(
        self,
        el: Element,
        n: int,
        where: str,
        type_: str,
        required: tuple[str, ...],
        reasons: frozenset[str] | None,
        out: list[Problem],
    ) -> ListEntry:
        kids = list(el)
        here = f"{where}: entry {n}"
        code = self._check_pic(out, here, kids[0])
        fields: dict[str, Any] = {}
        for child in kids[3:]:
            fields[_ENTRY_FIELDS[child.tag]] = child
        for name in required:
            if name not in fields:
                self._problem(
                    out, el.sourceline,
                    f"{here}: missing {name}, required in {type_} lists", "SCHEMA",
                )
        for name, child in fields.items():
            if name not in required:
                self._problem(
                    out, child.sourceline,
                    f"{here}: {name} does not belong in {type_} lists", "SCHEMA",
                )
        reason = fields["Reason"].text if "Reason" in fields else None
        if reason is not None and reasons is not None and reason not in reasons:
            self._problem(
                out, fields["Reason"].sourceline,
                f"{here}: Reason {reason} does not belong in {type_} lists "
                f"(allowed: {', '.join(sorted(reasons))})",
                "INVALID_VALUE",
            )
        return ListEntry(
            pic=code,
            family_name=kids[1].text or "",
            given_names=kids[2].text or "",
            days=int(fields["Days"].text) if "Days" in fields else None,
            reason=reason,
            amount=fields["Amount"].text.strip() if "Amount" in fields else None,
        )
