"""Preprocessing, defined once: every model, trainer and runtime calls ``preprocess``.

A camera frame (BGR uint8, HxWx3, any size; 160x120 by default) becomes a float32
3xHxW tensor scaled to about [-1, 1]: the top of the frame (sky, horizon: no steering
information, lots of lighting noise) is cropped, the rest resized to the model's input
size and, for a YUV model, converted to YUV. Two specs ship:

- ``CAR_SPEC``, the car's early-exit net (``spec_for("early-exit")``): the crop of a
  160x120 frame at its own size, 160x84, in YUV. No resize: resizing to PilotNet's
  66x200 widened the frame (no new information), dropped a fifth of its rows, and on the
  car's install without OpenCV cost ~0.4 ms a frame, more than the early exits saved.
  Trained on the same logs, the 160x84 net was more accurate on unseen tracks and sent
  more frames through exit 1 (two seeds each; BGR at 160x84 was worse than YUV:
  docs/benchmarks.md#model);
- ``DEFAULT_SPEC``, PilotNet's 66x200 YUV: the baseline and the edge model.

The spec is stored in every model package's manifest, so a package trained with another
spec (every package from before ``CAR_SPEC``) still preprocesses as it was trained.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.imaging import resize_planar, yuv_matrix

if TYPE_CHECKING:  # torch is imported where a torch tensor is made: a car install has none
    import torch


@dataclass(frozen=True)
class InputSpec:
    """What a model expects. ``crop_top`` is the fraction of rows dropped from the top."""

    height: int = 66
    width: int = 200
    crop_top: float = 0.3
    colour: str = "yuv"

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise EdgepilotError(f"input colour must be one of {', '.join(COLOURS)}, got {self.colour!r}")
        if self.height < 2 or self.width < 2 or not 0.0 <= self.crop_top < 1.0:
            raise EdgepilotError(f"input {self.width}x{self.height}, crop_top {self.crop_top}: not an image size")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(**{k: d[k] for k in ("height", "width", "crop_top", "colour") if k in d})


COLOURS = ("yuv", "bgr")
DEFAULT_SPEC = InputSpec()  # PilotNet's (the baseline, the edge model)
CAR_SPEC = InputSpec(height=84, width=160, crop_top=0.3, colour="yuv")  # a 160x120 frame's crop, not resized


def spec_for(arch: str) -> InputSpec:
    """A new model's input: the car's net takes the camera's pixels, the others PilotNet's."""
    return CAR_SPEC if arch == "early-exit" else DEFAULT_SPEC

# torch 2.13 warns once that quantised tensor creation is deprecated; docs/model.md says
# what replaces it. The warning says nothing a user of edgepilot can act on.
warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)


U8_SCALE = 1.0 / 127.5
U8_ZERO = 128
"""An int8 model takes the resized uint8 pixels as a quantised tensor with this scale and
zero point: ``(u8 - 128) / 127.5``, within half a grey level of ``preprocess``'s
``u8 / 127.5 - 1``, without converting 40k pixels to float and back."""


def preprocess_u8(frame_bgr: np.ndarray, spec: InputSpec = DEFAULT_SPEC) -> np.ndarray:
    """BGR uint8 HxWx3 -> uint8 3xHxW (cropped, resized, colour-converted; not normalised).

    Raises EdgepilotError on a frame that is not an HxWx3 uint8 image, because a
    wrong-shaped frame reaching the network would give a confident nonsense answer.
    """
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        shape = getattr(frame_bgr, "shape", None)
        raise EdgepilotError(f"preprocess: expected a BGR HxWx3 frame, got shape {shape}")
    if frame_bgr.dtype != np.uint8:
        raise EdgepilotError(f"preprocess: expected uint8 pixels, got {frame_bgr.dtype}")
    h = frame_bgr.shape[0]
    top = int(round(h * spec.crop_top))
    if h - top < 2:
        raise EdgepilotError(f"preprocess: frame of height {h} is too small")
    return resize_planar(frame_bgr[top:], spec.width, spec.height, spec.colour == "yuv")


def preprocess(frame_bgr: np.ndarray, spec: InputSpec = DEFAULT_SPEC) -> np.ndarray:
    """BGR uint8 HxWx3 -> float32 3xHxW in [-1, 1]: the model's input."""
    out = preprocess_u8(frame_bgr, spec).astype(np.float32)
    out *= U8_SCALE
    out -= 1.0
    return out


def to_tensor(frames: list[np.ndarray], spec: InputSpec = DEFAULT_SPEC) -> torch.Tensor:
    """A batch of BGR frames as the model's float input tensor (N x 3 x H x W)."""
    import torch

    return torch.from_numpy(np.stack([preprocess(f, spec) for f in frames]))


def quantized_input(x: torch.Tensor) -> torch.Tensor:
    """The int8 models' input: uint8 pixels (from ``preprocess_u8``) or float inputs
    (from ``preprocess``) as a quint8 tensor with the fixed scale and zero point."""
    import torch

    if x.dtype != torch.uint8:
        x = ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return torch._make_per_tensor_quantized_tensor(x, U8_SCALE, U8_ZERO)


def check_adaptable(src: InputSpec, dst: InputSpec) -> None:
    """EdgepilotError unless ``adapt_input`` can make ``dst``'s input from ``src``'s."""
    if src != dst and (src.crop_top != dst.crop_top or (src.colour, dst.colour) == ("yuv", "bgr")):
        raise EdgepilotError(f"a model taking {dst} cannot be fed from {src} (another crop, or YUV to BGR)")


def adapt_input(x: torch.Tensor, src: InputSpec, dst: InputSpec) -> torch.Tensor:
    """A batch preprocessed for ``src`` as ``dst``'s model takes it, approximately (within a
    few grey levels of ``preprocess`` with ``dst``: bilinear resampling instead of OpenCV's
    fixed point, no rounding). For a teacher whose input differs from its student's (the
    edge model, 66x200 YUV, teaching the car's net, 160x84 BGR): it sees the student's
    augmented frames."""
    import torch
    import torch.nn.functional as F

    if src == dst:
        return x
    check_adaptable(src, dst)
    u8 = (x + 1.0) * 127.5
    if (src.height, src.width) != (dst.height, dst.width):
        size = (dst.height, dst.width)
        u8 = F.interpolate(u8, size=size, mode="bilinear", align_corners=False, antialias=True)
    if src.colour != dst.colour:  # BGR -> YUV
        m, off = (torch.from_numpy(a) for a in yuv_matrix())
        u8 = (torch.einsum("oc,nchw->nohw", m, u8) + off[:, None, None]).clamp(0.0, 255.0)
    return u8 * U8_SCALE - 1.0
