"""Scoring as the contract defines it: interventions and reset, laps in order, autonomy."""

from __future__ import annotations

import math

import pytest

from edgepilot.sim.expert import Expert
from edgepilot.sim.scoring import LapCounter, Score
from edgepilot.sim.tracks import load_track
from edgepilot.sim.world import SimWorld


def test_leaving_the_road_is_an_intervention_and_the_car_is_put_back():
    t = load_track("oval")
    w = SimWorld(t)
    steps = 0
    while w.score.interventions == 0:
        w.step(1.0, 0.6)  # full right lock off a straight
        steps += 1
        assert steps < 200
    s = w.car.state
    assert w.cte == 0.0 and s.v == 0.0
    _, cte = t.nearest(s.x, s.y)
    assert abs(cte) < 0.03  # back on the centerline
    assert math.remainder(s.yaw - t.heading(w.index), 2 * math.pi) == pytest.approx(0, abs=1e-9)
    assert w.trail.interventions and len(w.trail.interventions) == 1
    ix, iy = w.trail.interventions[0]
    assert abs(t.nearest(ix, iy)[1]) > t.width_m / 2  # where it left the road
    sc = w.score
    assert sc.autonomy == pytest.approx(1 - 6.0 / sc.elapsed_s)
    assert sc.elapsed_s == pytest.approx(steps * 0.05)


def test_autonomy_formula_and_dict():
    s = Score(laps=2, interventions=3, elapsed_s=60.0, frames=1200, sum_abs_cte=24.0)
    assert s.autonomy == pytest.approx(0.7)
    d = s.as_dict()
    assert d == {
        "laps": 2,
        "autonomy": 0.7,
        "interventions": 3,
        "mean_abs_cte_m": 0.02,
        "elapsed_s": 60.0,
        "frames": 1200,
    }
    assert Score().autonomy == 1.0


def test_laps_count_only_when_every_part_is_passed_in_order():
    n = 1000
    lc = LapCounter(n)
    for i in list(range(0, n, 3)) + [0]:
        lc.update(i)
    assert lc.laps == 1
    back = LapCounter(n)
    for i in list(range(n - 1, -1, -3)) * 2:  # backwards, twice around
        back.update(i)
    assert back.laps == 0
    short = LapCounter(n)
    for i in list(range(0, 400, 3)) + list(range(700, n, 3)) + [0]:  # a shortcut skips a part
        short.update(i)
    assert short.laps == 0


def test_expert_laps_match_distance_driven():
    t = load_track("oval")
    w = SimWorld(t)
    e = Expert(t)
    dist = 0.0
    while not w.done(2, 300):
        x0, y0 = w.car.state.x, w.car.state.y
        _, _, s, thr = e.act(w)
        w.step(s, thr)
        dist += math.hypot(w.car.state.x - x0, w.car.state.y - y0)
    assert w.score.laps == 2
    assert dist == pytest.approx(2 * t.length, rel=0.03)
    assert w.truth()["progress"] == pytest.approx(2.0, abs=0.02)


def test_done_stops_on_time_too():
    w = SimWorld(load_track("oval"))
    while not w.done(5, 1.0):
        w.step(0.0, 0.0)
    assert w.frames == 20 and w.score.laps == 0
