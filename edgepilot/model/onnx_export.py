"""An early-exit net's segments as ONNX graphs, then int8 (QDQ, static, calibrated).

Each inference segment (``nets.segments_for``: the stage bodies up to an exit that is on,
then that exit's head) becomes one graph ``input -> (features, exit)``:

- the graph is written here, node by node, from the trained weights: batch norms folded
  into their convolutions (numpy), ``AdaptiveAvgPool2d`` as the ``AveragePool`` it equals
  when its windows are uniform (the default heads), else as two constant pooling
  matrices (exact for any grid). So export rests on neither ``torch.onnx`` nor
  ``torch.ao.quantization``/``torch.jit`` (deprecated in torch 2.13): torch only holds the
  weights;
- ONNX Runtime's ``quantize_static`` then makes it int8 in QDQ form: weights per channel,
  activations per tensor from calibration frames (min/max), each segment calibrated on
  what it will see (segment 0: the frames; segment j: the fp32 features of segment j-1);
- the input of segment 0 is pinned to the fixed scale 1/127.5 and zero point 128 and its
  QuantizeLinear removed: the graph takes ``preprocess_u8``'s uint8 pixels directly.

``float_logits`` keeps each exit's last Gemm (hidden -> bins + throttle) in float: int8
rounding of the bin logits moves the expected steering (docs/benchmarks.md#model).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgepilot import EdgepilotError
from edgepilot.model.nets import Head, MLPHead, Stage
from edgepilot.model.onnx_runtime import EXIT, FEATURES, INPUT
from edgepilot.model.preprocess import U8_SCALE, U8_ZERO

OPSET = 17


class GraphBuilder:
    """Nodes and initialisers of one graph, with generated tensor names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, a: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), n))
        return n

    def op(self, op: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out


def _leaves(m: nn.Module) -> Iterator[nn.Module]:
    if isinstance(m, nn.Sequential):
        for c in m:
            yield from _leaves(c)
    else:
        yield m


def _conv(g: GraphBuilder, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, shape: list[int]) -> str:
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy() if conv.bias is not None else np.zeros(w.shape[0])
    if bn is not None:
        assert bn.running_var is not None and bn.running_mean is not None
        k = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
        w = w * k[:, None, None, None]
        b = (b - bn.running_mean.double().numpy()) * k + bn.bias.detach().double().numpy()
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding  # type: ignore[misc]
    shape[:] = [w.shape[0], (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1]
    return g.op(
        "Conv",
        [x, g.const("w", w), g.const("b", b)],
        kernel_shape=[kh, kw],
        strides=[sh, sw],
        pads=[ph, pw, ph, pw],
        group=conv.groups,
    )


def _body(g: GraphBuilder, x: str, body: nn.Module, shape: list[int]) -> str:
    mods = list(_leaves(body))
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            bn = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d) else None
            x = _conv(g, x, m, bn, shape)  # type: ignore[arg-type]
            i += 2 if bn is not None else 1
        elif isinstance(m, nn.ReLU):
            x, i = g.op("Relu", [x]), i + 1
        else:
            raise EdgepilotError(f"ONNX export: no rule for {type(m).__name__} in a stage body")
    return x


def _windows(n: int, m: int) -> list[tuple[int, int]]:
    """``AdaptiveAvgPool``'s windows along one axis of size n pooled to m."""
    return [(math.floor(i * n / m), math.ceil((i + 1) * n / m)) for i in range(m)]


def _uniform(w: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(kernel, stride) when the windows are one kernel at one stride, else None."""
    k = w[0][1] - w[0][0]
    s = w[1][0] - w[0][0] if len(w) > 1 else 1
    ok = all(b - a == k and a == i * s for i, (a, b) in enumerate(w))
    return (k, max(s, 1)) if ok else None


def _pool(g: GraphBuilder, x: str, out_hw: tuple[int, int], shape: list[int]) -> str:
    """Exactly ``AdaptiveAvgPool2d(out_hw)`` on (N, C, H, W) of ``shape``."""
    (h, w), (oh, ow) = shape[1:], out_hw
    if (oh, ow) == (h, w):
        return x
    wr, wc = _windows(h, oh), _windows(w, ow)
    ur, uc = _uniform(wr), _uniform(wc)
    shape[1:] = [oh, ow]
    if ur and uc:
        return g.op("AveragePool", [x], kernel_shape=[ur[0], uc[0]], strides=[ur[1], uc[1]])
    pr = np.zeros((oh, h))
    for i, (a, b) in enumerate(wr):
        pr[i, a:b] = 1.0 / (b - a)
    pc = np.zeros((w, ow))
    for j, (a, b) in enumerate(wc):
        pc[a:b, j] = 1.0 / (b - a)
    y = g.op("MatMul", [x, g.const("poolc", pc)])  # (N, C, H, ow)
    return g.op("MatMul", [g.const("poolr", pr), y])  # (N, C, oh, ow)


def _gemm(g: GraphBuilder, x: str, lin: nn.Linear, out: str | None = None) -> str:
    w = lin.weight.detach().numpy()
    b = lin.bias.detach().numpy() if lin.bias is not None else np.zeros(w.shape[0], np.float32)
    return g.op("Gemm", [x, g.const("fcw", w), g.const("fcb", b)], out, transB=1)


def _head(g: GraphBuilder, x: str, head: nn.Module, shape: list[int]) -> str:
    if isinstance(head, Head):
        pool = head.pool.output_size
        out_hw = (pool, pool) if isinstance(pool, int) else tuple(pool)
        x = g.op("Flatten", [_pool(g, x, out_hw, shape)], axis=1)  # type: ignore[arg-type]
        x = g.op("Relu", [_gemm(g, x, head.fc1)])
        return _gemm(g, x, head.fc2, EXIT)
    if isinstance(head, MLPHead):
        x = g.op("Flatten", [x], axis=1)
        mods = list(head.fc)
        for i, m in enumerate(mods):
            if isinstance(m, nn.Linear):
                x = _gemm(g, x, m, EXIT if i == len(mods) - 1 else None)
            elif isinstance(m, nn.ReLU):
                x = g.op("Relu", [x])
        return x
    raise EdgepilotError(f"ONNX export: no rule for a {type(head).__name__} head")


def export_segment(stage: Stage, in_shape: list[int]) -> tuple[onnx.ModelProto, list[int]]:
    """One fp32 graph ``input (N x C x H x W float) -> features, exit`` of an inference
    segment (a ``Stage``: body, then its head). Returns it and the features' shape."""
    g = GraphBuilder()
    shape = list(in_shape)
    feats = _body(g, INPUT, stage.body, shape)
    if not g.nodes or g.nodes[-1].output[0] != feats:
        raise EdgepilotError("ONNX export: a segment body without operations")
    g.nodes[-1].output[0] = FEATURES  # the split point is a graph output of its own
    feat_shape = list(shape)
    _head(g, FEATURES, stage.head, shape)
    out_n = (
        stage.head.fc2.out_features if isinstance(stage.head, Head) else list(stage.head.fc)[-1].out_features
    )
    graph = helper.make_graph(
        g.nodes,
        "segment",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *in_shape])],
        [
            helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["N", *feat_shape]),
            helper.make_tensor_value_info(EXIT, TensorProto.FLOAT, ["N", out_n]),
        ],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgepilot"
    )
    model.ir_version = min(model.ir_version, 9)  # readable by every onnxruntime >= 1.16
    onnx.checker.check_model(model)
    return model, feat_shape


def export_segments(stages: list[Stage], in_shape: list[int]) -> list[onnx.ModelProto]:
    """Every segment's fp32 graph (eval mode, batch norms read from running stats)."""
    out, shape = [], list(in_shape)
    for s in stages:
        s.eval()
        model, shape = export_segment(s, shape)
        out.append(model)
    return out


def _last_gemms(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "Gemm" and n.output[0] == EXIT]


class _Reader:
    """``CalibrationDataReader`` over batches of one segment's inputs."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._it, None)
        return None if b is None else {INPUT: b}

    def rewind(self) -> None:  # quantize_static calls it on some versions
        pass


def quantize_segments(
    models: list[onnx.ModelProto], calib: list[np.ndarray], *, float_logits: bool = True
) -> list[bytes]:
    """int8 QDQ graphs (bytes) of the fp32 ``models``; ``calib``: batches of float
    preprocessed frames (``preprocess``). Segment 0 then takes uint8 pixels."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgepilot.model.onnx_runtime import ort_module, session_options

    if not calib or not sum(len(b) for b in calib):
        raise EdgepilotError("int8 calibration needs frames; none were given")
    ort = ort_module()
    out: list[bytes] = []
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calib]
    with tempfile.TemporaryDirectory() as tmp:
        for k, model in enumerate(models):
            src, dst = Path(tmp) / f"s{k}.onnx", Path(tmp) / f"s{k}-int8.onnx"
            onnx.save(model, src)
            extra: dict[str, object] = {"WeightSymmetric": True}
            if k == 0:
                pin = {"scale": np.array(U8_SCALE, np.float32), "zero_point": np.array(U8_ZERO, np.uint8)}
                extra["TensorQuantOverrides"] = {INPUT: [pin]}
            with _quiet():
                quantize_static(
                    src,
                    dst,
                    _Reader(batches),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=_last_gemms(model) if float_logits else [],
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options=extra,
                )
            q = onnx.load(dst)
            if k == 0:
                q = uint8_input(q)
            out.append(q.SerializeToString())
            if k + 1 < len(models):  # the next segment calibrates on this one's fp32 features
                sess = ort.InferenceSession(model.SerializeToString(), session_options(1))
                batches = [sess.run([FEATURES], {INPUT: b})[0] for b in batches]
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger ("consider pre-processing"):
    the graphs here are already folded and shaped, so it says nothing a user can act on."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def uint8_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the QuantizeLinear of the graph input: the graph then takes its uint8 values
    (pinned to scale 1/127.5, zero point 128, what ``preprocess_u8`` gives)."""
    g = model.graph
    qs = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT]
    if len(qs) != 1:
        raise EdgepilotError("int8 export: expected one QuantizeLinear on the input")
    q = qs[0]
    scale = numpy_helper.to_array(next(t for t in g.initializer if t.name == q.input[1]))
    zero = numpy_helper.to_array(next(t for t in g.initializer if t.name == q.input[2]))
    if not (np.isclose(float(scale), U8_SCALE) and int(zero) == U8_ZERO and zero.dtype == np.uint8):
        raise EdgepilotError(f"int8 export: input scale {scale}, zero point {zero}: not the pinned ones")
    g.node.remove(q)
    for n in g.node:
        for i, name in enumerate(n.input):
            if name == q.output[0]:
                n.input[i] = INPUT
    g.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    onnx.checker.check_model(model)
    return model


def float_check(stages: list[Stage], models: list[onnx.ModelProto], x: torch.Tensor) -> float:
    """Largest difference between the torch segments and their fp32 graphs on ``x``
    (export correctness; a few 1e-6 is float rounding)."""
    from edgepilot.model.onnx_runtime import ort_module, session_options

    ort = ort_module()
    worst = 0.0
    with torch.no_grad():
        for s, m in zip(stages, models, strict=True):
            f_t, o_t = s.eval()(x)
            sess = ort.InferenceSession(m.SerializeToString(), session_options(1))
            f_o, o_o = sess.run(None, {INPUT: x.numpy()})
            worst = max(worst, float(np.abs(f_o - f_t.numpy()).max()), float(np.abs(o_o - o_t.numpy()).max()))
            x = f_t
    return worst
