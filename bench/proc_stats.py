"""CPU seconds of a process from /proc, for run.py and the load processes alike.

Imported at the top of load.py, never inside a measurement: importing run.py there (as the
load processes did from 2026-12-04 11:12 UTC) took the load process's event loop for ~0.5 s at
the window's start, which W3's subscribers counted as delivery latency (p99 ~0.3-0.9 s)."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """utime + stime of a process from /proc/PID/stat (0 if it is gone), with those of its
    live children and of the children it has reaped: a SQLite server commits through a
    writer process under load (store/writer_process.py), and that work is the server's."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    if not with_children:
        return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)
    # fields 14-17 of stat(5): utime, stime, cutime, cstime
    own = sum(int(f) for f in fields[11:15]) / TICK
    return own + sum(cpu_seconds(child) for child in _children(pid))


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found
