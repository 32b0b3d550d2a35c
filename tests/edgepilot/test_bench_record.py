"""``bench record``: structure and sanity on a few frames (speed targets live in docs/benchmarks.md)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.bench_record import filesystem_of, loop_cost, measure, noise_frames
from edgepilot.drivelog import LogReader


def test_noise_frames_are_distinct_bgr_160x120():
    fs = noise_frames(3)
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in fs)
    assert not np.array_equal(fs[0], fs[1])
    assert 100 < fs[0].mean() < 155  # uniform noise


def test_measure_reports_side_by_side_numbers_and_a_whole_log(tmp_path):
    r = measure(40, tmp_path, rounds=2, loop_ticks=20, keep=True)
    assert r["records_per_s"] > 0 and r["floor_per_s"] > 0
    assert r["ratio_to_floor"] == pytest.approx(r["records_per_s"] / r["floor_per_s"], rel=0.01)
    assert len(r["runs"]["records_per_s"]) == len(r["runs"]["floor_per_s"]) == 2
    assert r["frames"] == 40 and r["jpeg_quality"] == 90
    assert r["mean_jpeg_bytes"] > 10_000  # noise barely compresses: this is the worst case
    w = r["write_ms"]
    assert 0 < w["p50"] <= w["p99"] <= w["max"]
    assert set(r["loop_ms"]) == {"p99_without_recorder", "p99_with_recorder", "p99_added"}
    assert r["dropped"] == 0 and r["loop_written"] == r["loop_queued"] == 20  # 60 Hz is far below its speed
    assert set(r["targets_met"]) == {"ratio_to_floor>=1/1.5", "write_p99<=0.1ms", "dropped==0"}
    # what was timed is a real, complete log: every record, in order, every frame decodes
    for sub, n in (("throughput-0", 40), ("throughput-1", 40), ("loop", 20)):
        reader = LogReader(tmp_path / sub)
        assert [rec.i for rec in reader.records()] == list(range(n))
        assert sum(1 for _ in reader.frames()) == n and reader.skipped == 0


def test_measure_cleans_up_unless_kept(tmp_path):
    measure(10, tmp_path, rounds=1, loop_ticks=5)
    assert list(tmp_path.iterdir()) == []


def test_loop_paces_at_the_requested_rate():
    t0 = time.perf_counter()
    r = loop_cost(noise_frames(2), 13, None, hz=120.0)
    assert time.perf_counter() - t0 >= 12 / 120 * 0.95  # it waits for its ticks, not flat out
    assert len(r["iter_ms"]) == 13 and "write_ms" not in r


def test_bad_frame_count_is_a_clear_error(tmp_path):
    with pytest.raises(EdgepilotError, match="at least 1"):
        measure(0, tmp_path)


def test_filesystem_of_names_a_type(tmp_path):
    assert filesystem_of(tmp_path) not in ("", "unknown")
