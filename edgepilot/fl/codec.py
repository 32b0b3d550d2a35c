"""Update compression: what a car sends instead of its frames.

An update is the difference between the car's locally trained weights and the global
weights it started from, one array per tensor of the ``weights.Template``. Modes:

``none``       float32, every value (4 bytes a value)
``int8``       per tensor: a float32 scale (max |x| / 127) and one int8 per value
``topk``       per tensor: its size and the ``ratio`` largest-magnitude values, float32,
               with their indices
``topk-int8``  top-k values quantised to int8 with one scale per tensor

Indices take 2 bytes in tensors of at most 65536 values, else 4 (the receiver knows the
shapes, so the width needs no flag); a tensor sent whole (``k == size``: every tensor of
at most ``DENSE_MAX`` values) has none. Top-k can give each tensor its own share
(``CodecConfig.ratios``): the wire form carries each tensor's count anyway. Error
feedback (``Encoder``): what compression dropped or rounded away this round is added to
the next round's update, so nothing a car learned is lost for good, only delayed (Seide
et al. 2014; Stich et al. 2018).

The wire form is one byte string: ``EPU1``, the mode (u8), the tensor count (u32), then
each tensor as above, little endian. ``decode`` accepts nothing else: a wrong length, an
index out of range or repeated, a count or shape that does not match the template is an
``UpdateError`` naming what is wrong.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from edgepilot import EdgepilotError

MAGIC = b"EPU1"
MODES = ("none", "int8", "topk", "topk-int8")
DENSE_MAX = 256  # top-k sends tensors this small whole (biases, batch-norm statistics): little
# to save there, and a sparse batch-norm variance can end up negative


class UpdateError(EdgepilotError):
    """An update that cannot be used (malformed, wrong shapes, absurd values)."""


@dataclass
class CodecConfig:
    mode: str = "topk-int8"
    ratio: float = 0.05  # top-k: the share of each tensor's values sent
    # top-k: a share per tensor instead (one per tensor of the update, in order); empty: ``ratio``
    ratios: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EdgepilotError(f"unknown update compression {self.mode!r}; one of {', '.join(MODES)}")
        for r in (self.ratio, *self.ratios):
            if not 0.0 < r <= 1.0:
                raise EdgepilotError(f"top-k ratio must be in (0, 1], got {r}")

    def of(self, i: int) -> CodecConfig:
        """The settings for tensor ``i`` alone."""
        return CodecConfig(self.mode, self.ratios[i]) if self.ratios else self


def _index_dtype(n: int) -> np.dtype:
    return np.dtype("<u2") if n <= 65536 else np.dtype("<u4")


def _int8(x: np.ndarray) -> tuple[float, np.ndarray]:
    peak = float(np.abs(x).max()) if x.size else 0.0
    scale = peak / 127.0 if peak > 0 else 0.0
    q = np.zeros(x.shape, np.int8) if scale == 0 else np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    return scale, q


def _pack_tensor(x: np.ndarray, cfg: CodecConfig) -> tuple[bytes, np.ndarray]:
    """(bytes, what the receiver will reconstruct) for one flat float32 tensor."""
    n = x.size
    if cfg.mode == "none":
        return x.astype("<f4").tobytes(), x.copy()
    if cfg.mode == "int8":
        scale, q = _int8(x)
        return struct.pack("<f", scale) + q.tobytes(), q.astype(np.float32) * np.float32(scale)
    k = n if n <= DENSE_MAX else min(n, max(1, math.ceil(cfg.ratio * n)))
    idx = np.sort(np.argpartition(np.abs(x), n - k)[n - k :]) if k < n else np.arange(n)
    vals = x[idx]
    out = np.zeros(n, np.float32)
    head = struct.pack("<II", n, k) + (idx.astype(_index_dtype(n)).tobytes() if k < n else b"")
    if cfg.mode == "topk":
        out[idx] = vals
        return head + vals.astype("<f4").tobytes(), out
    scale, q = _int8(vals)
    out[idx] = q.astype(np.float32) * np.float32(scale)
    return head + struct.pack("<f", scale) + q.tobytes(), out


@dataclass
class Encoder:
    """A car's side: compresses its updates, carrying what was lost into the next round."""

    cfg: CodecConfig = field(default_factory=CodecConfig)
    residual: list[np.ndarray] | None = None

    def encode(self, update: list[np.ndarray]) -> bytes:
        if self.residual is None or [r.shape for r in self.residual] != [u.shape for u in update]:
            self.residual = [np.zeros(u.shape, np.float32) for u in update]
        if self.cfg.ratios and len(self.cfg.ratios) != len(update):
            raise EdgepilotError(f"{len(self.cfg.ratios)} top-k ratios for an update of {len(update)} tensors")
        parts = [MAGIC, struct.pack("<BI", MODES.index(self.cfg.mode), len(update))]
        for i, u in enumerate(update):
            acc = (np.asarray(u, np.float32) + self.residual[i]).ravel()
            blob, sent = _pack_tensor(acc, self.cfg.of(i))
            parts.append(blob)
            self.residual[i] = (acc - sent).reshape(u.shape)
        return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise UpdateError(
                f"update is truncated: {what} needs {n} bytes at offset {self.pos} of {len(self.data)}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def array(self, dtype: str | np.dtype, count: int, what: str) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(dt.itemsize * count, what), dt).copy()


def decode(data: bytes, shapes: list[tuple[int, ...]]) -> tuple[str, list[np.ndarray]]:
    """(mode, arrays) of an encoded update, every array of its template shape."""
    r = _Reader(bytes(data))
    if bytes(r.take(4, "magic")) != MAGIC:
        raise UpdateError("not an edgepilot update (bad magic)")
    mode_i, count = struct.unpack("<BI", r.take(5, "header"))
    if mode_i >= len(MODES):
        raise UpdateError(f"unknown compression mode {mode_i}")
    if count != len(shapes):
        raise UpdateError(f"update has {count} tensors, the model {len(shapes)}")
    mode = MODES[mode_i]
    out = []
    for t, shape in enumerate(shapes):
        n = int(np.prod(shape))
        flat = _unpack_tensor(r, mode, n, f"tensor {t}")
        out.append(flat.reshape(shape))
    if r.pos != len(r.data):
        raise UpdateError(f"update has {len(r.data) - r.pos} bytes beyond its last tensor (wrong shapes?)")
    return mode, out


def _unpack_tensor(r: _Reader, mode: str, n: int, what: str) -> np.ndarray:
    if mode == "none":
        return r.array("<f4", n, what).astype(np.float32)
    if mode == "int8":
        (scale,) = struct.unpack("<f", r.take(4, what + " scale"))
        return r.array(np.int8, n, what).astype(np.float32) * np.float32(scale)
    size, k = struct.unpack("<II", r.take(8, what + " size and count"))
    if size != n:
        raise UpdateError(f"{what}: {size} values, the model's tensor has {n} (wrong shape)")
    if not 1 <= k <= n:
        raise UpdateError(f"{what}: {k} values sent for a tensor of {n}")
    idx = np.arange(n) if k == n else r.array(_index_dtype(n), k, what + " indices").astype(np.int64)
    if idx[-1] >= n or (k > 1 and np.any(np.diff(idx) <= 0)):
        raise UpdateError(f"{what}: indices out of range or not strictly increasing")
    if mode == "topk":
        vals = r.array("<f4", k, what).astype(np.float32)
    else:
        (scale,) = struct.unpack("<f", r.take(4, what + " scale"))
        vals = r.array(np.int8, k, what).astype(np.float32) * np.float32(scale)
    out = np.zeros(n, np.float32)
    out[idx] = vals
    return out
