#!/usr/bin/env python3
"""edgepilot's LogWriter vs DonkeyCar 5.1's ``Tub.write_record``, side by side, one process.

DonkeyCar is not a dependency of edgepilot. Install it into a throwaway venv without its
heavy dependencies and point this script at that venv's site-packages::

    python3 -m venv /tmp/dkvenv
    /tmp/dkvenv/bin/pip install --no-deps donkeycar==5.1.0
    /tmp/dkvenv/bin/pip install numpy pillow pyfiglet prettytable   # what tub_v2 imports
    .venv/bin/python scripts/bench_donkey_record.py \\
        --donkey-site /tmp/dkvenv/lib/python3.11/site-packages [--dir /dev/shm/bench]

The same 160x120 noise frames go through every writer; the rounds alternate (floor,
edgepilot, edgepilot with one writer thread, edgepilot at DonkeyCar's JPEG quality,
DonkeyCar) so machine load hits them alike, and medians are compared. DonkeyCar saves
with PIL's default JPEG quality (75); edgepilot records at 90 by default, which costs
more, so both are shown. Prints one JSON object (last line) with the ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def donkey_rate(frames: list, count: int, path: Path) -> float:
    """Records/s through DonkeyCar's own Tub, with the inputs a DonkeyCar car records."""
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(
        str(path),
        inputs=["cam/image_array", "user/angle", "user/throttle", "user/mode"],
        types=["image_array", "float", "float", "str"],
    )
    k = len(frames)
    t0 = time.perf_counter()
    for i in range(count):
        tub.write_record(
            {
                "cam/image_array": frames[i % k][:, :, ::-1],  # DonkeyCar frames are RGB
                "user/angle": ((i % 41) - 20) / 20,
                "user/throttle": 0.3,
                "user/mode": "user",
            }
        )
    tub.close()
    rate = count / (time.perf_counter() - t0)
    check = Tub(str(path), read_only=True)
    n = len(check)
    check.close()
    if n != count:
        raise SystemExit(f"DonkeyCar's tub holds {n} of {count} records")
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--donkey-site", help="site-packages of a venv with donkeycar==5.1.0")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    if args.donkey_site:
        sys.path.append(args.donkey_site)  # after ours: edgepilot's numpy/opencv win
    from edgepilot.bench_record import filesystem_of, floor_rate, noise_frames, writer_rate

    try:
        import donkeycar  # noqa: F401  (prints its banner; logs at INFO)
    except ImportError as e:
        raise SystemExit(f"cannot import donkeycar ({e}); see --donkey-site") from None
    logging.getLogger().setLevel(logging.WARNING)
    import donkeycar as dk

    base = Path(args.dir or tempfile.mkdtemp(prefix="ep-bench-donkey-"))
    base.mkdir(parents=True, exist_ok=True)
    frames = noise_frames()
    runs: dict[str, list[float]] = {
        "floor": [],
        "edgepilot_q90": [],
        "edgepilot_q90_1worker": [],
        "edgepilot_q75": [],
        "donkey": [],
    }
    for r in range(args.rounds):
        runs["floor"].append(floor_rate(frames, args.frames, 90))
        runs["edgepilot_q90"].append(writer_rate(frames, args.frames, base / f"ep90-{r}", 90)[0])
        runs["edgepilot_q90_1worker"].append(
            writer_rate(frames, args.frames, base / f"ep90w1-{r}", 90, workers=1)[0]
        )
        runs["edgepilot_q75"].append(writer_rate(frames, args.frames, base / f"ep75-{r}", 75)[0])
        runs["donkey"].append(donkey_rate(frames, args.frames, base / f"tub-{r}"))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in runs.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "donkeycar_version": dk.__version__,
        "frames": args.frames,
        "rounds": args.rounds,
        "out_fs": filesystem_of(base),
        "records_per_s": {k: round(v, 1) for k, v in med.items()},
        "runs": {k: [round(x) for x in v] for k, v in runs.items()},
        "ratio_edgepilot_q90_to_donkey": round(med["edgepilot_q90"] / med["donkey"], 2),
        "ratio_edgepilot_q75_to_donkey": round(med["edgepilot_q75"] / med["donkey"], 2),
        "ratio_edgepilot_q90_to_floor": round(med["edgepilot_q90"] / med["floor"], 3),
        "ratio_2_workers_to_1": round(med["edgepilot_q90"] / med["edgepilot_q90_1worker"], 2),
    }
    if not args.dir:
        shutil.rmtree(base)
    print(
        f"edgepilot {med['edgepilot_q90']:.0f} rec/s (q90), {med['edgepilot_q75']:.0f} (q75); "
        f"DonkeyCar {dk.__version__} {med['donkey']:.0f} rec/s (q75): "
        f"{result['ratio_edgepilot_q90_to_donkey']}x / {result['ratio_edgepilot_q75_to_donkey']}x",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
