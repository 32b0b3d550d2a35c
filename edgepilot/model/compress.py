"""int8 post-training quantisation (and the loader of int8 packages).

The path: ``torch.ao.quantization`` FX graph mode, static int8, x86 backend, one graph per
*stage* (so early exit and split offload still work stage by stage), then ``torch.jit``
trace + freeze for inference. Why this one (docs/model.md has the measurements):

- static int8 is what pays: convolutions are >99% of the MACs, and dynamic int8 only
  quantises linears;
- FX graph mode needs no hand-written QuantStub/DeQuantStub and fuses conv+bn+relu itself;
- the package stores only a ``state_dict`` (scales, zero points, int8 weights), never a
  pickled graph: loading re-creates the graph from the architecture with the same
  ``prepare_fx``/``convert_fx`` calls and loads the numbers into it. When
  ``torch.ao.quantization`` is removed, only this file changes (PT2E export or ONNX
  Runtime QDQ consume the same calibration frames); packages keep their format.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from edgepilot import EdgepilotError
from edgepilot.model.nets import StagedNet, fuse_for_inference
from edgepilot.model.preprocess import DEFAULT_SPEC, InputSpec, quantized_input

log = logging.getLogger(__name__)
BACKEND = "x86"


def _fx():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    return get_default_qconfig_mapping, prepare_fx, convert_fx


def stage_inputs(net: StagedNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The input each stage sees for the batch ``x`` (stage 0: x itself)."""
    ins = []
    net.eval()
    with torch.no_grad():
        for s in net.stages:
            ins.append(x)
            x, _ = s(x)
    return ins


def quantize_stages(
    net: StagedNet,
    calib: Iterable[torch.Tensor] | None,
    spec: InputSpec = DEFAULT_SPEC,
    *,
    float_logits: bool = False,
) -> list[nn.Module]:
    """One int8 GraphModule per stage. ``calib``: batches of preprocessed frames
    (observers record activation ranges); None builds an uncalibrated skeleton whose
    numbers a ``load_state_dict`` then fills in (the package loader).

    Stage 0 takes the quint8 input of ``preprocess.quantized_input`` (fixed scale: the
    pixels themselves, no float round trip), and every stage hands its features on as a
    quint8 tensor (no dequantise/quantise at the stage boundary); the exit outputs are
    float. Measured: ~15% less time per stage pair than float boundaries.

    ``float_logits``: each exit head's last linear (hidden -> 21 bin logits + throttle)
    stays float. The steering is the expectation over the bins, so int8 rounding of the
    logits moves it: measured on held-out tracks, steering MAE 0.01299 with int8 logits,
    0.01262 with float ones (fp32 parent 0.01231), for 5 kB more and no measurable time
    (docs/benchmarks.md#model)."""
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

    get_qmap, prepare_fx, convert_fx = _fx()
    torch.backends.quantized.engine = BACKEND
    net = copy.deepcopy(net).eval()
    example = stage_inputs(net, torch.zeros(1, 3, spec.height, spec.width))
    prepared = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s, ex in zip(net.stages, example, strict=True):
            cfg = PrepareCustomConfig().set_input_quantized_indexes([0]).set_output_quantized_indexes([0])
            qmap = get_qmap(BACKEND)
            if float_logits:
                qmap = qmap.set_module_name("head.fc2", None)
            prepared.append(prepare_fx(s, qmap, (ex,), prepare_custom_config=cfg))
        n = 0
        if calib is not None:
            with torch.no_grad():
                for batch in calib:
                    x = quantized_input(batch).dequantize()  # what the int8 stage 0 will see
                    for p in prepared:
                        x, _ = p(x)
                    n += len(batch)
            if n == 0:
                raise EdgepilotError("int8 calibration needs frames; none were given")
        return [convert_fx(p) for p in prepared]


def int8_state(stages: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The package's weights of an int8 model: ``stages.K.<name>`` like a float net's."""
    return {f"stages.{k}.{name}": v for k, s in enumerate(stages) for name, v in s.state_dict().items()}


def load_int8(
    net: StagedNet, state: dict, spec: InputSpec = DEFAULT_SPEC, *, float_logits: bool = False
) -> list[nn.Module]:
    """Rebuild the int8 stages of ``net``'s architecture and load ``state`` into them."""
    stages = quantize_stages(net, None, spec, float_logits=float_logits)
    with warnings.catch_warnings():  # "quantized tensor creation functions are deprecated"
        warnings.simplefilter("ignore")
        return _load_stages(stages, state)


def _load_stages(stages: list[nn.Module], state: dict) -> list[nn.Module]:
    for k, s in enumerate(stages):
        prefix = f"stages.{k}."
        sub = OrderedDict((n[len(prefix) :], v) for n, v in state.items() if n.startswith(prefix))
        # module versions select the state format of quantised modules; the skeleton was
        # just built by this torch, like the package's weights were
        sub._metadata = s.state_dict()._metadata  # type: ignore[attr-defined]
        try:
            s.load_state_dict(sub)
        except (RuntimeError, KeyError) as e:
            raise EdgepilotError(
                f"int8 weights do not fit the architecture: {str(e).splitlines()[0]}"
            ) from None
    return stages


def freeze(stages: list[nn.Module], spec: InputSpec = DEFAULT_SPEC, *, int8: bool = False) -> list[nn.Module]:
    """Trace and freeze each stage for inference (drops Python dispatch overhead:
    measured ~2x on the small int8 stages). Falls back to the eager module if tracing fails."""
    out = []
    x = torch.zeros(1, 3, spec.height, spec.width)
    if int8:
        x = quantized_input(x)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in stages:
            s.eval()
            try:
                f = torch.jit.freeze(torch.jit.trace(s, x, check_trace=False))
            except Exception as e:  # noqa: BLE001 - any tracer limitation: run eagerly
                log.warning("could not freeze a stage (%s); running it eagerly", e)
                f = s
            x, _ = s(x)
            out.append(f)
    return out


def script_bytes(stages: list[nn.Module]) -> list[bytes] | None:
    """The frozen stages as TorchScript archives, so a runtime loads them without tracing
    (None when a stage could not be frozen and runs eagerly)."""
    out = []
    for s in stages:
        if not isinstance(s, torch.jit.ScriptModule):
            return None
        buf = io.BytesIO()
        torch.jit.save(s, buf)
        out.append(buf.getvalue())
    return out


def float_stages(net: StagedNet) -> list[nn.Module]:
    """The fp32 inference stages (batch norms folded)."""
    return list(fuse_for_inference(copy.deepcopy(net)).stages)


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
    import time
    from pathlib import Path

    import numpy as np

    from edgepilot.model.evaluate import evaluate, load_frames
    from edgepilot.model.nets import ArchSpec, build_net, segment_net, segments_for
    from edgepilot.model.package import load_package, load_private_key, save_package
    from edgepilot.model.preprocess import to_tensor
    from edgepilot.model.runtime import Autopilot

    if runtime not in RUNTIMES:
        raise EdgepilotError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    signing_key = load_private_key(key, create=True)
    pkg = load_package(src, trusted)
    if pkg.manifest.get("quant", "fp32") != "fp32":
        raise EdgepilotError(f"{src}: already {pkg.manifest.get('quant')}; compress its fp32 parent")
    spec = InputSpec.from_dict(pkg.manifest.get("input", {}))
    net = build_net(ArchSpec.from_dict(pkg.manifest["arch"]), spec)
    net.load_state_dict(pkg.state)
    frames, labels = load_frames(calib_logs, CHECK_FRAMES)
    pick = np.linspace(0, len(frames) - 1, min(CALIB_FRAMES, len(frames))).astype(int)
    calib = [to_tensor([frames[i] for i in pick[j : j + 64]], spec) for j in range(0, len(pick), 64)]
    segs = segments_for((pkg.manifest.get("thresholds") or {}).get("exits"), len(net.stages))
    m = dict(pkg.manifest)
    m.update(
        parent=pkg.manifest.get("version"),
        version=f"{pkg.manifest.get('version', 'model')}-int8-{time.strftime('%Y%m%d-%H%M%S')}",
        created=time.time(),
        quant="int8",
        segments=segs,  # the int8 graphs are per segment (an exit that is never taken has none)
    )
    seg_net = segment_net(net, segs)
    if runtime == "onnx":
        int8, blobs = _onnx_int8(seg_net, calib, spec, m, float_logits)
    else:
        int8, blobs = _torch_int8(seg_net, calib, spec, m, float_logits)
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
    m["quantization"]["calib_frames"] = len(pick)
    if runtime == "onnx":
        path = save_package(out, m, None, signing_key, onnx=blobs["onnx"])
    else:
        # the TorchScript stages hold the int8 weights: no need to ship them twice
        scripts = blobs.get("scripts")
        path = save_package(out, m, {} if scripts else blobs["state"], signing_key, scripts)
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


def _torch_int8(
    seg_net: StagedNet, calib: list[torch.Tensor], spec: InputSpec, m: dict, float_logits: bool
) -> tuple[object, dict]:
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
) -> tuple[object, dict]:
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
