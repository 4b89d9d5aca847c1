"""The municipality register: code, names, and the area receiving its notifications.

Default data: Statistics Finland's 2026 municipality classification with the
wellbeing services county of each municipality (see config/README section in the
project README). Operators replace the CSV when the classification changes.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from broker.errors import ConfigError, ConfigErrors

COLUMNS = ("code", "name_fi", "name_sv", "area_code", "area_name_fi", "area_name_sv")
HELSINKI_AREA = "90"
ALAND_AREA = "91"


@dataclass(frozen=True)
class Municipality:
    code: str
    name_fi: str
    name_sv: str
    area_code: str
    area_name_fi: str
    area_name_sv: str


@dataclass(frozen=True)
class Register:
    source: str
    by_code: dict[str, Municipality]

    def __contains__(self, code: object) -> bool:
        return code in self.by_code

    def __getitem__(self, code: str) -> Municipality:
        return self.by_code[code]

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(self.by_code)

    def describe(self, code: str) -> str:
        m = self.by_code.get(code)
        return f"{code} {m.name_fi}" if m else f"{code} (unknown municipality)"


def packaged_register_path() -> Path:
    return Path(str(files("broker").joinpath("data/municipalities.csv")))


def load_register(path: Path) -> Register:
    """Read and check the register; every bad row is reported with its line."""
    errors: list[ConfigError] = []
    by_code: dict[str, Municipality] = {}
    name = str(path)
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read the municipality register: {exc.strerror}",
                          file=name) from exc
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise ConfigError(f"header must be {','.join(COLUMNS)}", file=name, line=1)
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(COLUMNS):
                errors.append(ConfigError(f"expected {len(COLUMNS)} columns, found {len(row)}",
                                          file=name, line=line))
                continue
            m = Municipality(*(cell.strip() for cell in row))
            if not re.fullmatch(r"\d{3}", m.code):
                errors.append(ConfigError(f"municipality code {m.code!r} is not 3 digits",
                                          file=name, line=line))
            elif m.code in by_code:
                errors.append(ConfigError(f"municipality {m.code} is listed twice",
                                          file=name, line=line))
            elif not re.fullmatch(r"\d{2}", m.area_code):
                errors.append(ConfigError(f"area code {m.area_code!r} of {m.code} is not 2 digits",
                                          file=name, line=line))
            else:
                by_code[m.code] = m
    if errors:
        raise ConfigErrors(errors)
    return Register(source=name, by_code=by_code)
