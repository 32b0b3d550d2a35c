"""The expert drives every shipped track for 3 laps with autonomy 1.0, also at 100 ms
latency (physics only: the expert reads the truth, not the image)."""

from __future__ import annotations

import pytest

from edgepilot.sim.expert import Expert
from edgepilot.sim.tracks import list_tracks, load_track
from edgepilot.sim.world import SimWorld


def drive(name: str, latency_ms: float, perturb: float = 0.0, laps: int = 3) -> SimWorld:
    t = load_track(name)
    w = SimWorld(t, latency_ms=latency_ms)
    e = Expert(t, perturb=perturb, seed=1)
    while not w.done(laps, 600):
        _, _, s, thr = e.act(w)
        w.step(s, thr)
    return w


@pytest.mark.parametrize("latency_ms", [0.0, 100.0])
@pytest.mark.parametrize("name", list_tracks())
def test_expert_three_laps_full_autonomy(name, latency_ms):
    w = drive(name, latency_ms)
    assert w.score.laps == 3
    assert w.score.interventions == 0 and w.score.autonomy == 1.0
    assert w.score.mean_abs_cte_m < 0.15


def test_perturbed_expert_labels_recoveries():
    t = load_track("switchback")
    w = SimWorld(t)
    e = Expert(t, perturb=0.3, seed=2)
    pushed = recovering = 0
    while not w.done(1, 300):
        label, thr, applied, _ = e.act(w)
        if abs(applied - label) > 0.05:
            pushed += 1
        elif abs(w.cte) > 0.05 and abs(label) > 0.05:
            recovering += 1
        w.step(applied, thr)
    assert w.score.laps == 1
    assert pushed > 20 and recovering > 20
    assert w.score.mean_abs_cte_m > drive("switchback", 0.0, laps=1).score.mean_abs_cte_m
