"""The onboard loop with real sources and the driving log: modes, caps, e-stop,
recording (auto-record, delete-last-N-seconds), neutral on stop, per-stage timing."""

from __future__ import annotations

import numpy as np
import pytest

from edgepilot.drive.loop import DriveLoop, LoopOptions, UserState
from edgepilot.drive.replay import ReplaySource
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.schema.log import Record
from edgepilot.stats import Histogram


class CommandLog:
    """Stands in for the physical car only: keeps what the loop sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, float]] = []
        self.neutrals = 0
        self.closed = False

    def run(self, s: float, t: float) -> None:
        self.sent.append((s, t))

    def neutral(self) -> None:
        self.neutrals += 1
        self.sent.append((0.0, 0.0))

    def close(self) -> None:
        self.closed = True


def make_log(path, n=40, dt=0.05):
    with LogWriter(path) as w:
        for i in range(n):
            img = np.full((120, 160, 3), (i * 5) % 255, np.uint8)
            w.write(Record(i=i, t=100 + i * dt, steering=np.sin(i / 5) * 0.8, throttle=0.9), img)


class Script:
    """A user who asks for things at given frames."""

    def __init__(self, plan: dict[int, UserState], default: UserState) -> None:
        self.plan, self.default, self.n = plan, default, 0

    def poll(self, frame):
        s = self.plan.get(self.n, self.default)
        self.n += 1
        return s


def test_replay_in_user_mode_passes_labels_through_with_cap(tmp_path):
    make_log(tmp_path / "log")
    act = CommandLog()
    loop = DriveLoop(ReplaySource(tmp_path / "log"), act, options=LoopOptions(mode="user", throttle_cap=0.5))
    st = loop.run()
    assert st.frames == 40
    recs = LogReader(tmp_path / "log").records()
    for (s, t), r in zip(act.sent, recs, strict=False):
        assert s == pytest.approx(r.steering)
        assert t == 0.5  # capped
    assert act.sent[-1] == (0.0, 0.0) and act.closed  # neutral on the way out
    res = loop.result()
    assert res["frames"] == 40 and res["latency_ms"]["p99"] > 0
    assert {"capture", "actuate", "frame"} <= set(res["stages_ms"])


def test_estop_mode_switch_record_delete(tmp_path):
    make_log(tmp_path / "src", n=60)
    out = tmp_path / "out"
    rec = LogWriter(out)
    go = UserState(0.3, 0.4)
    plan = {
        5: UserState(0.3, 0.4, estop=True),
        10: UserState(0.3, 0.4, estop=False),
        20: UserState(0.3, 0.4, record=True),
        45: UserState(0.3, 0.4, delete=True),
        50: UserState(0.3, 0.4, quit=True),
    }
    act = CommandLog()
    opts = LoopOptions(mode="user", record=False, delete_seconds=0.5)
    loop = DriveLoop(ReplaySource(tmp_path / "src"), act, user=Script(plan, go), recorder=rec, options=opts)
    st = loop.run()
    rec.close()
    assert st.frames == 50 and st.quit  # the frame that asked to quit neither drives nor is recorded
    assert act.sent[5] == (0.0, 0.0) and act.sent[9] == (0.0, 0.0) and act.sent[10] == (0.3, 0.4)
    assert st.estops == 1
    recs = LogReader(out).records()
    # recorded frames 20..49 (30 records, i = 0..29); the delete asked at frame 45 (before it is recorded)
    # removes the last 0.5 s already recorded: frames 35..44 (i = 15..24, t less than 0.5 s before the newest)
    kept = [r.i for r in recs]
    assert kept == list(range(0, 15)) + list(range(25, 30))
    assert st.deleted == 10
    assert all(r.applied_throttle == 0.4 for r in recs)


def test_auto_record_only_while_throttle(tmp_path):
    make_log(tmp_path / "src", n=20)
    rec = LogWriter(tmp_path / "out")
    plan = {i: UserState(0.0, 0.0) for i in range(10)}
    loop = DriveLoop(
        ReplaySource(tmp_path / "src"),
        CommandLog(),
        user=Script(plan, UserState(0.1, 0.2)),
        recorder=rec,
        options=LoopOptions(mode="user", auto_record=True),
    )
    loop.run()
    rec.close()
    assert len(LogReader(tmp_path / "out").records()) == 10


def test_histogram_percentiles_are_close():
    rng = np.random.default_rng(0)
    xs = rng.lognormal(mean=-1.0, sigma=0.7, size=20000)
    h = Histogram()
    for x in xs:
        h.add(float(x))
    for q in (50, 90, 99):
        assert h.percentile(q) == pytest.approx(np.percentile(xs, q), rel=0.02)
    assert h.max == pytest.approx(xs.max())
