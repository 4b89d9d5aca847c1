"""The things the broker moves: notifications, person lists and their parts.

Plain frozen dataclasses, free of XML and of storage. The validator builds them,
the store keeps them as JSON, the writers render them per organisation format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, NamedTuple


class NotificationType(StrEnum):
    SOCIAL_WORK_NEED = "SOCIAL_WORK_NEED"
    SUPPLEMENTARY_ASSISTANCE_NEED = "SUPPLEMENTARY_ASSISTANCE_NEED"
    REDUCED_BASIC_AMOUNT = "REDUCED_BASIC_AMOUNT"
    UNEMPLOYED_UNDER_25 = "UNEMPLOYED_UNDER_25"
    UNEMPLOYED_25_OR_OVER = "UNEMPLOYED_25_OR_OVER"
    IMMIGRANT = "IMMIGRANT"


class ListType(StrEnum):
    LABOUR_MARKET_SUBSIDY_200_DAYS = "LABOUR_MARKET_SUBSIDY_200_DAYS"  # the 2017 pilot
    LABOUR_MARKET_SUBSIDY_300_DAYS = "LABOUR_MARKET_SUBSIDY_300_DAYS"  # the list of today
    LABOUR_MARKET_SUBSIDY_MUNICIPAL_SHARE = "LABOUR_MARKET_SUBSIDY_MUNICIPAL_SHARE"
    CHILDCARE_SUPPORT_RECIPIENTS = "CHILDCARE_SUPPORT_RECIPIENTS"
    CHILDCARE_SUPPORT_PAYMENTS = "CHILDCARE_SUPPORT_PAYMENTS"


class Mandate(StrEnum):
    """Entitlements, mirroring the mandates Kela grants municipal users (SPEC 3)."""

    SOCIAL_ASSISTANCE = "SOCIAL_ASSISTANCE"
    PAYMENT_DEMANDS = "PAYMENT_DEMANDS"
    LABOUR_MARKET_SUBSIDY = "LABOUR_MARKET_SUBSIDY"
    CHILDCARE_SUPPORT = "CHILDCARE_SUPPORT"


ItemType = NotificationType | ListType

MANDATE_OF: dict[str, Mandate] = {
    **{t.value: Mandate.SOCIAL_ASSISTANCE for t in NotificationType},
    ListType.LABOUR_MARKET_SUBSIDY_200_DAYS.value: Mandate.LABOUR_MARKET_SUBSIDY,
    ListType.LABOUR_MARKET_SUBSIDY_300_DAYS.value: Mandate.LABOUR_MARKET_SUBSIDY,
    ListType.LABOUR_MARKET_SUBSIDY_MUNICIPAL_SHARE.value: Mandate.LABOUR_MARKET_SUBSIDY,
    ListType.CHILDCARE_SUPPORT_RECIPIENTS.value: Mandate.CHILDCARE_SUPPORT,
    ListType.CHILDCARE_SUPPORT_PAYMENTS.value: Mandate.CHILDCARE_SUPPORT,
}

# Entry fields each list type requires beyond identity code and names (SPEC 2).
LIST_FIELDS: dict[str, tuple[str, ...]] = {
    ListType.LABOUR_MARKET_SUBSIDY_200_DAYS.value: ("Days", "Reason"),
    ListType.LABOUR_MARKET_SUBSIDY_300_DAYS.value: ("Days", "Reason"),
    ListType.LABOUR_MARKET_SUBSIDY_MUNICIPAL_SHARE.value: ("Days", "Amount"),
    ListType.CHILDCARE_SUPPORT_RECIPIENTS.value: ("Reason",),
    ListType.CHILDCARE_SUPPORT_PAYMENTS.value: ("Reason", "Amount"),
}

ALL_TYPES: tuple[str, ...] = tuple(MANDATE_OF)


def is_list_type(type_: str) -> bool:
    return type_ in LIST_FIELDS


@dataclass(frozen=True)
class Person:
    pic: str
    family_name: str
    given_names: str
    language: str
    phone: str | None = None


@dataclass(frozen=True)
class Attachment:
    """An attachment as received; the bytes live in the blob store by sha256."""

    document_name: str
    media_type: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Notification:
    id: str
    type: str
    municipality: str
    decision_date: date
    person: Person
    urgent: bool = False
    additional_info: str | None = None
    attachments: tuple[Attachment, ...] = ()
    line: int | None = field(default=None, compare=False)

    kind = "notification"

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the stored payload and the content identity."""
        cached: str | None = self.__dict__.get("_json")
        if cached is None:
            p = self.person
            # Built by hand: dataclasses.asdict deep-copies and is ~10x slower.
            d = {
                "additional_info": self.additional_info,
                "attachments": [
                    {"document_name": a.document_name, "media_type": a.media_type,
                     "sha256": a.sha256, "size": a.size} for a in self.attachments],
                "decision_date": self.decision_date.isoformat(),
                "id": self.id,
                "municipality": self.municipality,
                "person": {"family_name": p.family_name, "given_names": p.given_names,
                           "language": p.language, "phone": p.phone, "pic": p.pic},
                "type": self.type,
                "urgent": self.urgent,
            }
            cached = json.dumps(d, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_json", cached)  # frozen: cache outside the fields
        return cached

    @classmethod
    def from_json(cls, text: str) -> Notification:
        d: dict[str, Any] = json.loads(text)
        return cls(
            id=d["id"],
            type=d["type"],
            municipality=d["municipality"],
            decision_date=date.fromisoformat(d["decision_date"]),
            person=Person(**d["person"]),
            urgent=d["urgent"],
            additional_info=d["additional_info"],
            attachments=tuple(Attachment(**a) for a in d["attachments"]),
        )

    @property
    def content_hash(self) -> str:
        """Identity of the content: an identical resend is a no-op, a changed one a conflict."""
        return _content_hash(self)


@dataclass(frozen=True)
class ListEntry:
    pic: str
    family_name: str
    given_names: str
    days: int | None = None
    reason: str | None = None
    amount: str | None = None  # kept as the decimal text it arrived as


@dataclass(frozen=True)
class PersonList:
    id: str
    type: str
    municipality: str
    period_start: date
    period_end: date
    entries: tuple[ListEntry, ...]
    line: int | None = field(default=None, compare=False)

    kind = "list"

    def to_json(self) -> str:
        cached: str | None = self.__dict__.get("_json")
        if cached is None:
            d = asdict(self)
            d.pop("line")
            d["period_start"] = self.period_start.isoformat()
            d["period_end"] = self.period_end.isoformat()
            cached = json.dumps(d, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_json", cached)
        return cached

    @classmethod
    def from_json(cls, text: str) -> PersonList:
        d: dict[str, Any] = json.loads(text)
        return cls(
            id=d["id"],
            type=d["type"],
            municipality=d["municipality"],
            period_start=date.fromisoformat(d["period_start"]),
            period_end=date.fromisoformat(d["period_end"]),
            entries=tuple(ListEntry(**e) for e in d["entries"]),
        )

    @property
    def content_hash(self) -> str:
        return _content_hash(self)


Item = Notification | PersonList


class StoredItem(NamedTuple):
    """An item as the store keeps it: the columns of its row, plus the line it came from.

    Plain strings, so a worker process hands it back cheaply (broker.intake.batch_chunks).
    """

    kind: str
    id: str
    type: str
    municipality: str
    decision_date: str | None  # ISO date; None for a list
    urgent: bool
    content_hash: str
    payload: str  # canonical JSON (to_json)
    line: int | None
    route_on: str | None = None  # ISO date that picks the route: DecisionDate, or periodEnd

    @classmethod
    def of(cls, item: Item) -> StoredItem:
        if isinstance(item, Notification):
            return cls("notification", item.id, item.type, item.municipality,
                       item.decision_date.isoformat(), item.urgent, item.content_hash,
                       item.to_json(), item.line, item.decision_date.isoformat())
        return cls("list", item.id, item.type, item.municipality, None, False,
                   item.content_hash, item.to_json(), item.line, item.period_end.isoformat())


def _content_hash(item: Item) -> str:
    """sha256 of the canonical JSON, computed once per item (ingest asks twice)."""
    cached: str | None = item.__dict__.get("_hash")
    if cached is None:
        cached = hashlib.sha256(item.to_json().encode()).hexdigest()
        object.__setattr__(item, "_hash", cached)
    return cached


@dataclass(frozen=True)
class BatchHeader:
    batch_id: str
    created: str
