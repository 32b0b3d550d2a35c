"""What preprocessing a frame costs on the car's install (numpy) and with OpenCV, side by side.

Alternating blocks of 50 frames, in one process: the numpy path ``preprocess_u8`` takes
without OpenCV (``imaging.resize_planar``'s block-matrix path), the numpy path before it
(``resize_area``'s gathers, then ``bgr_to_yuv``; its lookup tables have since given way to
the arithmetic ``resize_planar`` uses, so this row is now faster than when
docs/benchmarks.md's figures were taken), and OpenCV; every frame's bytes are checked
equal across the three::

    python scripts/preprocess_speed.py datasets/recordings/test/*

docs/benchmarks.md#model has the figures.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from edgepilot import imaging
from edgepilot.model.evaluate import load_frames
from edgepilot.model.preprocess import DEFAULT_SPEC, preprocess_u8


def before(frame: np.ndarray) -> np.ndarray:
    """The numpy path of the previous round (what preprocess_u8 did without OpenCV)."""
    top = int(round(frame.shape[0] * DEFAULT_SPEC.crop_top))
    img = imaging.resize_area(frame[top:], DEFAULT_SPEC.width, DEFAULT_SPEC.height)
    return np.ascontiguousarray(imaging.bgr_to_yuv(img).transpose(2, 0, 1))


def main(logs: list[str], block: int = 50) -> None:
    frames, _ = load_frames(logs, 2000)
    cv2 = imaging._cv2
    if cv2 is None:
        raise SystemExit("needs OpenCV installed (the reference and the third column)")
    paths = {"numpy (resize_planar)": (None, preprocess_u8), "numpy before": (None, before), "opencv": (cv2, preprocess_u8)}
    ms: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(0, len(frames), block):
        outs = {}
        for name, (backend, fn) in paths.items():
            imaging._cv2 = backend
            chunk = frames[i : i + block]
            t0 = time.perf_counter()
            outs[name] = [fn(f) for f in chunk]
            ms[name].append((time.perf_counter() - t0) * 1e3 / len(chunk))
        ref = outs["opencv"]
        assert all(np.array_equal(a, b) for k in outs for a, b in zip(outs[k], ref, strict=True)), "bytes differ"
    imaging._cv2 = cv2
    for name, v in ms.items():
        print(f"{name:22s} {np.mean(v):.3f} ms a frame (median block {np.median(v):.3f})")
    print(f"frames {len(frames)}, every frame the same bytes on all three paths")


if __name__ == "__main__":
    main(sys.argv[1:])
