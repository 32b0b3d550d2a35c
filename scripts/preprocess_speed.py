"""What preprocessing a frame costs on the car's install (numpy) and with OpenCV, side by side.

Alternating blocks of 50 frames, in one process: the numpy path ``preprocess_u8`` takes
without OpenCV (``imaging.resize_planar``'s block-matrix path, its YUV step in float32)
and OpenCV; every frame's bytes are checked equal across the two::

    python scripts/preprocess_speed.py datasets/recordings/test/*

docs/benchmarks.md#model has the figures (and those of the numpy paths before).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from edgepilot import imaging
from edgepilot.model.evaluate import load_frames
from edgepilot.model.preprocess import preprocess_u8


def main(logs: list[str], block: int = 50) -> None:
    frames, _ = load_frames(logs, 2000)
    cv2 = imaging._cv2
    if cv2 is None:
        raise SystemExit("needs OpenCV installed (the reference and the third column)")
    paths = {"numpy (resize_planar)": (None, preprocess_u8), "opencv": (cv2, preprocess_u8)}
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
    print(f"frames {len(frames)}, every frame the same bytes on both paths")


if __name__ == "__main__":
    main(sys.argv[1:])
