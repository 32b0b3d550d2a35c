"""``edgepilot bench record``: how fast the driving-log recorder is, and what it costs the loop.

Three questions, answered side by side in one run so machine load hits every number alike:

1. Throughput: records/s of ``LogWriter`` on 160x120 noise frames (noise is the worst
   case for JPEG and what DonkeyCar's published numbers used), against the *floor* --
   bare ``imaging.encode_jpeg`` of the same frames on one thread, i.e. what recording would cost
   if writing files and record lines were free. Floor and writer alternate for a few
   rounds and the medians are compared (``ratio_to_floor`` = records_per_s / floor_per_s).
2. Loop cost: a 60 Hz loop does a small per-frame job and, in alternate half-second
   blocks, calls ``LogWriter.write()``; the p99 of the time ``write()`` takes on the
   loop's thread is what recording adds to the loop (the encoding happens on the
   writer's threads). The loop's own p99 in the blocks with and without recording is
   reported too: it also catches the writer threads stealing CPU (or the GIL) from the
   loop. Alternating blocks keep both sides under the same machine load.
3. Dropped frames at 60 Hz (``write()`` never blocks; a full queue drops a frame).

DonkeyCar 5.1's ``Tub.write_record`` is measured against the same frames by
``scripts/bench_donkey_record.py`` (it needs DonkeyCar, which is not a dependency).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.imaging import encode_jpeg, resize_area
from edgepilot.schema.log import Record, SessionMeta

WIDTH, HEIGHT = 160, 120
JPEG_QUALITY = 90  # LogWriter's default
LOOP_HZ = 60.0
DISTINCT_FRAMES = 64  # cycled; every one is fresh noise, so each costs the same to encode

TARGET_RATIO_TO_FLOOR = 1 / 1.5
TARGET_WRITE_P99_MS = 0.1


def noise_frames(n: int = DISTINCT_FRAMES, seed: int = 0) -> list[np.ndarray]:
    """``n`` BGR uint8 frames of uniform noise, 160x120."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(n)]


def floor_rate(frames: Sequence[np.ndarray], count: int, quality: int = JPEG_QUALITY) -> float:
    """JPEG encodes per second on the calling thread: what a recorder cannot beat for free."""
    k = len(frames)
    t0 = time.perf_counter()
    for i in range(count):
        encode_jpeg(frames[i % k], quality)
    return count / (time.perf_counter() - t0)


def _record(i: int) -> Record:
    return Record(i=i, t=i / LOOP_HZ, steering=((i % 41) - 20) / 20, throttle=0.3)


def writer_rate(
    frames: Sequence[np.ndarray], count: int, path: Path, quality: int = JPEG_QUALITY, workers: int = 2
) -> tuple[float, int]:
    """Records per second through ``LogWriter`` (blocking puts, so nothing is dropped),
    timed until ``close()`` returns: every image and line on disk and fsynced.

    Returns (records/s, records the writer reports written)."""
    meta = SessionMeta(session=path.name, created=time.time(), source="bench")
    k = len(frames)
    recs = [_record(i) for i in range(count)]  # built before the clock: not the writer's cost
    t0 = time.perf_counter()
    w = LogWriter(path, meta, jpeg_quality=quality, block=True, workers=workers)
    for i in range(count):
        w.write(recs[i], frames[i % k])
    w.close()
    return count / (time.perf_counter() - t0), w.written


def _loop_job(frame: np.ndarray) -> float:
    """A stand-in for one control step's own work (pre-processing a frame)."""
    return float(resize_area(frame, WIDTH // 2, HEIGHT // 2).mean())


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def loop_cost(
    frames: Sequence[np.ndarray], ticks: int, path: Path | None, hz: float = LOOP_HZ, block: int = 30
) -> dict:
    """Run a ``hz`` loop for ``ticks`` ticks. With ``path``, blocks of ``block`` ticks
    alternate between recording every tick there and not recording, so both halves see
    the same machine load (a shared machine's load drifts within seconds).

    Returns the iteration times (job + write) without and with recording, the write()
    times, and the writer's dropped/written counts."""
    k = len(frames)
    w = None
    if path is not None:
        meta = SessionMeta(session=path.name, created=time.time(), source="bench")
        w = LogWriter(path, meta)
    period = 1.0 / hz
    bare: list[float] = []
    recorded: list[float] = []
    writes: list[float] = []
    n = 0
    next_tick = time.perf_counter()
    for t in range(ticks):
        now = time.perf_counter()
        if next_tick > now:
            time.sleep(next_tick - now)
        next_tick += period
        frame = frames[t % k]
        recording = w is not None and (t // block) % 2 == 1
        rec = _record(n)
        t0 = time.perf_counter()
        _loop_job(frame)
        t1 = time.perf_counter()
        if recording:
            w.write(rec, frame)
            n += 1
        t2 = time.perf_counter()
        if recording:
            recorded.append((t2 - t0) * 1e3)
            writes.append((t2 - t1) * 1e3)
        else:
            bare.append((t2 - t0) * 1e3)
    out: dict[str, Any] = {"iter_ms": bare}
    if w is not None:
        w.close()
        out.update(iter_rec_ms=recorded, write_ms=writes, dropped=w.dropped, written=w.written, queued=n)
    return out


def measure(
    count: int,
    out: Path,
    *,
    rounds: int = 5,
    loop_ticks: int = 600,
    quality: int = JPEG_QUALITY,
    keep: bool = False,
) -> dict[str, Any]:
    """The whole benchmark; writes its logs under ``out`` (removed unless ``keep``)."""
    if count < 1 or rounds < 1 or loop_ticks < 1:
        raise EdgepilotError("bench record: --frames must be at least 1")
    frames = noise_frames()
    floor_runs, writer_runs = _throughput(frames, count, out, rounds, quality)
    jpeg_bytes = [len(encode_jpeg(f, quality)) for f in frames]

    rec = loop_cost(frames, 2 * loop_ticks, out / "loop", block=min(30, loop_ticks))
    if not keep:  # only now: on ext4, creating files right after deleting many is slow
        for r in range(rounds):
            shutil.rmtree(out / f"throughput-{r}")
        shutil.rmtree(out / "loop")
    records_per_s = statistics.median(writer_runs)
    floor_per_s = statistics.median(floor_runs)
    ratio = records_per_s / floor_per_s
    return {
        "records_per_s": round(records_per_s, 1),
        "out_fs": filesystem_of(out),
        "floor_per_s": round(floor_per_s, 1),
        "ratio_to_floor": round(ratio, 3),
        "frames": count,
        "rounds": rounds,
        "frame": f"{WIDTH}x{HEIGHT} noise",
        "jpeg_quality": quality,
        "mean_jpeg_bytes": round(float(np.mean(jpeg_bytes))),
        "runs": {
            "records_per_s": [round(x, 1) for x in writer_runs],
            "floor_per_s": [round(x, 1) for x in floor_runs],
        },
        **_loop_figures(rec, loop_ticks),
        "targets_met": {
            "ratio_to_floor>=1/1.5": ratio >= TARGET_RATIO_TO_FLOOR,
            "write_p99<=0.1ms": _pct(rec["write_ms"], 99) <= TARGET_WRITE_P99_MS,
            "dropped==0": rec["dropped"] == 0,
        },
    }


def _throughput(
    frames: Sequence[np.ndarray], count: int, out: Path, rounds: int, quality: int
) -> tuple[list[float], list[float]]:
    """Floor and writer rates, alternating round by round so load changes hit both sides
    alike; the first round's log must read back whole, or the speed means nothing."""
    floor_runs: list[float] = []
    writer_runs: list[float] = []
    for r in range(rounds):
        floor_runs.append(floor_rate(frames, count, quality))
        path = out / f"throughput-{r}"
        rate, written = writer_rate(frames, count, path, quality)
        if written != count:
            raise EdgepilotError(f"bench record: the writer wrote {written} of {count} records")
        if r == 0:
            n = len(LogReader(path).records())
            if n != count:
                raise EdgepilotError(f"bench record: {n} of {count} records read back")
        writer_runs.append(rate)
    return floor_runs, writer_runs


def _loop_figures(rec: dict[str, Any], loop_ticks: int) -> dict[str, Any]:
    """What recording costs the 60 Hz loop (``loop_cost``'s result), as reported."""
    p99_with, p99_without = _pct(rec["iter_rec_ms"], 99), _pct(rec["iter_ms"], 99)
    return {
        "loop_hz": LOOP_HZ,
        "loop_ticks": loop_ticks,
        "write_ms": {
            "p50": round(_pct(rec["write_ms"], 50), 4),
            "p99": round(_pct(rec["write_ms"], 99), 4),
            "max": round(max(rec["write_ms"]), 4),
        },
        "loop_ms": {
            "p99_without_recorder": round(p99_without, 4),
            "p99_with_recorder": round(p99_with, 4),
            "p99_added": round(p99_with - p99_without, 4),
        },
        "dropped": rec["dropped"],
        "loop_written": rec["written"],
        "loop_queued": rec["queued"],
    }


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (``ext4``, ``tmpfs``...), from /proc/mounts.

    Reported with the numbers because file creation dominates the recorder's cost and
    differs a lot between filesystems (see docs/benchmarks.md)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    target = str(path.resolve())
    best, fs = "", "unknown"
    for m in mounts:
        if (
            len(m) >= 3
            and (target == m[1] or target.startswith(m[1].rstrip("/") + "/"))
            and len(m[1]) > len(best)
        ):
            best, fs = m[1], m[2]
    return fs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """CLI handler: ``edgepilot bench record [--frames N] [--out DIR]``."""
    count = int(args.frames)
    ticks = min(count, 600)  # per side: 20 s of 60 Hz at most in all
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise EdgepilotError(f"{out}: not empty; bench record writes fresh logs there")
        return measure(count, out, loop_ticks=ticks, keep=True)
    with tempfile.TemporaryDirectory(prefix="ep-bench-record-") as tmp:
        return measure(count, Path(tmp), loop_ticks=ticks)
