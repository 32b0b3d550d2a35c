"""What the machine itself added to a time a test measured.

A timed requirement (the firmware's 250 ms command gap, a poll that keeps its deadline, a
loop that never waits on a dead port) is a property of the code; a busy machine stretches
every wall-clock interval by the time the scheduler keeps the code's threads ready to run
but off a CPU. The kernel counts exactly that, per thread (``/proc/PID/task/TID/schedstat``,
second field: ``run_delay``, nanoseconds spent on a run queue). So a test checks

    wall-clock interval - time its threads waited for a CPU inside it  <  the requirement

and reports both terms. On an idle machine the waiting is ~0 and the check is the plain
requirement; on a loaded one the interval grows and so does the waiting, so the test gets
slower, not red. Time spent *blocked* (sleeping, on a lock, on I/O: what a bug that waits on
a dead port or a dead broker does) is not run-queue time, so such a bug still fails.

Which threads: the Python threads of this process, and every thread of another watched
process. This process's native-only threads (OpenMP, OpenCV pools) are left out: they
cannot hold up Python code, and an idle pool that spins "waits" for the whole interval.

How their waiting adds up: the longest any one of them waited in the interval (plus the
CPUs' steal time). That is what the machine at least cost the interval; the sum over the
threads is what it at most cost, but threads that wait side by side count the same
stretch several times: on a busy machine (load average ~20 on 2 cores) the sum covered a
600 ms stall of the actuator's blocked worker, the longest single wait did not. Measured
there, unbroken runs stayed at most ~100 ms net of it against the 250 ms requirement.
Without schedstat (a kernel without CONFIG_SCHED_INFO) the waiting reads as 0 and the
checks are the bare requirement.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

Snapshot = dict[tuple[int, int], int]
"""(pid, tid) -> cumulative run-queue wait of that thread in nanoseconds; ``STEAL`` -> the
CPU time the hypervisor gave to others, summed over this machine's CPUs."""

STEAL = (0, 0)
_TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK")


def _steal_ns() -> int:
    """Steal time from /proc/stat (a virtual machine's CPUs taken away by the host: a thread
    running then neither progresses nor counts as waiting), in nanoseconds."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        return int(fields[8]) * _TICK_NS
    except (OSError, IndexError, ValueError):
        return 0


def _threads(pid: int) -> list[int]:
    """The threads counted for ``pid``: this process's Python threads, or all of another's."""
    if pid == os.getpid():
        return [t.native_id for t in threading.enumerate() if t.native_id is not None]
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []  # the process has ended: what it waited is no longer readable


def snapshot(pids: Iterable[int] | None = None) -> Snapshot:
    """The run-queue wait of the counted threads of ``pids`` (default: this process)."""
    out: Snapshot = {STEAL: _steal_ns()}
    for pid in pids if pids is not None else (os.getpid(),):
        for tid in _threads(pid):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    out[(pid, tid)] = int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the thread ended between listdir and open
    return out


def waited_s(before: Snapshot, after: Snapshot) -> float:
    """Seconds the machine kept the threads waiting for a CPU between two snapshots: the
    longest any one thread waited, plus steal time. A thread born in between counts from 0,
    one that ended in between is not counted (both only make the check stricter)."""
    steal = after.get(STEAL, 0) - before.get(STEAL, 0)
    longest = max((v - before.get(k, 0) for k, v in after.items() if k != STEAL), default=0)
    return (max(0, longest) + max(0, steal)) / 1e9


@dataclass
class Stamps:
    """Time stamps that each carry a snapshot, so that any interval between two of them
    can be split into wall-clock time and time the machine kept the threads waiting."""

    pids: list[int] = field(default_factory=lambda: [os.getpid()])
    times: list[float] = field(default_factory=list)
    snaps: list[Snapshot] = field(default_factory=list)

    def mark(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self.times.append(now)
        self.snaps.append(snapshot(self.pids))
        return now

    def gaps(self, t0: float = 0.0, t1: float = float("inf")) -> list[tuple[float, float]]:
        """(wall-clock gap, waited) between consecutive stamps within [t0, t1], seconds."""
        idx = [i for i, t in enumerate(self.times) if t0 <= t <= t1]
        return [
            (self.times[b] - self.times[a], waited_s(self.snaps[a], self.snaps[b]))
            for a, b in zip(idx, idx[1:], strict=False)
        ]


def worst(gaps: list[tuple[float, float]]) -> dict[str, float]:
    """The gap that is longest once the machine's waiting is taken off, in milliseconds:
    ``own_ms`` (what a requirement is checked against), and its ``wall_ms`` and
    ``waited_ms``; zeros when there are no gaps."""
    if not gaps:
        return {"own_ms": 0.0, "wall_ms": 0.0, "waited_ms": 0.0}
    wall, waited = max(gaps, key=lambda g: g[0] - g[1])
    return {
        "own_ms": round(max(0.0, wall - waited) * 1e3, 1),
        "wall_ms": round(wall * 1e3, 1),
        "waited_ms": round(waited * 1e3, 1),
    }


@dataclass
class Interval:
    """``with Interval() as iv: ...`` then ``iv.wall_s``, ``iv.waited_s``, ``iv.own_s``."""

    pids: list[int] | None = None
    wall_s: float = 0.0
    waited_s: float = 0.0
    _t0: float = field(default=0.0, repr=False)
    _s0: Snapshot = field(default_factory=dict, repr=False)

    def __enter__(self) -> Interval:
        self._s0 = snapshot(self.pids)
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self._t0
        self.waited_s = waited_s(self._s0, snapshot(self.pids))

    @property
    def own_s(self) -> float:
        """The interval less the machine's waiting: what the code itself took."""
        return max(0.0, self.wall_s - self.waited_s)
