"""Small helpers several test files share (``from tests.helpers import ...``)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest

from edgepilot import EdgepilotError
from edgepilot.cli import main
from edgepilot.schema import fleet, wire
from testbed.procs import spawn_edge as testbed_spawn_edge

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
    try:
        return testbed_spawn_edge(url, node_id, timeout_s=60)
    except EdgepilotError as e:
        pytest.fail(str(e))


RETAINED_PUSHES = (f"{wire.ROOT}/models/#", fleet.CAR_MODEL_FILTER, fleet.CAR_TELEMETRY_FILTER, fleet.CLOUD_RUNS_TOPIC)
"""Where tests leave retained messages that a later test's edge node, car or run watcher
would act on (edge health is left: every node's last word is its own, ``offline``)."""


def clear_retained(url: str, filters: tuple[str, ...] = RETAINED_PUSHES, timeout_s: float = 3.0) -> list[str]:
    """Wipe every retained message under ``filters``; returns the topics wiped.

    The broker handles one connection's packets in order and sends a subscription's
    retained messages as it handles the SUBSCRIBE, so a sentinel published after the
    subscriptions (``start`` returns once they are queued) comes back after all of them."""
    import threading
    import uuid

    from edgepilot.config import BrokerConfig
    from edgepilot.mqtt import Connection

    sentinel = f"edgepilot-test/sentinel/{uuid.uuid4().hex}"
    topics: list[str] = []
    done = threading.Event()
    conn = Connection(BrokerConfig(url=url), f"test-wipe-{uuid.uuid4().hex[:8]}")
    for flt in filters:
        conn.subscribe(flt, lambda m: m.retain and m.payload and topics.append(m.topic), qos=1)
    conn.subscribe(sentinel, lambda m: done.set(), qos=1)
    conn.start()
    try:
        conn.publish(sentinel, b".", qos=1)
        assert done.wait(timeout_s), "clear_retained: the sentinel never came back"
        for t in topics:
            conn.client.publish(t, b"", qos=1, retain=True).wait_for_publish(timeout_s)
    finally:
        conn.close()
    return topics
