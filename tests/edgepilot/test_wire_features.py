"""Split-mode feature payloads: 8-bit packing round trip, and every bad body is a WireError."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgepilot.schema import wire

shapes = st.tuples(st.integers(1, 16), st.integers(1, 9), st.integers(1, 25))


@given(
    data=st.data(),
    shape=shapes,
    signed=st.booleans(),
    level=st.sampled_from([0, 1, 6]),
)
def test_features_round_trip_within_half_a_step(data, shape, signed, level):
    lo = -50.0 if signed else 0.0
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(lo, 50.0, width=32)))
    body, meta = wire.pack_features(x, 2, level=level)
    meta2 = wire.FeatureMeta.from_dict(meta.to_dict())  # through the JSON header's dict
    assert meta2 == meta
    y = wire.unpack_features(body, meta2)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.abs(y - x).max() <= meta.scale / 2 + 1e-5 * max(1.0, float(np.abs(x).max()))
    assert meta.dtype == ("i8" if x.min() < 0 else "u8")


@pytest.mark.parametrize("signed", [False, True])
def test_subnormal_features_round_trip_without_overflow(signed):
    """A range of subnormal floats once gave a step whose inverse overflowed float32: NaN
    bytes on the wire (hypothesis found it in CI as an overflow warning)."""
    x = np.zeros((2, 3, 4), np.float32)
    x[0, 0, 0] = 1e-45  # the smallest float32 subnormal
    if signed:
        x[1, 2, 3] = -3e-44
    with np.errstate(all="raise"):
        body, meta = wire.pack_features(x, 1)
    y = wire.unpack_features(body, wire.FeatureMeta.from_dict(meta.to_dict()))
    assert np.isfinite(y).all() and np.abs(y - x).max() <= meta.scale / 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_a_wire_error(bad):
    x = np.ones((2, 3, 4), np.float32)
    x[1, 1, 1] = bad
    with pytest.raises(wire.WireError, match="finite"):
        wire.pack_features(x, 1)


def test_features_request_round_trip_and_size():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(1, 64, 3, 7)), 0).astype(np.float32)  # post-ReLU, batch 1
    body, meta = wire.pack_features(x, 2)
    assert len(body) < 64 * 3 * 7  # 8 bits per value, then zlib on the zeros
    req = wire.InferRequest("car-1", 5, body, kind="features", model="m", meta=meta.to_dict())
    got = wire.decode_request(wire.encode_request(req))
    assert got.kind == "features" and wire.FeatureMeta.from_dict(got.meta) == meta


@pytest.mark.parametrize(
    "meta, why",
    [
        ({"shape": [1, 2, 3], "scale": 1.0}, "stage"),
        ({"stage": 0, "shape": [1, 2], "scale": 1.0}, "shape"),
        ({"stage": 0, "shape": [1, -2, 3], "scale": 1.0}, "shape"),
        ({"stage": 0, "shape": [1024, 1024, 1024], "scale": 1.0}, "exceed"),
        ({"stage": 0, "shape": [1, 2, 3], "scale": 0}, "scale"),
        ({"stage": 0, "shape": [1, 2, 3], "scale": float("nan")}, "scale"),
        ({"stage": 0, "shape": [1, 2, 3], "scale": 1e300}, "scale"),  # unpacks to inf
        ({"stage": 0, "shape": [1, 2, 3], "scale": 1.0, "dtype": "f16"}, "dtype"),
        ({"stage": 0, "shape": [1, 2, 3], "scale": 1.0, "codec": "lz4"}, "codec"),
    ],
)
def test_bad_feature_meta_is_refused_in_the_request(meta, why):
    payload = wire.encode_request(wire.InferRequest("c", 1, b"x", kind="features", meta=meta))
    with pytest.raises(wire.WireError, match=why):
        wire.decode_request(payload)


def test_bad_feature_bodies_are_wire_errors_never_crashes():
    meta = wire.FeatureMeta(0, (4, 8, 8), 0.1)
    with pytest.raises(wire.WireError, match="not zlib"):
        wire.unpack_features(b"not zlib at all", meta)
    with pytest.raises(wire.WireError, match="truncated"):
        wire.unpack_features(zlib.compress(bytes(256))[:-6], meta)
    with pytest.raises(wire.WireError, match="holds 100 values"):
        wire.unpack_features(zlib.compress(bytes(100)), meta)
    # a zlib bomb (1 GB of zeros would compress to ~1 MB) stops inflating at the shape's size
    bomb = zlib.compress(bytes(50_000_000), 9)
    with pytest.raises(wire.WireError, match="values"):
        wire.unpack_features(bomb, meta)
    raw = wire.FeatureMeta(0, (4, 8, 8), 0.1, codec="none")
    with pytest.raises(wire.WireError, match="holds 3 values"):
        wire.unpack_features(b"abc", raw)
