"""One exception tree for the whole broker.

Every error carries the file, line and key it is about where it has one, so that
the message an operator or integrator reads points at the exact place to fix.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, as reported to a person or machine.

    ``code`` uses the acknowledgement codes of SPEC section 7 (NOT_WELL_FORMED,
    SCHEMA, FORBIDDEN, UNKNOWN_NOTIFICATION, INVALID_VALUE, TOO_LARGE) so the
    same problem reads the same in a CLI report, a quarantine report and an ack.
    """

    file: str
    line: int | None
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.code}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "code": self.code, "message": self.message}


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.key = key

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)


class ConfigError(BrokerError):
    """The operator configuration (broker.toml, register, keys) is wrong."""


class KeyRefused(ConfigError):
    """A public key offered for an organisation was refused (private, DSA, short RSA,
    a duplicate, not a key at all)."""


class ConfigErrors(ConfigError):
    """Several configuration problems found in one check; all are listed."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class RoutingError(BrokerError):
    """A (type, municipality) has no organisation, or more than one."""


class InvalidFile(BrokerError):
    """An input file was rejected; ``problems`` lists every problem found."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        first = problems[0] if problems else None
        super().__init__(
            f"{len(problems)} problem(s); first: {first.message if first else '?'}",
            file=file,
            line=first.line if first else None,
        )
        self.problems = problems


class InputChanged(BrokerError):
    """An input file changed while it was being read: it is still being written. Nothing
    was stored or rejected; it is taken again once it has settled."""


class StoreError(BrokerError):
    """The state store refused an operation."""


class ConflictError(StoreError):
    """The same id arrived again with different content."""


class StoreBusy(StoreError):
    """Another writer holds the database (an ingest of a big batch): try again shortly."""


class StoreConflict(StoreError):
    """A concurrent change won (a unique key, a serialisation failure): decide again."""


class AlreadyAccepted(StoreConflict):
    """The same bytes were accepted meanwhile (two takers of one file): a duplicate."""


class StoreUnavailable(StoreError):
    """The database server cannot be reached."""


class HomeBusy(BrokerError):
    """Another daemon (or a ``db copy``) is using this home now."""


class PathError(BrokerError):
    """A client path tried to leave its root or reach something it may not."""


class DeliveryError(BrokerError):
    """A delivery could not be written or pushed."""
