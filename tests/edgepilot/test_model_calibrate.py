"""Threshold calibration: the chosen thresholds meet the stated target, and are the lowest
that do (so exits are taken as often as the target allows)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepilot.model.calibrate import MIN_SUPPORT, CalibrationTarget, calibrate, lowest_threshold


def test_lowest_threshold_meets_target_and_is_minimal():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 2000)
    good = rng.uniform(0, 1, 2000) < conf  # more confident -> more often right
    t = lowest_threshold(conf, good, 0.95)
    sel = conf >= t
    assert good[sel].mean() >= 0.95
    assert sel.sum() >= MIN_SUPPORT
    lower = conf[conf < t].max()  # the next lower cut would fail the target
    assert good[conf >= lower].mean() < 0.95


def test_no_threshold_when_target_cannot_be_met():
    conf = np.linspace(0, 1, 100)
    good = np.zeros(100, bool)
    assert lowest_threshold(conf, good, 0.95) == math.inf
    assert lowest_threshold(conf[:5], np.ones(5, bool), 0.95) == math.inf  # too few frames


def test_calibrate_exits_agree_with_final_head():
    rng = np.random.default_rng(1)
    n = 3000
    labels = rng.uniform(-1, 1, n)
    final = labels + rng.normal(0, 0.02, n)
    c0 = rng.uniform(0, 1, n)
    # exit 0 is right (close to the final head) when confident, wrong otherwise
    s0 = np.where(c0 > 0.6, final + rng.normal(0, 0.01, n), final + rng.choice([-0.3, 0.3], n))
    c1 = rng.uniform(0, 1, n)
    s1 = np.where(c1 > 0.3, final + rng.normal(0, 0.01, n), final + 0.2)
    c2 = rng.uniform(0, 1, n)
    target = CalibrationTarget(agree_tol=0.05, agree_share=0.95, max_offload=0.1)
    cal = calibrate([s0, s1, final], [c0, c1, c2], labels, target)
    t0, t1 = cal["exits"]
    assert 0.55 < t0 < 0.65  # just below the confidence at which exit 0 turns right
    assert 0.25 < t1 < 0.35
    rates = cal["val_exit_rate"]
    assert abs(sum(rates.values()) - 1) < 1e-9
    assert rates["0"] > 0.35 and rates["1"] > 0.3
    # agreement of the frames that left early, as the target states
    took0 = c0 >= t0
    assert (np.abs(s0[took0] - final[took0]) <= 0.05).mean() >= 0.95
    assert cal["val_offload_rate"] <= 0.1 + 1e-9  # the cap holds per exit, hence overall
    assert len(cal["offload"]) == 3
    assert cal["val_steering_mae_exits"] < 0.05


def test_exit_that_is_never_right_is_never_taken():
    rng = np.random.default_rng(2)
    n = 500
    labels = rng.uniform(-1, 1, n)
    cal = calibrate(
        [labels + 0.5, labels], [rng.uniform(0, 1, n), rng.uniform(0, 1, n)], labels, CalibrationTarget()
    )
    assert cal["exits"] == [None]
    assert cal["val_exit_rate"]["0"] == 0.0


def test_calibrate_command_moves_the_speed_accuracy_point(tiny_model, tiny_int8, sample_logs, tmp_path):
    """``edgepilot calibrate``: a looser agreement target lets exits take more frames, the new
    package is signed with the old one as its parent, and an int8 package is refused."""
    import json

    from edgepilot import EdgepilotError
    from edgepilot.cli import main
    from edgepilot.model.package import load_package, read_manifest
    from edgepilot.model.recalibrate import recalibrate

    out = tmp_path / "loose.eppkg"
    assert (
        main(["calibrate", tiny_model, *sample_logs, "--out", str(out), "--agree-tol", "2.0", "--json"]) == 0
    )
    old, new = read_manifest(tiny_model), read_manifest(out)
    assert new["parent"] == old["version"] and new["version"] != old["version"]
    assert new["calibration"]["target"]["agree_tol"] == 2.0
    # every exit agrees within 2.0 (the whole steering range): exit 0 answers every frame
    assert new["thresholds"]["exits"][0] is not None
    assert new["calibration"]["val_exit_rate"]["0"] == 1.0
    assert load_package(out).state.keys() == load_package(tiny_model).state.keys()  # verified, same weights
    assert json.dumps(new["thresholds"]) != json.dumps(old["thresholds"])
    with pytest.raises(EdgepilotError, match="fp32 parent"):
        recalibrate(tiny_int8, tmp_path / "x.eppkg", sample_logs, CalibrationTarget())
