"""A model package's network as a flat list of arrays, and back.

Both sides order the arrays by the network's ``state_dict`` keys and keep only floating
point tensors (weights, biases, batch-norm statistics): integer buffers (batch norm's
``num_batches_tracked``) are counters, not something to average.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepilot import EdgepilotError
from edgepilot.model.nets import ArchSpec, StagedNet, build_net
from edgepilot.model.package import load_package
from edgepilot.model.preprocess import InputSpec


@dataclass
class Template:
    """What an update must look like: the arrays' keys and shapes for one architecture."""

    arch: ArchSpec
    spec: InputSpec
    keys: list[str]
    shapes: list[tuple[int, ...]]

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))


def template_of(net: StagedNet, spec: InputSpec) -> Template:
    state = net.state_dict()
    keys = [k for k, v in state.items() if v.is_floating_point()]
    return Template(net.arch, spec, keys, [tuple(state[k].shape) for k in keys])


def load_net(
    path: str | Path, trusted: list[str] | None = None
) -> tuple[StagedNet, Template, dict[str, Any]]:
    """An fp32 package as a trainable network, its template and its manifest."""
    pkg = load_package(path, trusted)
    quant = pkg.manifest.get("quant", "fp32")
    if quant != "fp32":
        raise EdgepilotError(f"{path}: a {quant} package cannot be fine-tuned; start from its fp32 parent")
    spec = InputSpec.from_dict(pkg.manifest.get("input", {}))
    net = build_net(ArchSpec.from_dict(pkg.manifest["arch"]), spec)
    net.load_state_dict(pkg.state)
    return net, template_of(net, spec), pkg.manifest


def get_arrays(net: StagedNet, tpl: Template) -> list[np.ndarray]:
    state = net.state_dict()
    return [state[k].detach().cpu().numpy().astype(np.float32, copy=True) for k in tpl.keys]


def set_arrays(net: StagedNet, tpl: Template, arrays: list[np.ndarray]) -> None:
    if len(arrays) != len(tpl.keys):
        raise EdgepilotError(f"expected {len(tpl.keys)} arrays, got {len(arrays)}")
    state = net.state_dict()
    for k, shape, a in zip(tpl.keys, tpl.shapes, arrays, strict=True):
        if tuple(a.shape) != shape:
            raise EdgepilotError(f"{k}: expected shape {shape}, got {tuple(a.shape)}")
        state[k] = torch.from_numpy(np.asarray(a, dtype=np.float32).copy())
    net.load_state_dict(state)


def sanitize(tpl: Template, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Averaged (and compressed) statistics can leave a batch-norm variance at or below zero,
    which turns inference into NaN: clamp them to a small positive floor."""
    return [
        np.maximum(a, np.float32(1e-5)) if k.endswith("running_var") else a
        for k, a in zip(tpl.keys, arrays, strict=True)
    ]


def save_federated(
    net: StagedNet,
    spec: InputSpec,
    out: str | Path,
    calib_logs: list[str],
    *,
    key: str | None,
    parent: str | None,
    training: dict[str, Any],
    ok_tol: float | None = None,
    path_logs: list[str] | None = None,
) -> dict[str, Any]:
    """The federated model as a signed fp32 package, its exits calibrated on ``calib_logs``
    (data the server holds: the cars' frames never left them), like ``edgepilot train``'s;
    ``ok_tol``: the offload tolerance (``CalibrationTarget.ok_tol``; None: its default).
    ``path_logs``: other frames to build the threshold path on, as train builds it on its
    training frames, so that every block of ``calib_logs`` tests it; a log among
    ``calib_logs`` is left out (a path built on the frames that test it proves nothing).
    None, or nothing left: half of the ``calib_logs`` blocks build it."""
    from edgepilot.model.calibrate import CalibrationTarget
    from edgepilot.model.data import load_samples
    from edgepilot.model.package import load_private_key
    from edgepilot.model.train import save_calibrated

    path_logs = [p for p in path_logs or [] if p not in calib_logs]
    samples = load_samples(calib_logs).samples
    path_samples = load_samples(path_logs).samples if path_logs else None
    path, manifest, cal = save_calibrated(
        net,
        spec,
        samples,
        out,
        load_private_key(key, create=True),
        parent=parent,
        metrics={"calib_frames": len(samples)},
        training={
            **training,
            "federated": True,
            "calib_logs": [str(p) for p in calib_logs],
            "path_logs": [str(p) for p in path_logs],
            "at": time.time(),
        },
        target=None if ok_tol is None else CalibrationTarget(ok_tol=ok_tol),
        train_samples=path_samples,
    )
    return {
        "package": str(path),
        "version": manifest["version"],
        "val_steering_mae": cal["val_steering_mae_final"],
    }
