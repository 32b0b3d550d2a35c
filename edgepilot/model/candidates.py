"""Measure the compression candidates side by side (speed per stage, package size).

``python -m edgepilot.model.candidates [--frames N]`` prints one JSON object. Weights are
random (speed and size do not depend on their values; accuracy is measured by
``edgepilot compress`` on real logs). Candidates, each at batch 1 on one thread:

- fp32 eager (batch norms folded), fp32 traced + frozen;
- dynamic int8 (linears only);
- static int8, FX graph mode (quint8 input and stage boundaries), eager GraphModule, and
  traced + frozen (the shipped path);
- static int8 frozen of the early-exit net with half the channels in stages 1-2: what
  structured pruning could buy at most.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import time
import warnings

import torch

from edgepilot.model.nets import ArchSpec, build_net
from edgepilot.model.preprocess import quantized_input, spec_for
from edgepilot.model.quantize import float_stages, freeze, int8_state, quantize_stages

warnings.filterwarnings("ignore")


def interleaved(cands: dict[str, list], n: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, list[float]]:
    """Per-stage ms of every candidate, timed round-robin (one call of each in turn), so
    that load from other processes hits every candidate alike: ratios stay honest."""
    inputs: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for name, stages in cands.items():
            x, xs = torch.rand(1, *shapes[name], generator=torch.Generator().manual_seed(0)) * 2 - 1, []
            if "int8_fx" in name:
                x = quantized_input(x)
            for s in stages:
                xs.append(x)
                x, _ = s(x)
            inputs[name] = xs
        tot = {name: [0.0] * len(st) for name, st in cands.items()}
        for i in range(n + 20):
            for name, stages in cands.items():
                for k, s in enumerate(stages):
                    t = time.perf_counter()
                    s(inputs[name][k])
                    if i >= 20:  # warm-up calls are not counted
                        tot[name][k] += time.perf_counter() - t
    return {name: [round(v / n * 1e3, 4) for v in ts] for name, ts in tot.items()}


def size(state: dict) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return len(buf.getvalue())


def candidates(arch: ArchSpec) -> tuple[dict[str, list], dict[str, int]]:
    torch.manual_seed(0)
    spec = spec_for(arch.name)
    net = build_net(arch, spec).eval()
    calib = [torch.randn(8, 3, spec.height, spec.width) for _ in range(4)]
    q = quantize_stages(net, calib, spec)
    fp = float_stages(net)
    dyn = [
        torch.ao.quantization.quantize_dynamic(copy.deepcopy(s), {torch.nn.Linear}, dtype=torch.qint8)
        for s in fp
    ]
    stages = {
        "fp32_eager": fp,
        "fp32_frozen": freeze(fp, spec),
        "dynamic_int8": dyn,
        "int8_fx_eager": q,
        "int8_fx_frozen": freeze(q, spec, int8=True),
    }
    sizes = {"fp32_weights_bytes": size(net.state_dict()), "int8_weights_bytes": size(int8_state(q))}
    return stages, sizes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=2000)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    w = ArchSpec("early-exit").widths
    archs = {
        "early-exit": ArchSpec("early-exit"),
        "early-exit-pruned-50pct-stages-1-2": ArchSpec("early-exit", widths=w[:2] + [c // 2 for c in w[2:]]),
        "pilotnet": ArchSpec("pilotnet"),
    }
    cands, shapes, out = {}, {}, {"torch": torch.__version__, "frames": a.frames, "ms_per_stage": {}, "bytes": {}}
    for name, arch in archs.items():
        stages, sizes = candidates(arch)
        cands.update({f"{name}/{k}": v for k, v in stages.items()})
        spec = spec_for(arch.name)
        shapes.update({f"{name}/{k}": (3, spec.height, spec.width) for k in stages})
        out["bytes"][name] = sizes
    out["ms_per_stage"] = interleaved(cands, a.frames, shapes)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
