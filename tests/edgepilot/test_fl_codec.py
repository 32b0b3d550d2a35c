"""Federated updates without Flower: the codec (int8, top-k, error feedback), the strict
decoder, the update checks and the weighted mean, and the local step's FedProx term."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.fl.check import Update, UpdateLimits, screen, weighted_mean
from edgepilot.fl.codec import DENSE_MAX, MODES, CodecConfig, Encoder, UpdateError, decode

SHAPES = [(12, 3, 5, 5), (12,), (70000,), (1,)]  # one tensor needs 4-byte indices


def _update(seed: int = 0, scale: float = 0.01) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, s).astype(np.float32) for s in SHAPES]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_round_trips_within_its_precision(mode):
    u = _update()
    blob = Encoder(CodecConfig(mode, 0.1)).encode(u)
    got_mode, arrays = decode(blob, SHAPES)
    assert got_mode == mode and [a.shape for a in arrays] == SHAPES
    flat, sent = np.concatenate([a.ravel() for a in u]), np.concatenate([a.ravel() for a in arrays])
    if mode == "none":
        assert np.array_equal(flat, sent)
    elif mode == "int8":
        assert np.abs(flat - sent).max() <= np.abs(flat).max() / 127  # half a step per tensor, at most
    else:  # top-k: the largest 10% of each tensor, nothing else
        t = arrays[2].ravel()
        kept = np.flatnonzero(t)
        assert len(kept) == 7000
        assert np.abs(u[2].ravel()[kept]).min() >= np.sort(np.abs(u[2].ravel()))[-7000]


def test_sizes_what_a_car_sends():
    u = _update()
    n = sum(a.size for a in u)
    sizes = {m: len(Encoder(CodecConfig(m, 0.05)).encode(u)) for m in MODES}
    assert sizes["none"] == 9 + 4 * n
    assert sizes["int8"] == 9 + n + 4 * len(SHAPES)
    # top-k: per tensor its size and k, then per kept value an index (2 bytes, 4 in the
    # 70000-value tensor) and the value (4 bytes; int8: 1 byte plus one scale per tensor);
    # tensors of at most DENSE_MAX values go whole, without indices
    ks = [math.prod(s) if math.prod(s) <= DENSE_MAX else math.ceil(0.05 * math.prod(s)) for s in SHAPES]
    widths = [0 if math.prod(s) <= DENSE_MAX else 2 if math.prod(s) <= 65536 else 4 for s in SHAPES]
    assert sizes["topk"] == 9 + sum(8 + k * (w + 4) for k, w in zip(ks, widths, strict=True))
    assert sizes["topk-int8"] == 9 + sum(12 + k * (w + 1) for k, w in zip(ks, widths, strict=True))
    assert sizes["topk-int8"] < sizes["int8"] / 3 and sizes["int8"] < sizes["none"] / 3.9


def test_error_feedback_delivers_what_compression_held_back():
    """Over rounds, the sum of what was sent tracks the sum of the true updates: the residual
    is carried, not dropped (without feedback the small values would never arrive)."""
    enc = Encoder(CodecConfig("topk-int8", 0.05))
    true_sum = [np.zeros(s, np.float32) for s in SHAPES]
    sent_sum = [np.zeros(s, np.float32) for s in SHAPES]
    for r in range(40):
        u = _update(seed=r)
        _, got = decode(enc.encode(u), SHAPES)
        for t, s, a, g in zip(true_sum, sent_sum, u, got, strict=True):
            t += a
            s += g
    gap = sum(float(np.abs(t - s).sum()) for t, s in zip(true_sum, sent_sum, strict=True))
    assert enc.residual is not None
    assert gap == pytest.approx(sum(float(np.abs(r).sum()) for r in enc.residual), rel=1e-3)
    no_feedback = [np.zeros(s, np.float32) for s in SHAPES]
    for r in range(40):
        _, got = decode(Encoder(CodecConfig("topk-int8", 0.05)).encode(_update(seed=r)), SHAPES)
        for acc, g in zip(no_feedback, got, strict=True):
            acc += g
    gap_without = sum(float(np.abs(t - s).sum()) for t, s in zip(true_sum, no_feedback, strict=True))
    assert gap < 0.5 * gap_without


def _blob(mode: str = "topk") -> bytes:
    return Encoder(CodecConfig(mode, 0.1)).encode(_update())


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\0", "beyond its last tensor"),
        (lambda b: b[:4] + struct.pack("<BI", 9, 4) + b[9:], "unknown compression mode"),
        (lambda b: b[:4] + struct.pack("<BI", 2, 3) + b[9:], "3 tensors"),
        (lambda b: b[:9] + struct.pack("<II", 900, 0) + b[17:], "0 values sent"),
        (lambda b: b[:9] + struct.pack("<II", 900, 10**6) + b[17:], "values sent"),
        (lambda b: b[:9] + struct.pack("<I", 901) + b[13:], "wrong shape"),
    ],
)
def test_decode_refuses_malformed_updates(damage, says):
    with pytest.raises(UpdateError, match=says):
        decode(damage(_blob()), SHAPES)


def test_decode_refuses_indices_out_of_range_or_repeated():
    u = [np.zeros(s, np.float32) for s in SHAPES]
    u[0].flat[:] = np.arange(900, dtype=np.float32)
    blob = bytes(Encoder(CodecConfig("topk", 0.2)).encode(u))
    off = 9 + 8  # tensor 0's indices: after the header and its size and k (900, 180)
    assert struct.unpack_from("<II", blob, 9) == (900, 180)
    idx = np.frombuffer(blob[off : off + 360], "<u2").copy()
    assert list(idx) == list(range(720, 900))  # the largest fifth, in order
    for bad in (np.array([idx[0], idx[0], *idx[2:]]), np.array([*idx[:-1], 900])):
        b = bytearray(blob)
        b[off : off + 360] = bad.astype("<u2").tobytes()
        with pytest.raises(UpdateError, match="indices"):
            decode(bytes(b), SHAPES)


def test_wrong_shapes_are_refused_whatever_the_mode():
    for mode in MODES:
        blob = Encoder(CodecConfig(mode, 0.1)).encode([np.zeros((5, 5), np.float32), *_update()[1:]])
        with pytest.raises(UpdateError):
            decode(blob, SHAPES)


def _u(car: str, update: list[np.ndarray], samples: int = 10, mode: str = "none") -> Update:
    return Update(car, Encoder(CodecConfig(mode)).encode(update), samples)


def test_screen_refuses_garbage_and_averages_the_rest_by_samples():
    a, b = _update(1), _update(2)
    nan = _update(3)
    nan[2][5] = np.nan
    limits = UpdateLimits(max_norm=50.0, norm_factor=10.0)
    ups = [
        _u("a", a, 10),
        _u("b", b, 30),
        _u("nan", nan),
        _u("huge", [x * 1e6 for x in a]),
        _u("outlier", [x * 15 for x in b]),  # under max_norm, but 15x the round's median
        _u("liar", a, 0),
        Update("junk", b"\x00" * 17, 10),
    ]
    ok = screen(ups, SHAPES, limits)
    assert [u.car for u in ok] == ["a", "b"]
    why = {u.car: u.error for u in ups if u.error}
    assert "non-finite" in why["nan"] and "exceeds the limit" in why["huge"]
    assert "median" in why["outlier"] and "samples" in why["liar"] and "magic" in why["junk"]
    mean = weighted_mean(ok)
    for m, x, y in zip(mean, a, b, strict=True):
        np.testing.assert_allclose(m, 0.25 * x + 0.75 * y, rtol=1e-5, atol=1e-7)


def test_bad_settings_are_clear_errors():
    with pytest.raises(EdgepilotError, match="compression"):
        CodecConfig("zip")
    with pytest.raises(EdgepilotError, match="ratio"):
        CodecConfig("topk", 0.0)
    with pytest.raises(EdgepilotError, match="ratio"):
        CodecConfig("topk", 0.04, (0.04, 1.5))
    with pytest.raises(EdgepilotError, match="2 top-k ratios for an update of 4 tensors"):
        Encoder(CodecConfig("topk-int8", 0.04, (0.04, 0.5))).encode(_update())


@pytest.mark.parametrize("mode", ["topk", "topk-int8"])
def test_each_tensor_can_have_its_own_top_k_share(mode):
    """``ratios``: the 70000-value tensor sends half its values, the 900-value one 4%; what
    one tensor holds back stays in its own residual."""
    u = _update()
    enc = Encoder(CodecConfig(mode, 0.04, (0.04, 0.04, 0.5, 0.04)))
    _, arrays = decode(enc.encode(u), SHAPES)
    assert np.count_nonzero(arrays[0]) == math.ceil(0.04 * 900)
    assert np.count_nonzero(arrays[2]) == 35000
    held = arrays[2] == 0
    assert np.array_equal(enc.residual[2][held], u[2][held])  # what was not sent waits, whole
    same = Encoder(CodecConfig(mode, 0.04)).encode(u)
    assert len(same) < len(Encoder(CodecConfig(mode, 0.04, (0.04, 0.04, 0.5, 0.04))).encode(u))


def test_fedprox_keeps_the_local_model_nearer_the_global_one(sample_logs):
    """The proximal term is real: with a strong mu, a car's step away from the global
    weights is much smaller than plain local training's, on the same frames and seed
    (trainable weights: batch-norm statistics follow the data, not the loss)."""
    import torch

    from edgepilot.fl.local import LocalConfig, car_samples, local_train
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.preprocess import DEFAULT_SPEC

    samples = car_samples(sample_logs[:1])
    norms = {}
    for mu in (0.0, 100.0):
        torch.manual_seed(0)
        net = build_net(ArchSpec("early-exit", [4, 4, 8, 8, 8, 8]), DEFAULT_SPEC)
        start = [p.detach().clone() for p in net.parameters()]
        res = local_train(net, DEFAULT_SPEC, samples, LocalConfig(epochs=3, batch=8, lr=5e-3, mu=mu))
        assert res.samples == len(samples) == 30 and np.isfinite(res.loss)
        norms[mu] = float(
            sum(((p.detach() - s) ** 2).sum() for p, s in zip(net.parameters(), start, strict=True)) ** 0.5
        )
    assert 0 < norms[100.0] < 0.5 * norms[0.0]
