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
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from typing import Any

from broker.domain import pic
from broker.domain.model import LIST_FIELDS, Attachment, ListEntry, Notification, Person, PersonList
from broker.errors import Problem

NS = "urn:fi:kela:etotu:decision-batch:2"
ROOT = f"{{{NS}}}DecisionBatch"
NOTIFICATION = f"{{{NS}}}Notification"
PERSON_LIST = f"{{{NS}}}PersonList"
_ENTRY_FIELDS = {f"{{{NS}}}{name}": name for name in ("Days", "Reason", "Amount")}

# Which Entry Reason values belong to which list type (the XSD only knows the union).
_REASONS: dict[str, frozenset[str]] = {
    "LABOUR_MARKET_SUBSIDY_200_DAYS": frozenset({"PAID_200_DAYS", "AFTER_MAX_PERIOD"}),
    "LABOUR_MARKET_SUBSIDY_300_DAYS": frozenset({"PAID_300_DAYS", "AFTER_MAX_PERIOD"}),
    "CHILDCARE_SUPPORT_RECIPIENTS": frozenset({"HOME_CARE", "PRIVATE_CARE", "FLEXIBLE_CARE"}),
    "CHILDCARE_SUPPORT_PAYMENTS": frozenset({"HOME_CARE", "PRIVATE_CARE", "FLEXIBLE_CARE"}),
}

_BIRTH = re.compile(r"([0-3]\d)([01]\d)(\d\d)([-+A-FU-Y])\Z")
_MEMO_LIMIT = 100_000  # distinct DDMMYYC heads remembered; bounded against odd input


def _birth_ok(head: str) -> bool:
    """Is ``head`` (DDMMYYC) a well-formed real date of birth?"""
    m = _BIRTH.match(head)
    if m is None:
        return False
    dd, mm, yy, sign = m.groups()
    try:
        date(pic.CENTURY_SIGNS[sign] + int(yy), int(mm), int(dd))
    except ValueError:
        return False
    return True


def id_hash(item_id: str) -> int:
    """A 64-bit hash of an id, the same in every process (str hashes are salted per
    process, and pieces of one file are checked in several: broker.intake.batch_chunks)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(),
                          "little", signed=True)


def maybe_duplicates(hashes: array[int]) -> bool:
    """Could two of the ids behind ``hashes`` be equal? (A collision also says yes.)"""
    ordered = sorted(hashes)
    return any(a == b for a, b in pairwise(ordered))


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
    """Stateful across one file: remembers ids to find duplicates.

    ``exact_ids=False`` (the fast pass) keeps only a 64-bit hash per id in an array,
    8 bytes each, so a batch of millions of notifications stays small; call
    ``maybe_duplicates`` at the end, and if it says yes, run an exact pass
    (``exact_ids=True``: id -> line) to name the duplicates.
    """

    def __init__(
        self,
        ctx: RuleContext,
        on_attachment: Callable[[str, bytes], None] | None = None,
        *,
        exact_ids: bool = True,
        build: bool = True,
    ) -> None:
        self.ctx = ctx
        self.on_attachment = on_attachment
        self.exact_ids = exact_ids
        self.build = build
        self._today_iso = ctx.today.isoformat()
        self._births: dict[str, bool] = {}
        self.id_hashes = array("q")
        self.id_lines: dict[str, int | None] = {}

    def _problem(self, out: list[Problem], line: int | None, message: str, code: str) -> None:
        out.append(Problem(self.ctx.file, line, code, message))

    def _check_id(self, out: list[Problem], kind: str, item_id: str, el: Element) -> None:
        if not self.exact_ids:
            self.id_hashes.append(id_hash(item_id))
            return
        line = el.sourceline
        if item_id in self.id_lines:
            first = self.id_lines[item_id]
            self._problem(
                out, line,
                f"{kind} {item_id}: id appears more than once in this file (first at line {first})",
                "INVALID_VALUE",
            )
        else:
            self.id_lines[item_id] = line

    def _pic_ok(self, code: str) -> bool:
        """Fast path for the common case, a valid code; what it does not accept goes to
        pic.problem (python-stdnum) for the verdict and the wording. Same rules: format,
        real date, individual number >= 002, check character."""
        head = code[:7]
        ok = self._births.get(head)
        if ok is None:
            ok = _birth_ok(head)
            if len(self._births) < _MEMO_LIMIT:
                self._births[head] = ok
        if not ok or len(code) != 11:
            return False
        nnn = code[7:10]
        return (
            nnn.isascii() and nnn.isdigit() and nnn >= "002"
            and pic.CHECK_CHARS[int(code[:6] + nnn) % 31] == code[10]
        )

    def maybe_duplicates(self) -> bool:
        """Fast pass: could two ids be equal? (A hash collision also says yes.)"""
        return maybe_duplicates(self.id_hashes)

    def _check_pic(self, out: list[Problem], where: str, el: Element) -> str:
        code = el.text or ""
        if self._pic_ok(code):
            return code
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

    def notification(self, el: Element, out: list[Problem]) -> Notification | None:
        """Check one Notification; the model item when ``self.build``, else None.

        This is the hot loop of validation (one call per notification of a batch
        that may hold millions): it reads children by index without checking tags
        (costly in lxml), formats messages only when something is wrong, and builds
        no objects when only validating. If the shape is wrong the XSD reports it
        and the findings of this pass are discarded.
        """
        try:
            # Index access makes lxml proxies only for the children actually read.
            mun_el, date_el, person_el = el[0], el[1], el[2]
            nid = el.get("id")
            if nid is None:
                raise ShapeError
            self._check_id(out, "Notification", nid, el)
            municipality = mun_el.text or ""
            if municipality not in self.ctx.municipalities:
                self._check_municipality(
                    out, f"Notification {nid}", municipality, mun_el.sourceline
                )
            date_text = (date_el.text or "").strip()[:10]
            if len(date_text) != 10:
                raise ShapeError
            if date_text > self._today_iso:  # ISO dates compare as text
                self._problem(
                    out, date_el.sourceline,
                    f"Notification {nid}: DecisionDate {date_text} is in the future "
                    f"(today is {self.ctx.today})",
                    "INVALID_VALUE",
                )
            pic_el = person_el[0]
            code = pic_el.text or ""
            if not self._pic_ok(code):
                self._check_pic(out, f"Notification {nid}", pic_el)
            attachments: list[Attachment] = []
            info = None
            if len(el) > 3:
                for child in el[3:]:
                    if child.get("sha256") is None:  # AdditionalInfo; Attachment has sha256
                        info = child.text or ""
                    else:
                        attachments.append(self._attachment(child, f"Notification {nid}", out))
            if not self.build:
                return None
            flag = el.get("urgent")
            pk = list(person_el)
            return Notification(
                id=nid,
                type=el.get("type") or "",
                municipality=municipality,
                decision_date=date.fromisoformat(date_text),
                person=Person(
                    pic=code,
                    family_name=pk[1].text or "",
                    given_names=pk[2].text or "",
                    language=pk[3].text or "",
                    phone=pk[4].text if len(pk) > 4 else None,
                ),
                urgent=flag is not None and flag.strip() in ("true", "1"),
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
        # Lists are few and small next to notifications: always built, for clarity.
        try:
            lid = el.get("id")
            type_ = el.get("type")
            municipality = el.get("municipality")
            if lid is None or type_ not in LIST_FIELDS or municipality is None:
                raise ShapeError
            where = f"PersonList {lid}"
            line = el.sourceline
            self._check_id(out, "PersonList", lid, el)
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


def root_text_problem(
    file: str, root: Element, upto: Element, first: bool, problems: list[Problem]
) -> None:
    """Text directly inside DecisionBatch, before ``upto`` (or to the root's end), is a
    schema error. ``first``: root.text (before any child) is still unchecked. The nodes
    whose tails are checked here are deleted by the caller next, so each piece of text
    is reported once."""
    if root is None:
        return
    texts = [root.text] if first else []
    for node in root:
        if node is upto:
            break
        texts.append(node.tail)
    bad = next((t for t in texts if t and t.strip()), None)
    if bad is not None:
        line = upto.sourceline if upto is not None else None
        shown = pic.mask_text(bad.strip()[:30])
        problems.append(Problem(file, line or root.sourceline, "SCHEMA",
                                f"text directly inside DecisionBatch is not allowed ('{shown}'); "
                                "only Notification and PersonList elements belong there"))
