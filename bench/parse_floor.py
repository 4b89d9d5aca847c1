"""The floor under any Python ingest: lxml's streaming parse with the batch XSD attached,
doing nothing with the elements but freeing them. ``python bench/parse_floor.py FILE``.

The end-to-end ingest benchmark prints this beside xmllint so the table shows how much
of the budget the parse alone takes before any rule, row or file is made.
"""

from __future__ import annotations

import sys
from typing import Any

from broker.intake.batch_rules import NOTIFICATION, NS, PERSON_LIST, ROOT
from broker.xml import safe as xmlsafe
from broker.xml.schemas import load_schema


def parse_only(path: str) -> int:
    count = 0
    root: Any = None
    with open(path, "rb") as f:
        for event, el in xmlsafe.iterparse(f, events=("start", "end"),
                                           tag=(ROOT, NOTIFICATION, PERSON_LIST),
                                           schema=load_schema(NS), huge_text=True):
            if event == "start":
                root = el if root is None else root
                continue
            if el is root:
                continue
            count += 1
            el.clear()
            while el.getprevious() is not None:
                del root[0]
    return count


if __name__ == "__main__":
    print(parse_only(sys.argv[1]))
