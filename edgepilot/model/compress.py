"""``compress``: an fp32 package -> a signed int8 package, checked against its parent.

The quantisation itself lives in ``edgepilot.model.quantize`` (shared with the runtime,
which loads int8 stages); this module calibrates, converts, compares the int8 answers
with the fp32 parent on held frames and writes the package.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edgepilot import EdgepilotError
from edgepilot.model.preprocess import InputSpec
from edgepilot.model.quantize import BACKEND, int8_state, quantize_stages, script_bytes

if TYPE_CHECKING:  # torch only when a package is compressed (the car path has none)
    from pathlib import Path

    import numpy as np
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgepilot.model.nets import StagedNet
    from edgepilot.model.package import Package
    from edgepilot.model.runtime import Autopilot

log = logging.getLogger(__name__)

CALIB_FRAMES = 512
CHECK_FRAMES = 2000
RUNTIMES = ("onnx", "torch")


def compress_package(
    src: str,
    out: str,
    calib_logs: list[str],
    *,
    key: str | None = None,
    trusted: list[str] | None = None,
    float_logits: bool = True,
    runtime: str = "onnx",
) -> dict:
    """An fp32 package -> a signed int8 package whose parent is ``src``, for ``runtime``:
    ``onnx`` (the car's: ONNX Runtime, QDQ graphs per segment, no torch needed to run it)
    or ``torch`` (TorchScript int8 programs per segment, ``torch.ao`` FX).

    Calibration uses up to CALIB_FRAMES frames of ``calib_logs``; steering MAE before and
    after is measured on up to CHECK_FRAMES frames of the same logs (with early exits,
    as the car would run), and the int8 final head's agreement with the fp32 one."""
    from pathlib import Path

    from edgepilot.model.evaluate import load_frames
    from edgepilot.model.nets import segment_net, segments_for
    from edgepilot.model.package import load_private_key

    if runtime not in RUNTIMES:
        raise EdgepilotError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    signing_key = load_private_key(key, create=True)
    pkg, spec, net = _load_fp32(src, trusted)
    frames, labels = load_frames(calib_logs, CHECK_FRAMES)
    n_calib, calib = _calib_batches(frames, spec)
    segs = segments_for((pkg.manifest.get("thresholds") or {}).get("exits"), len(net.stages))
    m = _int8_manifest(pkg.manifest, segs)
    seg_net = segment_net(net, segs)
    if runtime == "onnx":
        int8, blobs = _onnx_int8(seg_net, calib, spec, m, float_logits)
    else:
        int8, blobs = _torch_int8(seg_net, calib, spec, m, float_logits)
    before, after, agree = _check_against_parent(m, pkg, int8, frames, labels)
    m["quantization"]["calib_frames"] = n_calib
    path = _save_int8(out, m, blobs, signing_key, runtime)
    return {
        "package": str(path),
        "version": m["version"],
        "parent": m["parent"],
        "runtime": runtime,
        "size_bytes_before": Path(src).stat().st_size,
        "size_bytes_after": path.stat().st_size,
        "size_ratio": Path(src).stat().st_size / path.stat().st_size,
        "steering_mae_before": before["steering_mae"],
        "steering_mae_after": after["steering_mae"],
        "final_head_mean_abs_diff": agree,
        "exit_rate_before": before["exit_rate"],
        "exit_rate_after": after["exit_rate"],
        "frames": len(frames),
    }


def _load_fp32(src: str, trusted: list[str] | None) -> tuple[Package, InputSpec, StagedNet]:
    """The verified package, its input spec and its net with the package's weights; an
    int8 package is refused (quantising twice would compound the error)."""
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.package import load_package

    pkg = load_package(src, trusted)
    if pkg.manifest.get("quant", "fp32") != "fp32":
        raise EdgepilotError(f"{src}: already {pkg.manifest.get('quant')}; compress its fp32 parent")
    spec = InputSpec.from_dict(pkg.manifest.get("input", {}))
    net = build_net(ArchSpec.from_dict(pkg.manifest["arch"]), spec)
    net.load_state_dict(pkg.state)
    return pkg, spec, net


def _calib_batches(frames: list[np.ndarray], spec: InputSpec) -> tuple[int, list[torch.Tensor]]:
    """Up to CALIB_FRAMES frames, evenly spaced over ``frames`` (every session, not the
    first one's), as input batches of 64; and how many frames that is."""
    import numpy as np

    from edgepilot.model.preprocess import to_tensor

    pick = np.linspace(0, len(frames) - 1, min(CALIB_FRAMES, len(frames))).astype(int)
    calib = [to_tensor([frames[i] for i in pick[j : j + 64]], spec) for j in range(0, len(pick), 64)]
    return len(pick), calib


def _int8_manifest(parent: dict, segs: list[list[int]]) -> dict:
    """The parent's manifest as an int8 child's: a new version, the parent's as ``parent``,
    and the segments the int8 graphs are made per (an exit never taken has none)."""
    import time

    m = dict(parent)
    m.update(
        parent=parent.get("version"),
        version=f"{parent.get('version', 'model')}-int8-{time.strftime('%Y%m%d-%H%M%S')}",
        created=time.time(),
        quant="int8",
        segments=segs,
    )
    return m


def _check_against_parent(
    m: dict, pkg: Package, int8: Autopilot, frames: list[np.ndarray], labels: np.ndarray
) -> tuple[dict, dict, float]:
    """The fp32 parent's and the int8 model's evaluations on the held frames (early exits
    taken as on the car), and the mean absolute steering difference of their final heads
    on the first 512 frames (how far quantisation moved the full network's answer).
    Recorded as ``int8_check`` in ``m``'s metrics, beside the parent's own."""
    import numpy as np

    from edgepilot.model.evaluate import evaluate
    from edgepilot.model.runtime import Autopilot

    fp32 = Autopilot.from_state(pkg.manifest, pkg.state)
    before, after = evaluate(fp32, frames, labels), evaluate(int8, frames, labels)
    final_fp = np.array([d.steering for d in fp32.infer_batch(frames[:512], force_final=True)])
    final_q = np.array([d.steering for d in int8.infer_batch(frames[:512], force_final=True)])
    agree = float(np.abs(final_fp - final_q).mean())
    m["metrics"] = {
        **(pkg.manifest.get("metrics") or {}),
        "int8_check": {
            "steering_mae": after["steering_mae"],
            "fp32_steering_mae": before["steering_mae"],
            "final_head_mean_abs_diff": agree,
            "frames": len(frames),
        },
    }
    return before, after, agree


def _save_int8(out: str, m: dict, blobs: dict, signing_key: Ed25519PrivateKey, runtime: str) -> Path:
    """Sign and write the int8 package: ONNX graphs, or TorchScript stages (which hold the
    int8 weights: no need to ship them twice) else the int8 state."""
    from edgepilot.model.package import save_package

    if runtime == "onnx":
        return save_package(out, m, None, signing_key, onnx=blobs["onnx"])
    scripts = blobs.get("scripts")
    return save_package(out, m, {} if scripts else blobs["state"], signing_key, scripts)


def _torch_int8(
    seg_net: StagedNet, calib: list[torch.Tensor], spec: InputSpec, m: dict, float_logits: bool
) -> tuple[Autopilot, dict]:
    """torch.ao FX static int8 per segment, frozen to TorchScript (``runtime: torch``)."""
    from edgepilot.model.runtime import Autopilot

    stages = quantize_stages(seg_net, calib, spec, float_logits=float_logits)
    state = int8_state(stages)
    m.update(
        runtime="torch",
        quantization={
            "method": "torch.ao FX static int8, per segment",
            "backend": BACKEND,
            "float_logits": float_logits,
        },
    )
    int8 = Autopilot.from_state(m, state)
    return int8, {"state": state, "scripts": script_bytes(int8.segs.stages)}


def _onnx_int8(
    seg_net: StagedNet, calib: list[torch.Tensor], spec: InputSpec, m: dict, float_logits: bool
) -> tuple[Autopilot, dict]:
    """ONNX Runtime QDQ static int8 per segment (``runtime: onnx``, the car's)."""
    import onnxruntime

    from edgepilot.model.onnx_export import OPSET, export_segments, float_check, quantize_segments
    from edgepilot.model.onnx_runtime import OnnxSegments
    from edgepilot.model.runtime import Autopilot

    stages = list(seg_net.eval().stages)
    models = export_segments(stages, [3, spec.height, spec.width])  # type: ignore[arg-type]
    err = float_check(stages, models, calib[0][:8])
    if err > 1e-3:  # a wrong export must never be quantised and shipped
        raise EdgepilotError(f"ONNX export differs from the torch net by {err:.3g}: not written")
    graphs = quantize_segments(models, [b.numpy() for b in calib], float_logits=float_logits)
    m.update(
        runtime="onnx",
        quantization={
            "method": "onnxruntime quantize_static, QDQ, per segment",
            "weights": "int8, per channel, symmetric",
            "activations": "uint8, per tensor, min/max of the calibration frames",
            "opset": OPSET,
            "onnxruntime": onnxruntime.__version__,
            "float_logits": float_logits,
            "export_max_abs_diff": err,
        },
    )
    return Autopilot(m, OnnxSegments(graphs), None, m["segments"]), {"onnx": graphs}
