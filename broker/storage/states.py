"""The states rows go through, as enumerations the database checks (a CHECK constraint
on each column): a typo in a statement fails loudly instead of stranding a row in a
state no query looks for.

They are ``StrEnum``: a member equals its text, so statements and rows can use either.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import Enum


class AssignmentState(StrEnum):
    """One notification or list at one organisation."""

    HELD = "held"  # waiting for its release time (or portion)
    RELEASING = "releasing"  # claimed by a pending delivery
    RELEASED = "released"  # in a written delivery file
    HANDLED = "handled"  # the organisation sent a receipt
    TRANSFERRED = "transferred"  # moved on to another organisation


class DeliveryState(StrEnum):
    """A delivery file (and a response's answer): recorded first, then written."""

    PENDING = "pending"
    WRITTEN = "written"


class Verdict(StrEnum):
    """What became of an input file."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


def state_column_type(enum: type[StrEnum], name: str) -> Enum:
    """A text column whose values the database checks against ``enum``."""
    return Enum(enum, name=name, native_enum=False, create_constraint=True, length=16,
                values_callable=lambda e: [m.value for m in e], validate_strings=True)
