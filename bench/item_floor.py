"""The floor under this ingest's design: the batch read on every core with its items
built as the store takes them (parse with the XSD, the business rules, each item's JSON
and hashes, attachments decoded and checked), and nothing stored, routed or released.
``python bench/item_floor.py FILE`` prints how many items came back.

Beside the end-to-end ingest it shows how much of the budget reading alone takes
before one row is written (see the README's speed section).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from broker.config.settings import load_config
from broker.intake.batch_chunks import ParallelBatchReader
from broker.intake.ingest import batch_context

REPO = Path(__file__).resolve().parents[1]


def read_items(path: Path) -> int:
    ctx = batch_context(load_config(REPO), datetime.now(UTC))
    reader = ParallelBatchReader(path, ctx, on_attachment=lambda sha, data: None)
    return sum(1 for _ in reader)


if __name__ == "__main__":  # the workers are spawned: they import this module
    print(read_items(Path(sys.argv[1])))
