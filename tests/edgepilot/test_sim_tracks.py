"""Shipped tracks and the track file format: every flaw is a clear EdgepilotError."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.sim.generator import overlaps
from edgepilot.sim.tracks import list_tracks, load_track


def test_at_least_eight_varied_tracks_ship():
    names = list_tracks()
    assert len(names) >= 8
    tracks = [load_track(n) for n in names]
    for t in tracks:
        assert t.width_m == pytest.approx(1.2)
        assert not overlaps(t.centerline, t.width_m), t.name
        assert t.min_radius() >= 1.45, t.name  # 1.5 m hairpins, a little discretisation
        assert t.description, t.name
    radii = {t.name: t.min_radius() for t in tracks}
    assert min(radii.values()) <= 1.6  # hairpins down to 1.5 m
    assert max(radii.values()) >= 2.8  # and gentle tracks

    def longest_straight(t):
        k = np.abs(t.curvature()) < 0.02
        best = run = 0
        for flat in np.concatenate([k, k]):
            run = run + 1 if flat else 0
            best = max(best, run)
        return min(best, len(k)) * (t.length / len(k))

    assert max(longest_straight(t) for t in tracks) >= 10.0  # long straights


def test_nearest_gives_signed_cte_left_positive():
    t = load_track("oval")
    i = 100
    p = t.pts[i]
    left = np.array([-t.tangent[i, 1], t.tangent[i, 0]])
    j, cte = t.nearest(*(p + 0.3 * left))
    assert abs(j - i) <= 1
    assert cte == pytest.approx(0.3, abs=1e-3)
    _, cte = t.nearest(*(p - 0.25 * left), hint=i)
    assert cte == pytest.approx(-0.25, abs=1e-3)


def test_track_json_round_trip(tmp_path):
    t = load_track("triangle")
    p = tmp_path / "tri.json"
    p.write_text(t.to_json())
    u = load_track(str(p))
    assert u.length == pytest.approx(t.length, rel=1e-4)
    assert json.loads(p.read_text()).keys() >= {"name", "width_m", "centerline"}


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"name": "x", "centerline": [[0,0],[1,0],[1,1]]}', "width_m"),
        ('{"name": "x", "width_m": 1.2}', "centerline"),
        ('{"name": "x", "width_m": 1.2, "centerline": [[0,0],[1,0]]}', ">= 3 points"),
        ('{"name": "x", "width_m": 1.2, "centerline": [[0,0],[1,"a"],[1,1]]}', "centerline"),
        ('{"name": "x", "width_m": -1, "centerline": [[0,0],[1,0],[1,1]]}', "width_m"),
        ('{"name": "x", "width_m": 1.2, "centerline": [[0,0],[0,0],[0,0]]}', "zero length"),
    ],
)
def test_bad_track_files_are_clear_errors(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(EdgepilotError, match=needle):
        load_track(str(p))


def test_unknown_track_name_lists_the_shipped_ones():
    with pytest.raises(EdgepilotError, match="oval"):
        load_track("no-such-track")


def test_unknown_keys_are_ignored(tmp_path):
    p = tmp_path / "t.json"
    pts = [[3 * math.cos(a), 3 * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 60, endpoint=False)]
    p.write_text(json.dumps({"name": "c", "width_m": 1.0, "centerline": pts, "author": "me"}))
    t = load_track(str(p))
    assert t.length == pytest.approx(2 * math.pi * 3, rel=0.01)
