"""Finnish personal identity codes (henkilötunnus): check, mask, make synthetic ones.

Checking is python-stdnum's; this module adds the wording an integrator reads
and the masking every log line goes through (SPEC 8: logs never print a full code).
"""

from __future__ import annotations

import re
from datetime import date

from stdnum.exceptions import InvalidChecksum, InvalidComponent, InvalidFormat, ValidationError
from stdnum.fi import hetu

CHECK_CHARS = "0123456789ABCDEFHJKLMNPRSTUVWXY"
CENTURY_SIGNS = {
    "+": 1800,
    "-": 1900, "Y": 1900, "X": 1900, "W": 1900, "V": 1900, "U": 1900,
    "A": 2000, "B": 2000, "C": 2000, "D": 2000, "E": 2000, "F": 2000,
}  # fmt: skip

PIC_RE = re.compile(r"\b([0-3]\d[01]\d\d\d)([-+A-FU-Y])(\d{3})([0-9A-Y])\b")


def problem(code: str) -> str | None:
    """Return what is wrong with ``code`` in words, or None when it is valid.

    Temporary (900-999) individual numbers are accepted: they are the only ones
    allowed in test data, and Kela uses them for people without a permanent code.
    """
    try:
        hetu.validate(code, allow_temporary=True)
    except InvalidChecksum:
        return f"personal identity code {mask(code)}: check character does not match"
    except InvalidComponent:
        return f"personal identity code {mask(code)}: not a real date of birth"
    except InvalidFormat:
        return "personal identity code: not in the form DDMMYYCNNNT"
    except ValidationError as exc:  # any other stdnum verdict
        return f"personal identity code {mask(code)}: {exc}"
    return None


def birth_date(code: str) -> date:
    """Date of birth of a code already known to be well formed."""
    return date(CENTURY_SIGNS[code[6]] + int(code[4:6]), int(code[2:4]), int(code[0:2]))


def check_char(ddmmyy: str, individual: str) -> str:
    return CHECK_CHARS[int(ddmmyy + individual) % 31]


def make(born: date, individual: int) -> str:
    """A synthetic code: ``individual`` must be 900-999 (never issued to real people)."""
    if not 900 <= individual <= 999:
        raise ValueError("synthetic identity codes use individual numbers 900-999")
    sign = {1800: "+", 1900: "-", 2000: "A"}[born.year // 100 * 100]
    ddmmyy = born.strftime("%d%m%y")
    nnn = f"{individual:03d}"
    return f"{ddmmyy}{sign}{nnn}{check_char(ddmmyy, nnn)}"


def mask(code: str) -> str:
    """Keep the date part for support work, hide the individual part."""
    return code[:7] + "****" if len(code) == 11 else "***********"


def mask_text(text: str) -> str:
    """Mask every identity code inside free text (log lines, error messages)."""
    return PIC_RE.sub(lambda m: m.group(1) + m.group(2) + "****", text)
