"""Checking one municipality response (SPEC 6): form, schema, values and authorisation.

Pure: the caller passes the bytes, the organisation, today's date and what the
store knows about the referred notifications and payment demands. The result is
either a ``Plan`` of what to change, or findings; a file is accepted or rejected
whole, so every finding is collected before the verdict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from stdnum import iban as stdnum_iban
from stdnum.exceptions import InvalidChecksum, ValidationError

from broker.config.routing import route
from broker.config.settings import Config, Organisation
from broker.domain import pic
from broker.domain.model import Mandate
from broker.errors import InvalidFile, Problem, RoutingError
from broker.responses.texts import Finding, localized
from broker.storage.response_store import NoteState
from broker.xml import safe as xmlsafe
from broker.xml.schema_messages import plain_message
from broker.xml.schemas import load_schema

NS = "urn:fi:kela:etotu:municipality-response:1"
ROOT = f"{{{NS}}}MunicipalityResponse"
RECEIPT, TRANSFER, DEMAND = (f"{{{NS}}}{n}" for n in ("Receipt", "Transfer", "PaymentDemand"))


@dataclass(frozen=True)
class Receipt:
    notification_id: str
    handled: date
    line: int | None


@dataclass(frozen=True)
class Transfer:
    notification_id: str
    to_municipality: str
    reason: str | None
    line: int | None


@dataclass(frozen=True)
class PaymentDemand:
    id: str
    pic: str
    municipality: str
    benefit: str
    period_start: date
    period_end: date
    amount: str
    payee_iban: str
    line: int | None
    lines: Mapping[str, int | None] = field(default_factory=dict, compare=False)

    @property
    def content_hash(self) -> str:
        d = asdict(self)
        d.pop("line")
        d.pop("lines")
        return hashlib.sha256(json.dumps(d, default=str, sort_keys=True).encode()).hexdigest()


@dataclass
class Parsed:
    root: Any  # the MunicipalityResponse element, forwarded unchanged
    response_id: str
    receipts: list[Receipt] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    demands: list[PaymentDemand] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedReceipt:
    receipt: Receipt
    assignment_id: int


@dataclass(frozen=True)
class PlannedTransfer:
    transfer: Transfer
    assignment_id: int
    item_seq: int
    type: str
    to_organisation: str


@dataclass
class Plan:
    receipts: list[PlannedReceipt] = field(default_factory=list)
    transfers: list[PlannedTransfer] = field(default_factory=list)
    new_demands: list[PaymentDemand] = field(default_factory=list)


# ------------------------------------------------------------------ form and schema


def _parse_problem(p: Problem, size: int, limit: int) -> Finding:
    if p.code == "TOO_LARGE":
        return Finding("TOO_LARGE", None, "too_large", {"size": size, "limit": limit})
    if "DOCTYPE" in p.message:
        return Finding("NOT_WELL_FORMED", p.line, "doctype")
    if "not UTF-8" in p.message:
        return Finding("NOT_WELL_FORMED", p.line, "not_utf8")
    detail = p.message.removeprefix("not well-formed XML: ")
    return Finding("NOT_WELL_FORMED", p.line or 1, "not_xml", {"detail": detail})


def parse(data: bytes, *, max_bytes: int) -> tuple[Parsed | None, list[Finding]]:
    """Secure parse and XSD check; the parsed content when both pass."""
    try:
        tree = xmlsafe.parse(data, max_bytes=max_bytes, name="upload")
    except InvalidFile as exc:
        return None, [_parse_problem(p, len(data), max_bytes) for p in exc.problems]
    root = tree.getroot()
    if root.tag != ROOT:
        namespace, local = xmlsafe.split_tag(root.tag)
        found = f"{local} ({namespace or '-'})"
        return None, [Finding("SCHEMA", root.sourceline, "wrong_root", {"found": found, "ns": NS})]
    schema = load_schema(NS)
    if not schema.validate(tree):
        return None, [Finding("SCHEMA", e.line if e.line > 0 else None, "schema",
                              {"detail": plain_message(e.message)}) for e in schema.error_log]
    parsed = Parsed(root=root, response_id=root.get("responseId", ""))
    for el in root:
        if el.tag == RECEIPT:
            parsed.receipts.append(Receipt(el.get("notificationId"),
                                           date.fromisoformat(el.get("handled")), el.sourceline))
        elif el.tag == TRANSFER:
            reason = el.find(f"{{{NS}}}Reason")
            parsed.transfers.append(Transfer(
                el.get("notificationId"), el.get("toMunicipality"),
                reason.text if reason is not None else None, el.sourceline))
        elif el.tag == DEMAND:
            parsed.demands.append(_demand(el))
    return parsed, []


def _demand(el: Any) -> PaymentDemand:
    kids = {xmlsafe.split_tag(k.tag)[1]: k for k in el if isinstance(k.tag, str)}

    def text(name: str) -> str:
        return (kids[name].text or "").strip()

    return PaymentDemand(
        id=el.get("id"), pic=text("PersonalIdentityCode"), municipality=text("Municipality"),
        benefit=text("Benefit"), period_start=date.fromisoformat(text("PeriodStart")),
        period_end=date.fromisoformat(text("PeriodEnd")), amount=text("Amount"),
        payee_iban=text("PayeeIban"), line=el.sourceline,
        lines={k: v.sourceline for k, v in kids.items()})


# ------------------------------------------------------------------ values and rights


@dataclass(frozen=True)
class RuleContext:
    config: Config
    org: Organisation
    today: date  # in the broker's timezone
    notes: Mapping[str, NoteState]
    demand_hashes: Mapping[str, str]  # this organisation's payment demands already stored


def check(parsed: Parsed, ctx: RuleContext) -> tuple[Plan, list[Finding]]:
    plan = Plan()
    found: list[Finding] = []
    seen: dict[str, int | None] = {}
    for r in parsed.receipts:
        state = _reference(ctx, r.notification_id, r.line, "Receipt", seen, found)
        if r.handled > ctx.today:
            found.append(Finding("INVALID_VALUE", r.line, "handled_future",
                                 {"id": r.notification_id, "date": r.handled.isoformat()}))
        if state is not None:
            plan.receipts.append(PlannedReceipt(r, state.current_id))
    for t in parsed.transfers:
        state = _reference(ctx, t.notification_id, t.line, "Transfer", seen, found)
        planned = _transfer(ctx, t, state, found)
        if planned is not None:
            plan.transfers.append(planned)
    demand_lines: dict[str, int | None] = {}
    for d in parsed.demands:
        if _demand_ok(ctx, d, demand_lines, found) \
                and ctx.demand_hashes.get(d.id) != d.content_hash:
            plan.new_demands.append(d)  # an identical earlier demand is a no-op
    found.sort(key=lambda f: (f.line is None, f.line or 0))
    return plan, found


def _mandate(ctx: RuleContext, mandate: Mandate, element: str, line: int | None,
             found: list[Finding]) -> bool:
    if mandate in ctx.org.entitlements:
        return True
    found.append(Finding("FORBIDDEN", line, "no_mandate",
                         {"element": element, "mandate": mandate.value}))
    return False


def _reference(ctx: RuleContext, nid: str, line: int | None, element: str,
               seen: dict[str, int | None], found: list[Finding]) -> NoteState | None:
    """The notification's state when this organisation may act on it, else a finding."""
    if not _mandate(ctx, Mandate.SOCIAL_ASSISTANCE, element, line, found):
        return None
    if nid in seen:
        found.append(Finding("INVALID_VALUE", line, "referred_twice",
                             {"id": nid, "first": seen[nid] or "?"}))
        return None
    seen[nid] = line
    state = ctx.notes.get(nid)
    if state is None or state.kind != "notification":
        found.append(Finding("UNKNOWN_NOTIFICATION", line, "unknown_notification", {"id": nid}))
        return None
    if state.current_org != ctx.org.id or state.current_state not in ("released", "handled"):
        key = "transferred_away" if ctx.org.id in state.transferred_by else "not_delivered"
        found.append(Finding("FORBIDDEN", line, key, {"id": nid}))
        return None
    return state


def _municipality_name(ctx: RuleContext, code: str) -> dict[str, str]:
    m = ctx.config.register.by_code[code]
    return localized(m.name_fi, m.name_sv)


def _transfer(ctx: RuleContext, t: Transfer, state: NoteState | None,
              found: list[Finding]) -> PlannedTransfer | None:
    code = t.to_municipality
    if code not in ctx.config.register:
        found.append(Finding("INVALID_VALUE", t.line, "unknown_municipality",
                             {"field": "toMunicipality", "code": code}))
        return None
    if state is None:
        return None
    if state.current_state == "handled":
        found.append(Finding("INVALID_VALUE", t.line, "already_receipted", {
            "id": t.notification_id,
            "date": state.handled_on.isoformat() if state.handled_on else "?"}))
        return None
    try:
        target = route(ctx.config, state.type, code, state.decision_date or ctx.today)
    except RoutingError:
        found.append(Finding("INVALID_VALUE", t.line, "no_route",
                             {"id": t.notification_id, "code": code, "type": state.type}))
        return None
    if target.id == ctx.org.id:
        found.append(Finding("INVALID_VALUE", t.line, "transfer_same_org", {
            "id": t.notification_id, "code": code, "name": _municipality_name(ctx, code)}))
        return None
    return PlannedTransfer(t, state.current_id, state.item_seq, state.type, target.id)


def _demand_ok(ctx: RuleContext, d: PaymentDemand, lines: dict[str, int | None],
               found: list[Finding]) -> bool:
    before = len(found)
    if not _mandate(ctx, Mandate.PAYMENT_DEMANDS, "PaymentDemand", d.line, found):
        return False
    if d.id in lines:
        found.append(Finding("INVALID_VALUE", d.line, "demand_twice",
                             {"id": d.id, "first": lines[d.id] or "?"}))
    lines.setdefault(d.id, d.line)
    line_of: Callable[[str], int | None] = lambda name: d.lines.get(name, d.line)  # noqa: E731
    why = pic.problem(d.pic)
    if why is not None:
        found.append(_pic_finding(d.pic, why, line_of("PersonalIdentityCode")))
    if d.municipality not in ctx.config.register:
        found.append(Finding("INVALID_VALUE", line_of("Municipality"), "unknown_municipality",
                             {"field": "Municipality", "code": d.municipality}))
    elif d.municipality not in ctx.org.municipalities:
        found.append(Finding("FORBIDDEN", line_of("Municipality"), "not_served", {
            "code": d.municipality, "name": _municipality_name(ctx, d.municipality)}))
    if d.period_start > d.period_end:
        found.append(Finding("INVALID_VALUE", line_of("PeriodEnd"), "period_order", {
            "id": d.id, "start": d.period_start.isoformat(), "end": d.period_end.isoformat()}))
    try:
        stdnum_iban.validate(d.payee_iban)
    except InvalidChecksum:
        found.append(Finding("INVALID_VALUE", line_of("PayeeIban"), "iban_checksum"))
    except ValidationError:
        found.append(Finding("INVALID_VALUE", line_of("PayeeIban"), "iban_form",
                             {"value": d.payee_iban}))
    if len(found) == before and d.id in ctx.demand_hashes \
            and ctx.demand_hashes[d.id] != d.content_hash:
        found.append(Finding("INVALID_VALUE", d.line, "demand_conflict", {"id": d.id}))
    return len(found) == before


def _pic_finding(code: str, why: str, line: int | None) -> Finding:
    # broker.domain.pic.problem words the verdict in English; its three endings map to our keys.
    masked = pic.mask(code)
    if why.endswith("check character does not match"):
        return Finding("INVALID_VALUE", line, "pic_checksum", {"pic": masked})
    if why.endswith("not a real date of birth"):
        return Finding("INVALID_VALUE", line, "pic_date", {"pic": masked})
    return Finding("INVALID_VALUE", line, "pic_other", {"pic": masked, "detail": why})
