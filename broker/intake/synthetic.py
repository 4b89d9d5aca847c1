"""Synthetic decision batches for the demo, tests and benchmarks.

Everything is made up: identity codes use individual numbers 900-999 (never issued
to real people, SPEC 8), names are common Finnish and Swedish ones, phones are in
the 040 range. Output is written piece by piece, never held in memory, so a
gigabyte batch costs no more memory than a kilobyte one. Deterministic per seed.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from broker.domain import pic
from broker.domain.model import LIST_FIELDS, ListType, NotificationType

NS = "urn:fi:kela:etotu:decision-batch:2"

FAMILY_NAMES = (
    "Korhonen", "Virtanen", "Mäkinen", "Nieminen", "Mäkelä", "Hämäläinen", "Laine",
    "Heikkinen", "Koskinen", "Järvinen", "Lehtonen", "Lehtinen", "Saarinen", "Salminen",
    "Heinonen", "Niemi", "Heikkilä", "Kinnunen", "Salonen", "Turunen", "Lindqvist",
    "Öhman", "Nyström", "Ahmed", "Nguyen",
)  # fmt: skip
GIVEN_NAMES = (
    "Juhani", "Maria", "Johannes", "Helena", "Mikael", "Johanna", "Olavi", "Anneli",
    "Eino", "Helmi", "Väinö", "Aino", "Leo", "Ella", "Saara", "Kalle", "Linnea", "Oskari",
)  # fmt: skip
LANGUAGES = ("fi", "fi", "fi", "fi", "sv", "en", "ar", "so", "ru", "et")
INFOS = (
    "Asiakas tarvitsee tulkin.",
    "Vuokrarästejä kolmelta kuukaudelta.",
    "Asiakas on pyytänyt yhteydenottoa.",
    "Kunden önskar service på svenska.",
)
_REASONS = {
    ListType.LABOUR_MARKET_SUBSIDY_200_DAYS.value: ("PAID_200_DAYS", "AFTER_MAX_PERIOD"),
    ListType.LABOUR_MARKET_SUBSIDY_300_DAYS.value: ("PAID_300_DAYS", "AFTER_MAX_PERIOD"),
    ListType.CHILDCARE_SUPPORT_RECIPIENTS.value: ("HOME_CARE", "PRIVATE_CARE", "FLEXIBLE_CARE"),
    ListType.CHILDCARE_SUPPORT_PAYMENTS.value: ("HOME_CARE", "PRIVATE_CARE", "FLEXIBLE_CARE"),
}
_FLUSH_BYTES = 1 << 20


def _pic(rng: random.Random) -> str:
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 66))
    return pic.make(born, rng.randrange(900, 1000))


def _person_names(rng: random.Random) -> tuple[str, str]:
    given = rng.choice(GIVEN_NAMES)
    if rng.random() < 0.4:
        given += " " + rng.choice(GIVEN_NAMES)
    return rng.choice(FAMILY_NAMES), given


def _attachment(rng: random.Random, size: int, n: int) -> str:
    # Mostly repeated filler behind a random prefix: cheap to make, distinct sha256 each.
    head = rng.randbytes(min(size, 32))
    data = (head + b"%PDF-1.4 synthetic attachment\n" * (size // 30 + 1))[:size]
    digest = hashlib.sha256(data).hexdigest()
    body = base64.encodebytes(data).decode("ascii")  # 76-column lines, like real encoders
    return (
        f'    <Attachment documentName="Päätös {n}.pdf" mediaType="application/pdf"\n'
        f'                sha256="{digest}">\n{body}    </Attachment>\n'
    )


def _notification(
    rng: random.Random,
    nid: str,
    type_: str,
    municipality: str,
    decision_date: date,
    attachment_bytes: int,
) -> str:
    family, given = _person_names(rng)
    urgent = ' urgent="true"' if rng.random() < 0.05 else ""
    phone = (
        f"      <Phone>+35840{rng.randrange(10**6, 10**7)}</Phone>\n" if rng.random() < 0.6 else ""
    )
    info = (
        f"    <AdditionalInfo>{escape(rng.choice(INFOS))}</AdditionalInfo>\n"
        if rng.random() < 0.3
        else ""
    )
    attachment = _attachment(rng, attachment_bytes, 1) if attachment_bytes > 0 else ""
    return (
        f'  <Notification id="{nid}" type="{type_}"{urgent}>\n'
        f"    <Municipality>{municipality}</Municipality>\n"
        f"    <DecisionDate>{decision_date.isoformat()}</DecisionDate>\n"
        f"    <Person>\n"
        f"      <PersonalIdentityCode>{_pic(rng)}</PersonalIdentityCode>\n"
        f"      <FamilyName>{escape(family)}</FamilyName>\n"
        f"      <GivenNames>{escape(given)}</GivenNames>\n"
        f"      <Language>{rng.choice(LANGUAGES)}</Language>\n"
        f"{phone}"
        f"    </Person>\n"
        f"{info}{attachment}"
        f"  </Notification>\n"
    )


def _person_list(
    rng: random.Random, lid: str, type_: str, municipality: str, period_end: date, entries: int
) -> str:
    start = period_end.replace(day=1)
    parts = [
        f'  <PersonList id="{lid}" type="{type_}" municipality="{municipality}" '
        f'periodStart="{start.isoformat()}" periodEnd="{period_end.isoformat()}">\n'
    ]
    fields = LIST_FIELDS[type_]
    for _ in range(entries):
        family, given = _person_names(rng)
        extra = ""
        if "Days" in fields:
            extra += f"      <Days>{rng.randrange(1, 201)}</Days>\n"
        if "Reason" in fields:
            extra += f"      <Reason>{rng.choice(_REASONS[type_])}</Reason>\n"
        if "Amount" in fields:
            extra += f"      <Amount>{rng.randrange(100, 200000) / 100:.2f}</Amount>\n"
        parts.append(
            f"    <Entry>\n"
            f"      <PersonalIdentityCode>{_pic(rng)}</PersonalIdentityCode>\n"
            f"      <FamilyName>{escape(family)}</FamilyName>\n"
            f"      <GivenNames>{escape(given)}</GivenNames>\n"
            f"{extra}    </Entry>\n"
        )
    parts.append("  </PersonList>\n")
    return "".join(parts)


def write_batch(
    path: Path,
    *,
    count: int,
    municipalities: Sequence[str],
    types: Sequence[str] | None = None,
    decision_date: date,
    batch_id: str,
    seed: int = 0,
    attachment_bytes: int = 0,
    start_id: int = 1,
    lists: int = 0,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> None:
    """Write a valid decision batch of ``count`` notifications and ``lists`` person lists.

    ``pairs`` of (type, municipality), when given, are what each item is drawn from
    (notification and list types alike), instead of any type in any municipality: so a
    batch can be made of exactly what routes to one organisation.

    Notification ids are ``N-<year>-<9 digits>`` from ``start_id``; list ids
    ``L-<batch_id>-<n>``. Every notification carries one attachment of
    ``attachment_bytes`` when that is above 0. The file is mode 0600.
    """
    if not municipalities:
        raise ValueError("need at least one municipality code")
    rng = random.Random(seed)
    note_types = list(types) if types else [t.value for t in NotificationType]
    list_types = [t.value for t in ListType]
    created = f"{decision_date.isoformat()}T14:05:00+02:00"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        path.chmod(0o600)
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write("<!-- Synthetic test data: identity codes use individual numbers 900-999. -->\n")
        out.write(f"<DecisionBatch xmlns={quoteattr(NS)} batchId={quoteattr(batch_id)} "
                  f"created={quoteattr(created)}>\n")
        buf: list[str] = []
        size = 0
        note_pairs = [(t, m) for t, m in pairs or () if t in note_types]
        list_pairs = [(t, m) for t, m in pairs or () if t in list_types]
        for i in range(start_id, start_id + count):
            type_, code = (rng.choice(note_pairs) if pairs is not None else
                           (rng.choice(note_types), rng.choice(municipalities)))
            text = _notification(
                rng, f"N-{decision_date.year}-{i:09d}", type_, code, decision_date,
                attachment_bytes,
            )
            buf.append(text)
            size += len(text)
            if size >= _FLUSH_BYTES:
                out.write("".join(buf))
                buf, size = [], 0
        out.write("".join(buf))
        for n in range(1, (lists if pairs is None or list_pairs else 0) + 1):
            list_type, code = (rng.choice(list_pairs) if pairs is not None else
                               (list_types[(n - 1) % len(list_types)],
                                rng.choice(municipalities)))
            out.write(_person_list(
                rng, f"L-{batch_id.replace('.', '-').replace('_', '-')[:28]}-{n}",
                list_type, code, decision_date, rng.randrange(1, 20),
            ))
        out.write("</DecisionBatch>\n")


# Average bytes one notification takes without attachment (measured on seed 0).
_BYTES_PER_NOTIFICATION = 410


def write_batch_of_size(
    path: Path,
    megabytes: float,
    *,
    municipalities: Sequence[str],
    decision_date: date,
    batch_id: str,
    seed: int = 0,
    attachment_every: int = 20,
    attachment_bytes: int = 8 * 1024,
) -> int:
    """Write a batch of about ``megabytes`` MB (10**6 bytes); returns the notification count.

    A realistic mix: most notifications are plain, one in ``attachment_every``
    carries an attachment of ``attachment_bytes`` (by default about half the bytes
    are attachments, half notification elements).
    """
    target = int(megabytes * 1_000_000)
    per_segment = (
        _BYTES_PER_NOTIFICATION * attachment_every
        + attachment_bytes * 4 // 3
        + attachment_bytes * 4 // 3 // 76
    )
    segments = max(1, target // per_segment)
    tmp_parts: list[str] = []
    rng = random.Random(seed)
    note_types = [t.value for t in NotificationType]
    created = f"{decision_date.isoformat()}T14:05:00+02:00"
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as out:
        path.chmod(0o600)
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write(f"<DecisionBatch xmlns={quoteattr(NS)} batchId={quoteattr(batch_id)} "
                  f"created={quoteattr(created)}>\n")
        for _ in range(segments):
            for k in range(attachment_every):
                count += 1
                tmp_parts.append(_notification(
                    rng, f"N-{decision_date.year}-{count:09d}", rng.choice(note_types),
                    rng.choice(municipalities), decision_date,
                    attachment_bytes if k == 0 else 0,
                ))
            out.write("".join(tmp_parts))
            tmp_parts.clear()
        out.write("</DecisionBatch>\n")
    return count
