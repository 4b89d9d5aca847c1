"""lxml's XSD messages in plainer words, as Problems (broker.intake.validation, responses)."""

from __future__ import annotations

import re
from typing import Any

from broker.domain.pic import mask_text
from broker.errors import Problem

_NS_RE = re.compile(r"\{(?:urn|https?):[^}]*\}")
_XS_TYPES = {
    "xs:date": "date (YYYY-MM-DD)",
    "xs:dateTime": "date and time with offset (YYYY-MM-DDThh:mm:ss+hh:mm)",
    "xs:decimal": "decimal number",
    "xs:boolean": "boolean (true or false)",
    "xs:base64Binary": "base64 content",
    "xs:nonNegativeInteger": "whole number",
    "xs:positiveInteger": "whole number above zero",
}
_REWRITES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Element '([^']+)'(?:, attribute '([^']+)')?: "), r"\1 \2: "),
    (re.compile(r"\[facet 'pattern'\] The value '([^']*)' is not accepted by the pattern "
                r"'([^']*)'"),
     r"the value '\1' does not match the pattern \2"),
    (re.compile(r"\[facet 'enumeration'\] The value '([^']*)' is not an element of the set "
                r"\{(.*)\}"),
     r"the value '\1' is not one of \2"),
    (re.compile(r"\[facet '(\w+)'\] "), r"(\1) "),
    (re.compile(r"This element is not expected\. Expected is (?:one of )?\( ?(.*?) ?\)"),
     r"this element is not expected here; expected \1"),
    (re.compile(r"This element is not expected\."), "this element is not expected here"),
    (re.compile(r"Missing child element\(s\)\. Expected is (?:one of )?\( ?(.*?) ?\)"),
     r"missing child element; expected \1"),
    (re.compile(r"No matching global declaration available for the validation root\."),
     "this element is not expected here"),
]


def plain_message(message: str) -> str:
    """lxml's schema message in plainer words, without namespaces or full identity codes."""
    msg = _NS_RE.sub("", message).strip()
    for pattern, repl in _REWRITES:
        msg = pattern.sub(repl, msg)
    msg = msg.replace(" : ", ": ")
    for xs, words in _XS_TYPES.items():
        msg = msg.replace(f"atomic type '{xs}'", words)
    if msg.startswith("PersonalIdentityCode"):
        msg = re.sub(r"'([^']{7})[^']*'", r"'\1****'", msg)  # never echo a code in full
    return mask_text(msg)


def schema_problems(
    file: str, log: Any, prefix: str, default_line: int | None
) -> list[Problem]:
    return [
        Problem(file, e.line if e.line > 0 else default_line, "SCHEMA",
                prefix + plain_message(e.message))
        for e in log
    ]
