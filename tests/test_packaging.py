"""``pip install .`` outside the repo must work: the wheel carries code, XSDs and data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_module_schema_and_data_file(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("kela_file_broker-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(REPO).as_posix()
                for pattern in ("broker/**/*.py", "adapters/*.py", "schemas/*.py",
                                "schemas/*.xsd", "broker/data/*.csv")
                for p in REPO.glob(pattern)}
    assert expected - names == set()
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kela-broker = broker.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
