"""The project's XSDs, one per namespace, shipped inside the installed package."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

NAMESPACES: dict[str, str] = {
    "urn:fi:kela:etotu:decision-batch:2": "decision-batch-2.xsd",
    "urn:fi:kela:etotu:notification-delivery:1": "notification-delivery-1.xsd",
    "urn:fi:kela:etotu:notification-delivery:2": "notification-delivery-2.xsd",
    "urn:fi:kela:etotu:municipality-response:1": "municipality-response-1.xsd",
    "urn:fi:kela:etotu:acknowledgement:1": "acknowledgement-1.xsd",
    "urn:fi:kela:etotu:forwarded-response:1": "forwarded-response-1.xsd",
}


def path(namespace: str) -> Path:
    """Filesystem path of the XSD for ``namespace`` (KeyError when unknown)."""
    return Path(str(files(__name__).joinpath(NAMESPACES[namespace])))
