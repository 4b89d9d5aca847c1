"""The contract XSDs, compiled once each, and the size limit of whole-file formats."""

from __future__ import annotations

from functools import cache

from lxml import etree

import schemas
from broker.xml import safe as xmlsafe

# Non-batch formats (responses, acks, deliveries) are small and parsed whole.
SMALL_FILE_LIMIT = 256 * 1024**2


@cache
def load_schema(namespace: str) -> etree.XMLSchema:
    """The compiled XSD of a contract namespace (cached: compiling costs milliseconds)."""
    xsd = schemas.path(namespace)
    # From bytes, not a filename: the safe parser's resolver refuses every URL.
    doc = etree.fromstring(xsd.read_bytes(), xmlsafe.parser(), base_url=xsd.as_uri())
    return etree.XMLSchema(doc)
