"""A tuning cache that survives a torn write: drop the lines of MetaSchedule's JSON database
that do not parse (the half line a kill or a full disk leaves at the end), and the records of
workloads dropped with them, before TVM reads it.

TVM's ``JSONDatabase`` refuses the whole file on one bad line (``RuntimeError: ... Unexpected
EOF``), so without this one interrupted run would break every later compile for the target.
Called with the cache directory's lock held.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


class CacheRepairWarning(UserWarning):
    """Lines of a tuning database were unreadable and have been dropped."""


def repair_database(db_dir: Path) -> int:
    """Rewrite the database in ``db_dir`` without unreadable lines; returns how many went."""
    workloads, dropped = _readable(db_dir / WORKLOADS, lambda v: isinstance(v, list))
    count = len(workloads)
    records, lost = _readable(
        db_dir / RECORDS,
        lambda v: isinstance(v, list) and v and isinstance(v[0], int) and 0 <= v[0] < count,
    )
    dropped += lost
    if dropped:
        _replace(db_dir / WORKLOADS, workloads)
        _replace(db_dir / RECORDS, records)
        warnings.warn(
            f"tuning cache {db_dir}: dropped {dropped} unreadable line(s) (an interrupted "
            "write); the other records are kept",
            CacheRepairWarning,
            stacklevel=3,
        )
    return dropped


def _readable(path: Path, valid) -> tuple[list[str], int]:
    if not path.is_file():
        return [], 0
    kept, dropped = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            ok = valid(json.loads(line.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            ok = False
        if ok:
            kept.append(line.decode("utf-8"))
        else:
            dropped += 1
    return kept, dropped


def _replace(path: Path, lines: list[str]) -> None:
    if not path.exists() and not lines:
        return
    temporary = path.with_suffix(".repair")
    temporary.write_text("".join(f"{line}\n" for line in lines))
    os.replace(temporary, path)
