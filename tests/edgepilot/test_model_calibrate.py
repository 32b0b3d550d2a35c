"""Threshold calibration: exits chosen by Learn-Then-Test meet the stated guarantee on
held-out frames (checked over many draws), and offload thresholds meet theirs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepilot.model.calibrate import (
    GRID_STEP,
    MAX_SHARE,
    MIN_SUPPORT,
    CalibrationTarget,
    answering_exit,
    calibrate,
    lowest_threshold,
    t_critical,
)


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


def synthetic_exits(rng: np.random.Generator, n: int, block: int = 20) -> tuple[list, list, np.ndarray]:
    """Frames of a car with two early exits whose error against the label grows as their
    confidence falls, and a final head of constant error. Frames come in blocks that share
    a difficulty (neighbouring frames are alike), so single frames are not independent."""
    n_blocks = n // block
    hard = np.repeat(rng.uniform(0, 1, n_blocks), block)[:n]  # per-block difficulty
    labels = np.repeat(rng.uniform(-0.5, 0.5, n_blocks), block)[:n] + rng.normal(0, 0.05, n)
    final = labels + rng.normal(0, 0.02, n)
    c0 = np.clip(1 - hard + rng.normal(0, 0.1, n), 0, 1)
    c1 = np.clip(1 - 0.7 * hard + rng.normal(0, 0.1, n), 0, 1)
    s0 = labels + rng.normal(0, 0.005 + 0.08 * hard**2, n)  # good on easy frames, bad on hard
    s1 = labels + rng.normal(0, 0.01 + 0.04 * hard**2, n)
    return [s0, s1, final], [c0, c1, np.ones(n)], labels


def package_ratio(cal: dict, steer: list, conf: list, labels: np.ndarray) -> tuple[float, float]:
    """(package MAE / full network's MAE, share of frames leaving early) on given frames."""
    th = [np.inf if t is None else t for t in cal["exits"]]
    taken = answering_exit(conf, th)
    pkg = np.stack(steer)[taken, np.arange(len(labels))]
    return float(np.abs(pkg - labels).mean() / np.abs(steer[-1] - labels).mean()), float(np.mean(taken < 2))


def test_guarantee_holds_on_held_out_frames():
    """The stated guarantee, checked: over many validation draws, the package chosen on
    each meets "MAE <= budget x the full network's" on a large held-out draw of the same
    kind in at least 1 - delta of the draws (here none may fail in more than 3 of 40; the
    binomial tail of 3 failures at 5% is 14%, of 6 is 0.3%), while early exits still carry
    most frames. Choosing by the validation frames' own mean (no confidence step) fails
    in about a quarter of the draws (next test): that is what the test step is for."""
    target = CalibrationTarget(budget=1.03, delta=0.05)
    rng = np.random.default_rng(11)
    held = synthetic_exits(rng, 200_000)
    fails, shares = 0, []
    for seed in range(40):
        val = synthetic_exits(np.random.default_rng(1000 + seed), 2000)
        cal = calibrate(*val, target)
        ratio, share = package_ratio(cal, *held)
        fails += ratio > target.budget
        shares.append(share)
        rates = cal["val_exit_rate"]
        assert abs(sum(rates.values()) - 1) < 1e-9
        assert all(v == 0 or v >= 0.02 - 1e-9 for k, v in rates.items() if k != "2")  # on: >= 2%
    assert fails <= 3, f"the budget failed on held-out frames in {fails} of 40 draws"
    assert np.mean(shares) > 0.4  # and the rule is not "never exit"


def test_naive_choice_fails_the_budget_about_half_the_time():
    """The yardstick of the test above: without the confidence step (delta = 0.5 makes
    the t bound the plain mean) the budget fails far more often (10 of 40 draws)."""
    rng = np.random.default_rng(11)
    held = synthetic_exits(rng, 200_000)
    fails = 0
    for seed in range(40):
        val = synthetic_exits(np.random.default_rng(1000 + seed), 2000)
        cal = calibrate(*val, CalibrationTarget(budget=1.03, delta=0.5))
        fails += package_ratio(cal, *held)[0] > 1.03
    assert fails >= 8


def test_exits_as_good_as_the_final_head_take_nearly_every_frame():
    rng = np.random.default_rng(3)
    n = 3000
    labels = rng.uniform(-1, 1, n)
    final = labels + rng.normal(0, 0.02, n)
    s1 = labels + rng.normal(0, 0.02, n)
    cal = calibrate([final, s1, final], [rng.uniform(0, 1, n)] * 3, labels, CalibrationTarget())
    # the budget is never spent: the exits take all but the least sure frames (MAX_SHARE;
    # with the two exits' confidences alike, exit 1 keeps its 2% below exit 0's threshold)
    assert cal["val_exit_rate"]["2"] < 0.1
    assert cal["test"]["tested"] == 2 * round(MAX_SHARE / GRID_STEP)  # the walk reached the path's end
    assert cal["test"]["ucb_excess"] < 0
    assert "1.03" in cal["guarantee"] and cal["rule"] == "learn-then-test"


def test_frames_less_sure_than_calibration_saw_go_on_to_the_final_head():
    """An exit as good as the final head still never takes the frames less sure than the
    4% least sure of the path's frames: on a track where its confidence falls (unseen
    roads), those go on, and the share falls with them."""
    rng = np.random.default_rng(5)
    n = 3000
    labels = rng.uniform(-1, 1, n)
    final = labels + rng.normal(0, 0.02, n)
    conf = rng.uniform(0.4, 0.6, n)
    path = ([final, final + rng.normal(0, 0.02, n), final], [conf] * 3, labels)  # the training frames
    steer = [final, labels + rng.normal(0, 0.02, n), final]
    cal = calibrate(steer, [conf] * 3, labels, CalibrationTarget(), path, off=(0,))
    t = cal["exits"][1]
    assert t is not None and abs(t - np.quantile(conf, 1 - MAX_SHARE)) < 0.01  # not "every frame"
    assert 1 - MAX_SHARE - 0.02 < cal["val_exit_rate"]["2"] < 1 - MAX_SHARE + 0.02
    shifted = rng.uniform(0.3, 0.6, n)  # a third of these below anything calibration saw
    taken = answering_exit([shifted] * 3, [np.inf, t])
    assert abs(np.mean(taken == 2) - np.mean(shifted < t)) < 1e-9 and np.mean(taken == 2) > 0.3


def test_t_critical_matches_the_table():
    assert t_critical(0.05, 10_000) == pytest.approx(1.645, abs=2e-3)
    assert t_critical(0.05, 40) == pytest.approx(1.684, abs=5e-3)  # Student t, 40 dof
    assert t_critical(0.05, 10) == pytest.approx(1.812, abs=2e-2)


def test_offload_thresholds_cap_the_hard_share():
    rng = np.random.default_rng(1)
    n = 3000
    labels = rng.uniform(-1, 1, n)
    conf = rng.uniform(0, 1, n)
    final = labels + np.where(conf > 0.3, rng.normal(0, 0.01, n), 0.2)
    cal = calibrate([final, final], [conf, conf], labels, CalibrationTarget(max_offload=0.1))
    assert cal["val_offload_rate"] <= 0.1 + 1e-9  # the cap holds per exit, hence overall
    assert len(cal["offload"]) == 2


@pytest.mark.parametrize("n", [20, 30, 47, 61, 113])
def test_the_offload_cap_holds_on_small_splits_to_the_frame(n):
    """Every frame wrong, so only the cap limits offloading: at most floor(15% of n) frames
    are hard (an interpolated quantile let one frame more through at n = 30 and 113). One
    head answers every frame, so one cap applies."""
    rng = np.random.default_rng(n)
    labels = rng.uniform(-1, 1, n)
    conf = rng.uniform(0, 1, n)
    cal = calibrate([labels + 0.5], [conf], labels, CalibrationTarget())
    hard = round(cal["val_offload_rate"] * n)
    assert hard == math.floor(0.15 * n), (hard, n)


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
    """``edgepilot calibrate``: a looser budget lets exits take more frames, the new
    package is signed with the old one as its parent, and an int8 package is refused."""
    import argparse

    from edgepilot import EdgepilotError
    from edgepilot.model.cli import calibrate as handler
    from edgepilot.model.package import load_package, read_manifest
    from edgepilot.model.recalibrate import recalibrate

    out, strict = tmp_path / "loose.eppkg", tmp_path / "strict.eppkg"
    # the sample logs' validation split is a few dozen frames: test blocks of 2 frames
    recalibrate(tiny_model, out, sample_logs, CalibrationTarget(budget=100.0, delta=0.2, block=2))
    recalibrate(tiny_model, strict, sample_logs, CalibrationTarget(budget=1.0, delta=0.01, block=2))
    old, new = read_manifest(tiny_model), read_manifest(out)
    assert new["parent"] == old["version"] and new["version"] != old["version"]
    assert new["calibration"]["target"]["budget"] == 100.0
    # a budget of 100x the full network's error: the early exits answer every frame but the
    # least sure (MAX_SHARE of the training frames; validation frames are less sure); no
    # slack at 99%: never more than that
    loose_final = new["calibration"]["val_exit_rate"]["2"]
    assert loose_final < 0.25
    assert read_manifest(strict)["calibration"]["val_exit_rate"]["2"] >= loose_final
    assert load_package(out).state.keys() == load_package(tiny_model).state.keys()  # verified, same weights
    with pytest.raises(EdgepilotError, match="fp32 parent"):
        recalibrate(tiny_int8, tmp_path / "x.eppkg", sample_logs, CalibrationTarget())
    args = argparse.Namespace(package=tiny_model, logs=sample_logs, out=str(tmp_path / "y.eppkg"), key=None)
    with pytest.raises(EdgepilotError, match="--budget"):
        handler(argparse.Namespace(**{**vars(args), "agree_tol": 0.04}))
    with pytest.raises(EdgepilotError, match="--budget must be"):
        handler(argparse.Namespace(**{**vars(args), "budget": 0.5}))


def test_an_untrained_exit_stays_off_even_where_it_looks_good():
    """Exit 0 of the default recipe is not trained (loss weight 0): its head says nothing,
    so calibration must not hand it frames, however its numbers fall on validation."""
    from edgepilot.model.train import EXIT_WEIGHTS, untrained_exits

    rng = np.random.default_rng(3)
    steer, conf, labels = synthetic_exits(rng, 4000)
    free = calibrate(steer, conf, labels, CalibrationTarget())
    assert free["exits"][0] is not None and free["val_exit_rate"]["0"] > 0  # it would be used
    kept = calibrate(steer, conf, labels, CalibrationTarget(), None, off=(0,))
    assert kept["exits"][0] is None and kept["val_exit_rate"]["0"] == 0.0
    assert kept["exits"][1] is not None and kept["val_exit_rate"]["1"] > 0  # exit 1 still answers
    assert kept["test"]["off"] == [0]
    assert untrained_exits(EXIT_WEIGHTS) == (0,)
    assert untrained_exits([1.0, 0.0, 1.0]) == (1,) and untrained_exits([1.0, 1.0, 1.0]) == ()


def test_the_eval_ratio_interval_covers_the_true_ratio():
    """``edgepilot eval``'s interval of the package's MAE over the full network's: drawn
    by 1 s blocks, it holds the ratio of a large draw (the truth) in most small test sets
    (1000 frames, one held-out track's worth: 53 of these 60; a percentile bootstrap of 50
    blocks covers a little under its 95%); drawn frame by frame it would pretend
    neighbouring frames were independent and miss far more often (33 of 60)."""
    from edgepilot.model.calibrate import ratio_interval

    def errors(rng, n):
        steer, conf, labels = synthetic_exits(rng, n)
        taken = answering_exit(conf, [0.8, 0.6, -np.inf])
        pkg = np.stack(steer)[taken, np.arange(n)]
        return np.abs(pkg - labels), np.abs(steer[-1] - labels)

    num, den = errors(np.random.default_rng(5), 200_000)
    truth = num.sum() / den.sum()
    covered = {20: 0, 1: 0}
    for seed in range(60):
        num, den = errors(np.random.default_rng(2000 + seed), 1000)
        for block in covered:
            lo, hi = ratio_interval(num, den, block, draws=500)
            covered[block] += lo <= truth <= hi
    assert covered[20] >= 50 and covered[1] <= 40, covered
