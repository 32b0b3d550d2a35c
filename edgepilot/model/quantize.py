"""int8 stages: post-training static quantisation of each stage, freezing, loading.

The machinery under ``compress`` (which builds, checks and signs a package) and under
the runtime (which loads one): kept apart so that neither imports the other.

The path: ``torch.ao.quantization`` FX graph mode, static int8, x86 backend, one graph per
*stage* (so early exit and split offload still work stage by stage), then ``torch.jit``
trace + freeze for inference. Static int8 is what pays (convolutions are >99% of the
MACs; dynamic int8 only quantises linears); FX fuses conv+bn+relu itself; the package
stores only a ``state_dict``, never a pickled graph, so loading re-creates the graph from
the architecture (docs/model.md has the measurements).
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
