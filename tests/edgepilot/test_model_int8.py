"""int8 compression: the int8 package agrees with its fp32 parent, is much smaller, keeps
the exit logic, and loads back to exactly the numbers that were quantised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgepilot import EdgepilotError
from edgepilot.model.compress import compress_package
from edgepilot.model.evaluate import load_frames
from edgepilot.model.nets import ArchSpec, build_net
from edgepilot.model.package import make_keys, read_manifest
from edgepilot.model.preprocess import quantized_input, to_tensor
from edgepilot.model.quantize import freeze, int8_state, load_int8, quantize_stages
from edgepilot.model.runtime import Autopilot
from edgepilot.model.synthetic import write_synthetic_log
from edgepilot.model.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    priv, pub = make_keys(d / "keys")
    logs = [str(write_synthetic_log(d / f"s{i}", frames=80, seed=10 + i)) for i in range(4)]
    train(logs, d / "fp32.eppkg", TrainConfig(epochs=5, batch=16), key=str(priv))
    return d, logs, priv, pub


def test_int8_agrees_with_fp32_and_is_smaller(trained):
    d, logs, priv, pub = trained
    r = compress_package(
        str(d / "fp32.eppkg"), str(d / "int8.eppkg"), logs, key=str(priv), trusted=[str(pub)]
    )
    assert r["size_bytes_after"] * 3.5 <= r["size_bytes_before"]
    assert r["final_head_mean_abs_diff"] < 0.03
    assert r["steering_mae_after"] <= r["steering_mae_before"] + 0.02
    m = read_manifest(d / "int8.eppkg")
    assert m["quant"] == "int8" and m["parent"] == read_manifest(d / "fp32.eppkg")["version"]
    fp32 = Autopilot.load(d / "fp32.eppkg", [str(pub)])
    int8 = Autopilot.load(d / "int8.eppkg", [str(pub)])
    frames, _ = load_frames(logs[:1])
    a = np.array([fp32.infer(f, force_final=True).steering for f in frames])
    b = np.array([int8.infer(f, force_final=True).steering for f in frames])
    assert np.abs(a - b).mean() < 0.03
    assert np.corrcoef(a, b)[0, 1] > 0.98
    # the tiny model's exits are off (never calibrated in): one int8 graph for all stages
    assert int8.segments == [[0, 1, 2]] and m["segments"] == [[0, 1, 2]]
    with pytest.raises(EdgepilotError, match="already int8"):
        compress_package(str(d / "int8.eppkg"), str(d / "x.eppkg"), logs, key=str(priv), trusted=[str(pub)])


@pytest.mark.parametrize("float_logits", [False, True])
def test_int8_state_round_trips_exactly(trained, float_logits):
    _, logs, _, _ = trained
    torch.manual_seed(0)
    net = build_net(ArchSpec("early-exit")).eval()
    frames, _ = load_frames(logs[:1])
    x = to_tensor(frames[:32])
    stages = quantize_stages(net, [x], float_logits=float_logits)
    state = int8_state(stages)
    # float logits: each head's last linear keeps float weights; all-int8: packed int8 ones
    float_fc2 = [k for k in state if k.endswith("head.fc2.weight")]
    packed_fc2 = [k for k in state if k.endswith("head.fc2._packed_params._packed_params")]
    assert (len(float_fc2), len(packed_fc2)) == ((3, 0) if float_logits else (0, 3))
    loaded = load_int8(net, state, float_logits=float_logits)
    x = quantized_input(x)  # int8 stage 0 takes the quantised pixels
    with torch.no_grad():
        for a, b in zip(stages, loaded, strict=True):
            fa, oa = a(x)
            fb, ob = b(x)
            assert torch.equal(oa, ob) and torch.equal(fa.int_repr(), fb.int_repr())
            assert fa.q_scale() == fb.q_scale()
            x = fa


def test_exit_logic_and_split_on_int8_stages(trained):
    _, logs, _, _ = trained
    torch.manual_seed(0)
    net = build_net(ArchSpec("early-exit")).eval()
    frames, _ = load_frames(logs[:1])
    stages = freeze(quantize_stages(net, [to_tensor(frames[:32])]), int8=True)
    manifest = {
        "version": "t",
        "arch": net.arch.to_dict(),
        "quant": "int8",
        "thresholds": {"exits": [0.0, 0.0]},
    }
    ap = Autopilot(manifest, stages)
    d = ap.infer(frames[0])
    assert d.exit == 0 and ap.stage_calls == [1, 0, 0]
    assert not d.features.is_quantized  # what goes over the wire is float
    cont = ap.continue_from(d.features, 0)
    full = ap.infer(frames[0], force_final=True)
    assert cont.exit == 2 and cont.steering == pytest.approx(full.steering, abs=1e-6)
    batch = ap.infer_batch(frames[:8], force_final=True)
    assert [b.exit for b in batch] == [2] * 8


def test_calibration_needs_frames():
    net = build_net(ArchSpec("early-exit"))
    with pytest.raises(EdgepilotError, match="needs frames"):
        quantize_stages(net, [])


def test_compress_cli_needs_calib(tmp_path):
    from edgepilot.cli import main

    assert main(["compress", str(Path(tmp_path) / "a.eppkg"), "--out", str(tmp_path / "b.eppkg")]) == 1
