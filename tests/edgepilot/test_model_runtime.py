"""The early-exit logic of ``Autopilot``: stages are counted, a confident exit skips the
later stages, batch and single-frame inference agree, split mode continues correctly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgepilot import EdgepilotError
from edgepilot.model.nets import ArchSpec, build_net, stage_macs
from edgepilot.model.preprocess import preprocess
from edgepilot.model.runtime import Autopilot
from edgepilot.model.synthetic import road_frame


def make_autopilot(
    exits: list[float | None], offload: float | list = 0.0, seed: int = 0, poison: bool = False
) -> Autopilot:
    torch.manual_seed(seed)
    net = build_net(ArchSpec("early-exit"))
    with torch.no_grad():  # untrained batch-norm statistics: give them something non-trivial
        net.train()
        net(torch.randn(8, 3, 66, 200))
        if poison:  # a corrupted model: every output NaN
            for p in net.parameters():
                p.fill_(math.nan)
    manifest = {
        "version": "test",
        "arch": net.arch.to_dict(),
        "quant": "fp32",
        "thresholds": {"exits": exits, "offload": offload},
        "stage_macs": stage_macs(net),
    }
    return Autopilot.from_state(manifest, net.state_dict())


def frames(n: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [road_frame(float(s), rng) for s in np.linspace(-0.9, 0.9, n)]


def test_confident_first_exit_skips_later_stages():
    ap = make_autopilot([0.0, 0.0])  # every confidence is >= 0: exit 0 always answers
    d = ap.infer(frames(1)[0])
    assert d.exit == 0
    assert ap.stage_calls == [1, 0, 0]
    assert set(d.stage_ms) == {"preprocess", "stage0"}
    assert d.features.shape[1:] == (24, 9, 25)


def test_uncalibrated_package_runs_every_stage():
    ap = make_autopilot([None, None])
    for f in frames(5):
        d = ap.infer(f)
        assert d.exit == ap.n_exits - 1
    assert ap.stage_calls == [5, 5, 5]


def test_threshold_splits_frames_by_confidence():
    """With exit 0's threshold at the median of its confidences, exactly the frames below
    it run stage 1: the count of stage calls follows the confidences."""
    fs = frames(24)
    probe = make_autopilot([None, None])
    conf0 = [probe.infer(f, force_final=True) for f in fs]
    # the confidence of exit 0 itself: force exit 0 by a zero threshold
    zero = make_autopilot([0.0, None])
    c0 = np.array([zero.infer(f).confidence for f in fs])
    assert len(conf0) == 24
    t = float(np.median(c0))
    ap = make_autopilot([t, math.inf])
    exits = [ap.infer(f).exit for f in fs]
    n_sure = int((c0 >= t).sum())
    assert exits.count(0) == n_sure
    assert ap.stage_calls == [24, 24 - n_sure, 24 - n_sure]


def test_force_final_and_hard_flag():
    # the final head is never sure enough (confidence <= 1 < 1.01); exit 0 always is
    ap = make_autopilot([0.0, 0.0], offload=[0.0, 0.0, 1.01])
    d = ap.infer(frames(1)[0], force_final=True)
    assert d.exit == 2 and d.hard
    assert ap.stage_calls == [1, 1, 1]
    assert not ap.infer(frames(1)[0]).hard  # exit 0 answered, above its offload threshold
    # one number applies to every exit (older manifests)
    assert make_autopilot([0.0, 0.0], offload=1.01).infer(frames(1)[0]).hard


def test_a_nan_answer_is_hard_never_trusted():
    """NaN confidence compares False with every threshold: it used to pass as "not hard",
    so a corrupted model's NaN answer was never offered to the edge. Now it is hard (the
    actuator still turns the NaN itself into neutral)."""
    ap = make_autopilot([0.5, 0.5], offload=[0.0, 0.0, 0.0], poison=True)
    d = ap.infer(frames(1)[0])
    assert d.exit == 2 and math.isnan(d.steering) and math.isnan(d.confidence) and d.hard
    assert all(b.hard and b.exit == 2 for b in ap.infer_batch(frames(3)))
    assert not make_autopilot([0.5, 0.5], offload=[0.0, 0.0, 0.0]).infer(frames(1)[0]).hard


def test_batch_matches_single_frames():
    fs = frames(12)
    c = make_autopilot([None, None])
    t = float(np.median([c.infer(f, force_final=True).confidence for f in fs]))
    ap = make_autopilot([None, None], offload=t)
    single = [ap.infer(f) for f in fs]
    batch = ap.infer_batch(fs)
    assert [d.exit for d in batch] == [d.exit for d in single]
    assert [d.hard for d in batch] == [d.hard for d in single]
    assert 0 < sum(d.hard for d in batch) < len(fs)
    np.testing.assert_allclose([d.steering for d in batch], [d.steering for d in single], atol=1e-4)


def test_split_mode_continues_from_features():
    ap = make_autopilot([0.0, None])
    f = frames(1)[0]
    early = ap.infer(f)
    assert early.exit == 0
    full = make_autopilot([None, None]).infer(f)
    cont = ap.continue_from(early.features, early.exit)
    assert cont.exit == 2
    assert cont.steering == pytest.approx(full.steering, abs=1e-5)
    with pytest.raises(EdgepilotError):
        ap.continue_from(early.features, 2)


def test_an_exit_that_is_off_merges_its_stage_into_the_next():
    ap = make_autopilot([None, 0.0])
    assert ap.segments == [[0, 1], [2]]
    d = ap.infer(frames(1)[0])
    assert d.exit == 1 and ap.stage_calls == [1, 1, 0]
    assert set(d.stage_ms) == {"preprocess", "stage0-1"}
    ref = make_autopilot([0.0, 0.0])  # same seed, same weights, every exit on
    ref.infer(frames(1)[0])
    assert ref.infer(frames(1)[0], force_final=True).steering == pytest.approx(
        ap.infer(frames(1)[0], force_final=True).steering, abs=1e-5
    )
    with pytest.raises(EdgepilotError, match="not a split point"):
        ap.continue_from(d.features, 0)
    assert ap.continue_from(d.features, 1).exit == 2


def test_bad_frames_are_clear_errors():
    ap = make_autopilot([None, None])
    with pytest.raises(EdgepilotError, match="HxWx3"):
        ap.infer(np.zeros((120, 160), np.uint8))
    with pytest.raises(EdgepilotError, match="uint8"):
        ap.infer(np.zeros((120, 160, 3), np.float32))


def test_preprocess_is_the_one_definition():
    f = frames(1)[0]
    x = preprocess(f)
    assert x.shape == (3, 66, 200) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    # the road (bright, lower middle) is brighter than the ground in the luma channel
    assert x[0, 50, 100] > x[0, 50, 5]


def test_early_exit_is_cheap_in_macs():
    net = build_net(ArchSpec("early-exit"))
    macs = stage_macs(net)
    pilot = sum(stage_macs(build_net(ArchSpec("pilotnet"))))
    assert 26_000_000 < pilot < 28_000_000  # PilotNet as published: 26.9M MACs
    assert macs[0] < 0.06 * pilot  # the first exit costs about 5% of PilotNet (1.36M MACs)
    assert macs[0] < min(macs[1:])  # the first stage is the cheap look; the later ones are heavier


def test_exit0_head_is_part_of_the_architecture():
    """``head0`` changes exit 0's head and survives the manifest round trip; packages made
    before the field existed (no key) build the first design's head."""
    spec = ArchSpec("early-exit", head0=[5, 13, 64])
    again = ArchSpec.from_dict(spec.to_dict())
    assert again.head0 == [5, 13, 64]
    net = build_net(again)
    assert net.stages[0].head.fc1.in_features == 24 * 5 * 13 and net.stages[0].head.fc1.out_features == 64
    old = {k: v for k, v in spec.to_dict().items() if k != "head0"}
    assert build_net(ArchSpec.from_dict(old)).stages[0].head.fc1.in_features == 24 * 2 * 6
