"""Small helpers several test files share (tests/ is on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from edgepilot.cli import main
from edgepilot.config import REPO_ROOT

SIM_DRIVE_KEYS = {
    "laps",
    "autonomy",
    "interventions",
    "mean_abs_cte_m",
    "elapsed_s",
    "frames",
    "exit_rate",
    "offload_rate",
}
"""``sim drive --json`` keys that ../shared/CONTRACT.md promises (copied from there, not
from the code, so that a key the code drops fails a test)."""


def wait_for(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``cond`` every 20 ms until it is truthy (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run_json(capsys, argv: list[str]) -> tuple[int, dict | None]:
    """``edgepilot ARGV`` in process: its exit code and the JSON object on its last line."""
    rc = main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return rc, json.loads(out[-1]) if out else None


def spawn_edge(url: str, node_id: str) -> subprocess.Popen:
    """``edgepilot edge`` (builtin PilotNet) as a real process; returns once it says ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgepilot", "edge", "--model", "builtin:pilotnet"]
        + ["--node-id", node_id, "--broker", url],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if "ready" not in line:
        proc.kill()
        pytest.fail(f"edge {node_id} did not start: {line!r}")
    return proc
