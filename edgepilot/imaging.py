"""Image operations on the car's path, with or without OpenCV: JPEG, resize, colour, orientation.

The car's install leaves OpenCV out (it was the largest wheel there, ~87 MB on a Pi:
docs/benchmarks.md#model). JPEG always goes through simplejpeg (libjpeg-turbo, 0.4 MB, the
codec picamera2 itself uses; it decodes exactly as OpenCV did). Resizing and colour
conversion use OpenCV where it is installed (training, the edge, a car with a USB camera:
it is ~10x faster) and numpy where it is not, and the numpy path gives the same bytes:
``bgr_to_yuv`` uses ``cv2.COLOR_BGR2YUV``'s 14-bit fixed-point coefficients, and
``resize_area``'s two-tap case (what ``preprocess`` does: 160x84 -> 200x66) rounds as
OpenCV's vectorised path does. Only a shrink in both directions (a camera delivering
more pixels than asked for) can differ, by one grey level. tests/edgepilot/test_imaging.py
holds the two paths to that. ``EDGEPILOT_OPENCV=0`` makes a machine with OpenCV take the
numpy path (to measure what a car without OpenCV spends per frame).

``resize_planar`` is preprocess's call: resize, colour and the channel-first layout in one,
with the same bytes. Without OpenCV it is the per-frame cost that sets the car's speed-up
over PilotNet (docs/benchmarks.md#model), so it avoids numpy's gathers:
the horizontal taps, periodic in blocks (160 -> 200 is 5 targets from 4 sources), become
one small float32 matrix product; the vertical taps are whole-row copies.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import numpy as np
import simplejpeg


def _load_cv2() -> ModuleType | None:
    if os.environ.get("EDGEPILOT_OPENCV", "1") == "0":
        return None
    try:
        import cv2
    except ImportError:
        return None
    return cv2


_cv2 = _load_cv2()
JPEG_QUALITY = 90

# cv2.COLOR_BGR2YUV's fixed-point coefficients (14 bits): Y from R, G, B; U from B - Y and
# V from R - Y, each rounded (+ 2**13) before the shift, U and V around 128
_YR, _YG, _YB, _U, _V = 4899, 9617, 1868, 8061, 14369
_ROUND, _CHROMA = 1 << 13, (128 << 14) + (1 << 13)
# the same as float32 (every sum below stays under 2**23: exact) for a B, G, R plane stack
_Y_BGR = np.array([[_YB, _YG, _YR]], np.float32)
_UV = np.array([[_U], [_V]], np.float32)
_SHIFT14 = np.float32(2.0**-14)


def backend() -> str:
    """Which library resizes and converts colours here: ``opencv`` or ``numpy``."""
    return "numpy" if _cv2 is None else "opencv"


def encode_jpeg(img_bgr: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """BGR uint8 HxWx3 -> JPEG bytes (4:2:0, accurate DCT: what OpenCV's imencode wrote)."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(img_bgr),
        quality=int(quality),
        colorspace="BGR",
        colorsubsampling="420",
        fastdct=False,
    )


def decode_jpeg(data: bytes | bytearray | memoryview) -> np.ndarray | None:
    """JPEG bytes -> BGR uint8 HxWx3, or None when the bytes are not a JPEG image."""
    try:
        return simplejpeg.decode_jpeg(bytes(data), colorspace="BGR", fastdct=False, fastupsample=False)
    except (ValueError, OSError):
        return None


def yuv_matrix() -> tuple[np.ndarray, np.ndarray]:
    """``cv2.COLOR_BGR2YUV`` as real numbers: (3x3 matrix, rows Y U V, columns B G R;
    offsets), for float work such as a teacher's input made from a BGR batch."""
    y = np.array([_YB, _YG, _YR]) / (1 << 14)
    m = np.stack([y, (np.eye(3)[0] - y) * _U / (1 << 14), (np.eye(3)[2] - y) * _V / (1 << 14)])
    return m.astype(np.float32), np.array([0.0, 128.0, 128.0], np.float32)


def bgr_to_yuv(img_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 HxWx3 -> YUV uint8, bit for bit ``cv2.cvtColor(img, cv2.COLOR_BGR2YUV)``."""
    if _cv2 is not None:
        return _cv2.cvtColor(img_bgr, _cv2.COLOR_BGR2YUV)
    return np.ascontiguousarray(_yuv_planes(img_bgr.transpose(2, 0, 1)).transpose(1, 2, 0))


def _yuv_planes(planes: np.ndarray) -> np.ndarray:
    """OpenCV's fixed-point BGR -> YUV on channel planes (3, H, W) of whole numbers 0..255
    (any dtype, any strides) -> uint8 planes (3, H, W). Each sum of products is a whole
    number below 2**23, so float32 is exact and floor(x * 2**-14) is OpenCV's >> 14: the
    same bytes, in a third of the numpy calls the int32 version needed (at ~13,000 pixels
    each call's overhead is the cost)."""
    bgr = planes.reshape(3, -1).astype(np.float32)
    y = _Y_BGR @ bgr
    y += _ROUND
    y *= _SHIFT14
    np.floor(y, out=y)
    uv = np.empty((2, bgr.shape[1]), np.float32)
    # row by row: numpy's loop over the strided view bgr[::2] took ~20x as long
    np.subtract(bgr[0], y[0], out=uv[0])  # B - Y
    np.subtract(bgr[2], y[0], out=uv[1])  # R - Y
    uv *= _UV
    uv += _CHROMA
    uv *= _SHIFT14
    np.floor(uv, out=uv)
    np.clip(uv, 0, 255, out=uv)  # U cannot leave 0..255, V can
    out = np.empty(bgr.shape, np.uint8)
    out[0] = y[0]
    out[1:] = uv
    return out.reshape(planes.shape)


def resize_planar(img: np.ndarray, width: int, height: int, yuv: bool) -> np.ndarray:
    """uint8 HxWx3 BGR -> uint8 3 x ``height`` x ``width`` (YUV when ``yuv``): bit for bit
    ``cv2.resize(..., INTER_AREA)``, then ``cv2.COLOR_BGR2YUV``, then channels first."""
    h, w, c = img.shape
    fast = _cv2 is None and c == 3 and not (w >= width and h >= height)
    blocks = _blocks(h, w, height, width) if fast else None
    if blocks is None:
        out = resize_area(img, width, height)
        if yuv and _cv2 is not None:
            out = _cv2.cvtColor(out, _cv2.COLOR_BGR2YUV)
        elif yuv:
            return _yuv_planes(out.transpose(2, 0, 1))
        return np.ascontiguousarray(out.transpose(2, 0, 1))
    planes = _two_tap_planar(np.ascontiguousarray(img), blocks)
    if not yuv:
        return planes.astype(np.uint8)
    return _yuv_planes(planes)


@dataclass(frozen=True)
class _Blocks:
    """The two-tap plan as matrices: one block of sources -> one block of targets across."""

    n: int  # blocks across a row
    wx: np.ndarray  # (sources per block * 3, targets per block * 3) float32, OpenCV's >> 4 folded in
    rows: np.ndarray  # per channel plane (stacked), each target row's two source rows: first taps, then second
    wy: np.ndarray  # (3 * 2 * height, width) int32: their weights, whole rows (a broadcast multiply is 2x slower)
    saturate: bool  # rounded weights can sum past 1: clip at 255 as OpenCV's saturate_cast


@lru_cache(maxsize=32)
def _blocks(h: int, w: int, height: int, width: int) -> _Blocks | None:
    """None when the horizontal taps are not the same in every small block (then: ``resize_area``)."""
    p = _plan(h, w, 3, height, width)
    dense = np.zeros((w * 3, width * 3), np.float64)
    cols = np.arange(width * 3)
    dense[p.cols0, cols] += p.wx0
    dense[p.cols1, cols] += p.wx1
    n = math.gcd(w, width)
    if w // n > 16:  # a wide block is a mostly-zero matrix product: slower than the gathers
        return None
    block = dense[: w // n * 3, : width // n * 3]
    if not np.array_equal(np.kron(np.eye(n), block), dense):  # a tap across a block edge
        return None
    rows = np.concatenate([p.rows0, p.rows1])
    rows = (rows + h * np.arange(3)[:, None]).ravel()
    wy = np.tile(np.concatenate([p.wy0, p.wy1]).astype(np.int32), (3, width))
    saturate = bool(dense.sum(axis=0).max() > 2048 or (p.wy0 + p.wy1).max() > 2048)
    # sources * weights < 2**20, and / 16 is a power of two: float32 is exact here
    return _Blocks(n, (block / 16).astype(np.float32), rows, wy, saturate)


def _two_tap_planar(img: np.ndarray, bl: _Blocks) -> np.ndarray:
    """OpenCV's two-tap INTER_AREA as int32 channel planes (3, height, width)."""
    h = img.shape[0]
    hor = np.matmul(img.reshape(h * bl.n, -1).astype(np.float32), bl.wx)
    # truncating a non-negative float is the floor of OpenCV's >> 4; channels become planes
    hor = hor.reshape(h, bl.n, -1, 3).transpose(3, 0, 1, 2).astype(np.int32).reshape(3 * h, -1)
    taps = hor[bl.rows]  # rows of a 2-D stack: a contiguous result (a[:, rows] is not)
    taps *= bl.wy
    taps >>= 16  # OpenCV shifts each tap's product before adding them
    taps = taps.reshape(3, 2, -1, taps.shape[1])
    out = taps[:, 0]
    out += taps[:, 1]
    out += 2
    out >>= 2
    if bl.saturate:
        np.minimum(out, 255, out=out)
    return out


def orient(img: np.ndarray, flip_h: bool, flip_v: bool, rotate: int) -> np.ndarray:
    """Mirror (left-right, top-bottom), then turn ``rotate`` degrees clockwise (0/90/180/270)."""
    if flip_h:
        img = img[:, ::-1]
    if flip_v:
        img = img[::-1]
    if rotate % 360:
        img = np.rot90(img, k=-(rotate // 90))
    return np.ascontiguousarray(img)


def resize_area(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 HxWxC -> ``height`` x ``width`` x C as ``cv2.resize(..., INTER_AREA)``: without
    OpenCV, a box filter when shrinking both ways (within one grey level of OpenCV's), else
    its two taps with its vectorised path's rounding (the same bytes)."""
    h, w, c = img.shape
    if (h, w) == (height, width):
        return img
    if _cv2 is not None:
        return _cv2.resize(img, (width, height), interpolation=_cv2.INTER_AREA)
    if w >= width and h >= height:  # dense weights: an exact average over each target pixel's area
        out = np.tensordot(_weights(h, height, True), img.astype(np.float32), axes=(1, 0))
        out = np.tensordot(_weights(w, width, True), out, axes=(1, 1)).swapaxes(0, 1)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    p = _plan(h, w, c, height, width)
    src = np.ascontiguousarray(img).reshape(h, w * c)  # uint8 taps times int32 weights: int32
    # horizontal pass in 11-bit fixed point, then OpenCV's vertical rounding:
    # ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16), then (+2) >> 2
    hor = np.take(src, p.cols0, axis=1) * p.wx0
    hor += np.take(src, p.cols1, axis=1) * p.wx1
    hor >>= 4
    top = np.take(hor, p.rows0, axis=0) * p.wy0
    top >>= 16
    bottom = np.take(hor, p.rows1, axis=0) * p.wy1
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    return np.clip(top, 0, 255).astype(np.uint8).reshape(height, width, c)


@dataclass(frozen=True)
class _Plan:
    """Where each target pixel's two taps are and their 11-bit weights, for one size pair."""

    rows0: np.ndarray
    rows1: np.ndarray
    wy0: np.ndarray  # (height, 1)
    wy1: np.ndarray
    cols0: np.ndarray  # flat (pixel * channels + channel) indices of a row
    cols1: np.ndarray
    wx0: np.ndarray  # (width * channels,)
    wx1: np.ndarray


@lru_cache(maxsize=32)
def _plan(h: int, w: int, c: int, height: int, width: int) -> _Plan:
    ys0, ys1, by0, by1 = _taps(_weights(h, height, False))
    xs0, xs1, ax0, ax1 = _taps(_weights(w, width, False))
    ch = np.arange(c)
    return _Plan(
        ys0, ys1, by0[:, None], by1[:, None],
        (xs0[:, None] * c + ch).ravel(), (xs1[:, None] * c + ch).ravel(),
        np.repeat(ax0, c), np.repeat(ax1, c),
    )  # fmt: skip


def _taps(wgt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two source indices of each target pixel and their weights as 11-bit integers."""
    first = np.argmax(wgt > 0, axis=1)
    second = np.minimum(first + 1, wgt.shape[1] - 1)
    rows = np.arange(len(wgt))
    w0 = np.rint(wgt[rows, first] * 2048).astype(np.int32)
    w1 = np.where(second != first, np.rint(wgt[rows, second] * 2048), 0).astype(np.int32)
    return first, second, w0, w1


@lru_cache(maxsize=32)
def _weights(src: int, dst: int, shrink: bool) -> np.ndarray:
    """dst x src weights along one axis, as ``cv2.INTER_AREA`` samples."""
    scale = src / dst
    out = np.zeros((dst, src), np.float64)
    for d in range(dst):
        if shrink:  # the target pixel covers [d*scale, (d+1)*scale) of the source
            lo, hi = d * scale, (d + 1) * scale
            for s in range(int(np.floor(lo)), min(int(np.ceil(hi)), src)):
                out[d, s] = (min(hi, s + 1) - max(lo, s)) / scale
            continue
        s = int(np.floor(d * scale))
        f = (d + 1) - (s + 1) / scale
        f = 0.0 if f <= 0 else f - np.floor(f)
        if s >= src - 1:
            s, f = src - 1, 0.0
        out[d, s] += 1.0 - f
        if f:
            out[d, s + 1] += f
    out.setflags(write=False)
    return out
