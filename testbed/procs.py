"""The deployables as processes, for whatever plays several parts at once (load
generators, benchmarks, the suite's system tests): they are started as a user would."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

from edgepilot import EdgepilotError

ROOT = Path(__file__).resolve().parents[1]


def spawn_edge(
    url: str,
    node_id: str,
    model: str = "builtin:pilotnet",
    tails: str | None = None,
    *extra: str,
    timeout_s: float = 120.0,
) -> subprocess.Popen:
    """``edgepilot edge`` as its own process (one torch thread); returns once it says ready."""
    cmd = [sys.executable, "-m", "edgepilot", "edge", "--model", model, "--node-id", node_id, "--broker", url]
    cmd += ["--tails", tails] if tails else []
    proc = subprocess.Popen(
        [*cmd, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready and proc.stdout else ""
    if "ready" not in line:
        proc.kill()
        raise EdgepilotError(f"edge {node_id} did not start: {line!r}")
    return proc


def rss_mb(pid: int) -> float | None:
    """A process's resident memory (MB) from /proc, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (a trainer's children, Chromium's dozen)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out
