"""Person lists as CSV, for organisations configured with ``format = "csv"`` (SPEC 5).

The choices, for the two kinds of reader these files have:

- ``;`` separated: the list separator of Finnish and Swedish Windows, so Excel opens
  the file in columns on a double click.
- UTF-8 **with a byte order mark**: without it Excel reads the file as Windows-1252
  and turns Öhman into Ã–hman. Integrators' tools skip the BOM (Python
  ``encoding="utf-8-sig"``, pandas, Java/.NET readers with BOM detection).
- CRLF line ends and RFC 4180 quoting: a field with ``;``, ``"`` or a line break is
  quoted and inner quotes doubled; nothing else is quoted.
- One header row, then one row per entry; the list's own fields repeat on every row
  so each row stands alone after filtering or sorting. Empty optional fields are empty.
- Values are written exactly as in the XML: dates ISO 8601, amounts with a decimal
  point (``431.20``). Not localised, so a program reads them without guessing; Excel
  users format the column.
"""

from __future__ import annotations

import csv
import io
from typing import IO

from broker.domain.model import PersonList

CSV_HEADER: tuple[str, ...] = (
    "list_id",
    "type",
    "municipality",
    "period_start",
    "period_end",
    "personal_identity_code",
    "family_name",
    "given_names",
    "days",
    "reason",
    "amount",
)
CSV_ENCODING = "utf-8-sig"  # UTF-8, BOM first


def write_person_list_csv(out: IO[bytes], plist: PersonList) -> None:
    """Write ``plist`` as CSV to ``out`` (left open)."""
    text = io.TextIOWrapper(out, encoding=CSV_ENCODING, newline="", write_through=True)
    try:
        w = csv.writer(text, delimiter=";", quotechar='"', lineterminator="\r\n")
        w.writerow(CSV_HEADER)
        head = (
            plist.id,
            plist.type,
            plist.municipality,
            plist.period_start.isoformat(),
            plist.period_end.isoformat(),
        )
        for e in plist.entries:
            w.writerow(
                (
                    *head,
                    e.pic,
                    e.family_name,
                    e.given_names,
                    "" if e.days is None else str(e.days),
                    e.reason or "",
                    e.amount or "",
                )
            )
        text.flush()
    finally:
        text.detach()  # hand ``out`` back to the caller unclosed
