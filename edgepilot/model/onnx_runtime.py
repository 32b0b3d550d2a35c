"""The car's runtime: an ONNX package's segments on ONNX Runtime, no torch.

Each segment is its own int8 (QDQ) graph with two outputs, ``features`` (float32, the
split point's output) and ``exit`` (the exit's bins + throttle, float32). Segment 0 takes
the preprocessed pixels as uint8 (``preprocess.preprocess_u8``: its first
DequantizeLinear has the fixed scale 1/127.5 and zero point 128, so no float image is ever
made on the car); later segments take the float features of the one before, so what
split mode sends (``Decision.features``) is what a segment takes.

Sessions run one thread each by default (at batch 1 these graphs are too small for a
thread pool to pay, and the car's other parts need the other cores) with every graph
optimisation on (QDQ pairs fused into QLinearConv and friends).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepilot import EdgepilotError

INPUT, FEATURES, EXIT = "input", "features", "exit"


def ort_module() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise EdgepilotError(
            "this package runs on ONNX Runtime, which this install lacks: pip install onnxruntime "
            "(it comes with every edgepilot extra: car, train, edge, cloud)"
        ) from None
    return onnxruntime


def session_options(threads: int | None) -> Any:
    ort = ort_module()
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    return so


class OnnxSegments:
    """ONNX Runtime sessions, one per segment (``Segments`` of ``runtime``)."""

    runtime = "onnx"
    int8 = True  # segment 0 takes uint8 pixels

    def __init__(self, graphs: list[bytes], *, threads: int | None = 1, path: Path | None = None) -> None:
        ort = ort_module()
        if not graphs:
            raise EdgepilotError(f"{path}: an ONNX package without graphs")
        so = session_options(threads)
        self.sessions = []
        for k, g in enumerate(graphs):
            try:
                sess = ort.InferenceSession(g, so, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... types
                msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                raise EdgepilotError(f"{path}: ONNX segment {k} does not load ({msg})") from None
            names = [o.name for o in sess.get_outputs()]
            if names != [FEATURES, EXIT] or [i.name for i in sess.get_inputs()] != [INPUT]:
                raise EdgepilotError(
                    f"{path}: ONNX segment {k} has inputs/outputs other than {INPUT} -> {FEATURES}, {EXIT}"
                )
            self.sessions.append(sess)
        self.count = len(self.sessions)

    def inputs(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.uint8:
            raise EdgepilotError(f"ONNX segment 0 takes uint8 pixels, got {batch.dtype}")
        return np.ascontiguousarray(batch)

    def run(self, j: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, out = self.sessions[j].run(None, {INPUT: x})
        return f, out

    def features_in(self, j: int, features: Any) -> np.ndarray:
        f = features.numpy() if hasattr(features, "numpy") else features
        return np.ascontiguousarray(f, dtype=np.float32)

    def rows(self, x: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return x[keep]  # fancy indexing copies: rows outlive the batch
