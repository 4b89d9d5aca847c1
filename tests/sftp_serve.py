"""Run the SFTP server alone in a process (tests that need their own open-file limit).

Usage: python tests/sftp_serve.py OPTIONS_JSON. Raises its soft RLIMIT_NOFILE to
the hard limit as the daemon does, starts the server, prints one JSON line
(port, open-file limit) and serves until stdin is closed. Audit events are
appended as JSON lines to ``<events>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from adapters.sftp_limits import raise_nofile_limit
from adapters.sftp_server import SftpOptions, SftpService
from broker.storage.audit import AuditEvent


async def main(raw: dict[str, object]) -> None:
    events = Path(str(raw.pop("events")))
    paths = {"host_key_path", "keys_dir", "outbox_dir", "inbox_dir", "retain_dir",
             "incomplete_dir"}
    kwargs = {k: Path(str(v)) if k in paths else v for k, v in raw.items()}
    kwargs["organisations"] = frozenset(kwargs["organisations"])  # type: ignore[arg-type]
    options = SftpOptions(**kwargs)  # type: ignore[arg-type]
    limit = raise_nofile_limit()

    def on_event(event: AuditEvent) -> None:
        with events.open("a") as fh:
            fh.write(json.dumps(dataclasses.asdict(event)) + "\n")

    service = SftpService(options, on_event)
    port = await service.start()
    print(json.dumps({"port": port, "limit": limit}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    await service.stop()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
