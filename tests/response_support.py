"""Shared setup for the response tests: a real home, store, ingest and release."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import storage_support
from lxml import etree
from sqlalchemy import select

from broker.config.settings import Config, Organisation, load_config
from broker.delivery.release import Releaser
from broker.intake.ingest import ingest_batch
from broker.responses.process import ResponseOutcome, process_upload
from broker.storage.db import metadata
from broker.storage.state_db import make_engine
from broker.storage.store import Store
from broker.xml.schemas import load_schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = Path(__file__).resolve().parents[1] / "contracts" / "examples"
HEL = ZoneInfo("Europe/Helsinki")
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=HEL)  # batch ingested and released
T1 = T0 + timedelta(hours=1)  # responses arrive
MR_NS = "urn:fi:kela:etotu:municipality-response:1"
ACK_NS = "urn:fi:kela:etotu:acknowledgement:1"
FWD_NS = "urn:fi:kela:etotu:forwarded-response:1"


@dataclass
class Env:
    home: Path
    config: Config
    store: Store

    def org(self, org_id: str) -> Organisation:
        return self.config.by_id[org_id]

    def release(self, now: datetime) -> list[str]:
        return Releaser(self.config, self.store).run(now).deliveries

    def upload(self, org_id: str, name: str, data: bytes) -> Path:
        folder = self.config.inbox / org_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(data)
        return path

    def process(self, org_id: str, name: str, data: bytes, now: datetime = T1,
                config: Config | None = None) -> ResponseOutcome:
        path = self.upload(org_id, name, data)
        cfg = config or self.config
        return process_upload(path, cfg.by_id[org_id], config=cfg, store=self.store, now=now)


def make_env(tmp_path: Path, *, release: bool = True) -> Env:
    """A home with the contract's decision batch taken in at T0 and (unless ``release``
    is False) released."""
    home = tmp_path / "home"
    shutil.copytree(REPO / "config", home / "config")
    storage_support.apply(home)
    config = load_config(home)
    env = Env(home, config, Store(make_engine(config.storage_url)))
    out = ingest_batch(EXAMPLES / "decision-batch.xml", config=config, store=env.store, now=T0)
    assert out.status == "accepted", out.problems
    if release:
        assert env.release(T0)
    return env


# Where verdicts are recorded (one row per upload taken, whatever the verdict) and where
# each handling is counted: the only tables a rejected or duplicate upload may touch.
VERDICT_TABLES = ("response_files", "input_attempts")


def dump(store: Store) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table but the verdict record, to prove a rejection changed nothing."""
    import broker.storage.response_store  # noqa: F401  (its tables are on the metadata)

    out = {}
    with store.engine.connect() as c:
        for table in metadata.sorted_tables:
            if table.name in VERDICT_TABLES:
                continue
            rows = c.execute(select(table)).all()
            out[table.name] = sorted(tuple(str(v) for v in r) for r in rows)
    return out


def verdicts(store: Store) -> list[tuple[str, str, str]]:
    """(organisation, upload name, status) of every recorded verdict, in order."""
    from broker.storage.response_store import response_files as rf

    with store.engine.connect() as c:
        return [(r.organisation, r.name, r.status) for r in c.execute(
            select(rf.c.organisation, rf.c.name, rf.c.status).order_by(rf.c.id))]


def response(*children: str, rid: str = "R-1") -> bytes:
    """A response; line 1 is the declaration, line 2 the root, children from line 3."""
    body = "\n".join(children)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<MunicipalityResponse xmlns="{MR_NS}" responseId="{rid}" '
            f'created="2026-11-23T12:30:00+02:00">\n{body}\n</MunicipalityResponse>\n').encode()


def receipt(nid: str, handled: str = "2026-11-22") -> str:
    return f'<Receipt notificationId="{nid}" handled="{handled}"/>'


def transfer(nid: str, to: str, reason: str | None = None) -> str:
    inner = f"<Reason>{reason}</Reason>" if reason else ""
    return f'<Transfer notificationId="{nid}" toMunicipality="{to}">{inner}</Transfer>'


def demand(did: str = "PD-1", *, pic: str = "170953-927T", municipality: str = "837",
           start: str = "2026-10-01", end: str = "2026-10-31", amount: str = "412.50",
           iban: str = "FI1086094555154084") -> str:
    """Nine lines: PaymentDemand on the first, PayeeIban on the eighth."""
    return "\n".join([
        f'<PaymentDemand id="{did}">',
        f"<PersonalIdentityCode>{pic}</PersonalIdentityCode>",
        f"<Municipality>{municipality}</Municipality>",
        "<Benefit>HOUSING_ALLOWANCE</Benefit>",
        f"<PeriodStart>{start}</PeriodStart>",
        f"<PeriodEnd>{end}</PeriodEnd>",
        f"<Amount>{amount}</Amount>",
        f"<PayeeIban>{iban}</PayeeIban>",
        "</PaymentDemand>"])


def valid_against(data: bytes, namespace: str) -> bool:
    schema = load_schema(namespace)
    ok = schema.validate(etree.fromstring(data))
    assert ok, schema.error_log
    return bool(ok)


def ack_of(out: ResponseOutcome) -> etree._Element:
    assert out.ack_path is not None and out.ack_path.is_file()
    data = out.ack_path.read_bytes()
    valid_against(data, ACK_NS)
    return etree.fromstring(data)


def errors_of(out: ResponseOutcome) -> list[tuple[int | None, str]]:
    root = ack_of(out)
    return [(int(e.get("line")) if e.get("line") else None, e.get("code"))
            for e in root.iter(f"{{{ACK_NS}}}Error")]
