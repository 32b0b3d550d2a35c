"""Split-mode payloads: one frame's intermediate features, 8-bit and compressed.

The body of an inference request with ``kind: "features"`` (``edgepilot.schema.wire``);
its header's ``meta`` says how it is packed (``FeatureMeta``). 8 bits with one scale per
tensor, then zlib: post-ReLU feature maps are >= 0 and mostly zeros, so ``u8`` keeps them
to within half a step and zlib takes the zeros (docs/benchmarks.md, "Split mode").
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

from edgepilot.schema.errors import WireError

MAX_FEATURE_ELEMS = 1 << 18  # 256 Ki values: a stage-0 tensor of the car's net is 3.6 K
F32_TINY = 1.1754943508222875e-38  # numpy.finfo(numpy.float32).tiny: the smallest normal
MAX_FEATURE_SCALE = 3.4e38 / 255  # 255 steps of it still fit float32 (max 3.4028e38) after rounding
FEATURE_DTYPES = ("u8", "i8")
FEATURE_CODECS = ("zlib", "none")


@dataclass(slots=True)
class FeatureMeta:
    """How a ``features`` body is packed (the request header's ``meta``).

    ``stage``: the car stage whose output this is (the edge continues after it);
    ``shape``: C, H, W of one frame's tensor; ``dtype``: ``u8`` (values ``q * scale``,
    for post-ReLU features, which are >= 0) or ``i8`` (signed, symmetric); ``codec``:
    ``zlib`` or ``none``. One scale per tensor: 8 bits keep the car's features to within
    half a step (``scale / 2``), which the edge tail is trained to tolerate."""

    stage: int
    shape: tuple[int, int, int]
    scale: float
    dtype: str = "u8"
    codec: str = "zlib"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shape": list(self.shape),
            "scale": self.scale,
            "dtype": self.dtype,
            "codec": self.codec,
        }

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> FeatureMeta:
        stage = meta.get("stage")
        if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage < 64:
            raise WireError(f"features meta needs an integer stage in [0, 64), got {stage!r}")
        shape = meta.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        ):
            raise WireError(f"features meta needs shape [C, H, W] of positive integers, got {shape!r}")
        if math.prod(shape) > MAX_FEATURE_ELEMS:
            raise WireError(f"features of shape {shape} exceed {MAX_FEATURE_ELEMS} values")
        scale = meta.get("scale")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not (math.isfinite(scale) and 0 < scale <= MAX_FEATURE_SCALE)
        ):
            raise WireError(f"features meta needs a scale in (0, {MAX_FEATURE_SCALE:.3g}], got {scale!r}")
        dtype, codec = meta.get("dtype", "u8"), meta.get("codec", "zlib")
        if dtype not in FEATURE_DTYPES:
            raise WireError(f"features dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        if codec not in FEATURE_CODECS:
            raise WireError(f"features codec must be one of {FEATURE_CODECS}, got {codec!r}")
        return cls(stage, (shape[0], shape[1], shape[2]), float(scale), dtype, codec)


def pack_features(x: Any, stage: int, *, level: int = 1) -> tuple[bytes, FeatureMeta]:
    """One frame's float features (C, H, W, or 1 x C x H x W) -> (body, meta).

    zlib level 1: post-ReLU maps are mostly zeros, so the fast level already takes most
    of the gain (docs/benchmarks.md, Split mode) at a fraction of level 6's time."""
    import numpy as np

    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise WireError(f"features must be C x H x W, got shape {a.shape}")
    lo, hi = float(a.min()), float(a.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise WireError("features must be finite (got NaN or infinity)")
    # the step never goes below float32's smallest normal: 1/step of a subnormal range
    # overflows float32 (inf, then NaN, then garbage bytes); found by the hypothesis test
    if lo >= 0.0:
        scale = max(hi / 255.0, F32_TINY) if hi > 0 else 1.0
        q = np.rint(a * (1.0 / scale)).astype(np.uint8)
        dtype = "u8"
    else:
        scale = max(max(hi, -lo) / 127.0, F32_TINY)
        q = np.clip(np.rint(a * (1.0 / scale)), -127, 127).astype(np.int8)
        dtype = "i8"
    raw = q.tobytes()
    body = zlib.compress(raw, level) if level > 0 else raw
    meta = FeatureMeta(
        stage, (a.shape[0], a.shape[1], a.shape[2]), scale, dtype, "zlib" if level > 0 else "none"
    )
    return body, meta


def unpack_features(body: bytes, meta: FeatureMeta) -> Any:
    """The edge side: body -> float32 (C, H, W); WireError on anything that does not fit
    (never inflates more than the shape allows: a zlib bomb stops at the limit)."""
    import numpy as np

    n = math.prod(meta.shape)
    if meta.codec == "zlib":
        d = zlib.decompressobj()
        try:
            raw = d.decompress(body, n + 1)
        except zlib.error as e:
            raise WireError(f"features body is not zlib data: {e}") from None
        if not d.eof and len(raw) <= n:
            raise WireError("features body is a truncated zlib stream")
    else:
        raw = body
    if len(raw) != n:
        raise WireError(f"features body holds {len(raw)} values, shape {list(meta.shape)} needs {n}")
    q = np.frombuffer(raw, np.uint8 if meta.dtype == "u8" else np.int8)
    return (q.astype(np.float32) * np.float32(meta.scale)).reshape(meta.shape)
