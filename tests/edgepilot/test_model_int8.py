"""int8 compression for both runtimes (ONNX Runtime, the car's default; torch): the int8
package agrees with its fp32 parent, is much smaller, keeps the exit logic stage by stage,
and loads back to exactly the numbers that were quantised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgepilot import EdgepilotError
from edgepilot.model.compress import compress_package
from edgepilot.model.evaluate import load_frames
from edgepilot.model.nets import ArchSpec, build_net, segment_net, segments_for
from edgepilot.model.onnx_export import export_segments, float_check, quantize_segments
from edgepilot.model.onnx_runtime import OnnxSegments
from edgepilot.model.package import make_keys, read_manifest
from edgepilot.model.preprocess import quantized_input, to_tensor
from edgepilot.model.quantize import freeze, int8_state, load_int8, quantize_stages
from edgepilot.model.runtime import Autopilot
from edgepilot.model.synthetic import write_synthetic_log
from edgepilot.model.torch_runtime import TorchSegments
from edgepilot.model.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    priv, pub = make_keys(d / "keys")
    logs = [str(write_synthetic_log(d / f"s{i}", frames=80, seed=10 + i)) for i in range(4)]
    train(logs, d / "fp32.eppkg", TrainConfig(epochs=5, batch=16), key=str(priv))
    return d, logs, priv, pub


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_int8_agrees_with_fp32_and_is_smaller(trained, runtime):
    d, logs, priv, pub = trained
    out = d / f"int8-{runtime}.eppkg"
    r = compress_package(
        str(d / "fp32.eppkg"), str(out), logs, key=str(priv), trusted=[str(pub)], runtime=runtime
    )
    assert r["runtime"] == runtime
    assert r["size_bytes_after"] * 3.5 <= r["size_bytes_before"]
    assert r["final_head_mean_abs_diff"] < 0.03
    assert r["steering_mae_after"] <= r["steering_mae_before"] + 0.02
    m = read_manifest(out)
    assert m["quant"] == "int8" and m["parent"] == read_manifest(d / "fp32.eppkg")["version"]
    assert m["runtime"] == runtime and (("onnx_sha256" in m) == (runtime == "onnx"))
    fp32 = Autopilot.load(d / "fp32.eppkg", [str(pub)])
    int8 = Autopilot.load(out, [str(pub)])
    assert int8.runtime == runtime
    frames, _ = load_frames(logs[:1])
    a = np.array([fp32.infer(f, force_final=True).steering for f in frames])
    b = np.array([int8.infer(f, force_final=True).steering for f in frames])
    assert np.abs(a - b).mean() < 0.03
    assert np.corrcoef(a, b)[0, 1] > 0.98
    # one int8 graph per segment: the stages of exits calibration switched off are merged
    assert int8.segments == m["segments"] == segments_for(m["thresholds"]["exits"], 3)
    with pytest.raises(EdgepilotError, match="already int8"):
        compress_package(str(out), str(d / "x.eppkg"), logs, key=str(priv), trusted=[str(pub)])


@pytest.mark.parametrize("head0", [[], [5, 13, 64]])
@pytest.mark.parametrize("segs", [[[0], [1], [2]], [[0, 1], [2]], [[0, 1, 2]]])
def test_onnx_export_is_the_torch_net(head0, segs):
    """The hand-written fp32 graphs compute what the torch segments compute (batch norms
    folded, adaptive pooling as AveragePool or as pooling matrices for uneven windows)."""
    torch.manual_seed(1)
    net = build_net(ArchSpec("early-exit", head0=head0)).eval()
    for m in net.modules():  # trained-looking batch-norm statistics, not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    stages = list(segment_net(net, segs).stages)
    models = export_segments(stages, [3, 66, 200])
    assert float_check(stages, models, torch.rand(3, 3, 66, 200) * 2 - 1) < 1e-4


def test_onnx_segments_keep_exit_logic_and_split(trained):
    """int8 ONNX segments: segment 0 takes uint8 pixels, an exit answers from segment 0,
    split mode continues from the float features exactly as the full run does."""
    _, logs, _, _ = trained
    torch.manual_seed(0)
    net = build_net(ArchSpec("early-exit")).eval()
    frames, _ = load_frames(logs[:1])
    stages = list(net.stages)
    graphs = quantize_segments(export_segments(stages, [3, 66, 200]), [to_tensor(frames[:32]).numpy()])
    manifest = {
        "version": "t",
        "arch": net.arch.to_dict(),
        "quant": "int8",
        "thresholds": {"exits": [0.0, 0.0]},
    }
    ap = Autopilot(manifest, OnnxSegments(graphs), None, [[0], [1], [2]])
    d = ap.infer(frames[0])
    assert d.exit == 0 and ap.stage_calls == [1, 0, 0]
    assert d.features.dtype == np.float32 and d.features.shape == (1, 24, 9, 25)
    cont = ap.continue_from(d.features, 0)
    full = ap.infer(frames[0], force_final=True)
    assert cont.exit == 2 and cont.steering == pytest.approx(full.steering, abs=1e-6)
    batch = ap.infer_batch(frames[:8], force_final=True)
    assert [b.exit for b in batch] == [2] * 8
    assert [b.steering for b in batch] == pytest.approx(
        [ap.infer(f, force_final=True).steering for f in frames[:8]], abs=1e-5
    )
    with pytest.raises(EdgepilotError, match="uint8"):
        OnnxSegments(graphs).inputs(np.zeros((1, 3, 66, 200), np.float32))


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
    ap = Autopilot(manifest, TorchSegments(stages, int8=True), None, [[0], [1], [2]])
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
    with pytest.raises(EdgepilotError, match="needs frames"):
        quantize_segments(export_segments(list(net.eval().stages), [3, 66, 200]), [])


def test_compress_cli_needs_calib(tmp_path):
    from edgepilot.cli import main

    assert main(["compress", str(Path(tmp_path) / "a.eppkg"), "--out", str(tmp_path / "b.eppkg")]) == 1
