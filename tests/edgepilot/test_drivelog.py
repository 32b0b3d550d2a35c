"""The driving log: round trip, damage tolerance, crash safety, by-session splits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgepilot.drivelog import RECORDS, LogReader, LogWriter, find_logs
from edgepilot.schema.log import Record, RecordError, SessionMeta, decode_line, encode_record


def frame(i: int) -> np.ndarray:
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, : (i * 7) % 160] = (40, 90, 200)
    return img


def write_log(path: Path, n: int = 20) -> None:
    with LogWriter(path, SessionMeta(session="s1", created=1.0, source="sim")) as w:
        for i in range(n):
            rec = Record(
                i=i,
                t=i * 0.05,
                steering=(i % 21 - 10) / 10,
                throttle=0.3,
                mode="user",
                latency_ms={"capture": 0.1},
                exit=i % 3,
            )
            w.write(rec, frame(i))


def test_round_trip(tmp_path):
    write_log(tmp_path / "log", 20)
    r = LogReader(tmp_path / "log")
    recs = r.records()
    assert [x.i for x in recs] == list(range(20))
    assert recs[5].steering == pytest.approx(-0.5)
    assert recs[5].exit == 2 and recs[5].latency_ms == {"capture": 0.1}
    assert r.meta.session == "s1" and r.meta.source == "sim"
    img = r.image(recs[3])
    assert img.shape == (120, 160, 3)
    assert np.abs(img.astype(int) - frame(3).astype(int)).mean() < 3  # JPEG, lossy but close
    assert r.skipped == 0


def test_encode_decode_is_identity():
    rec = Record(
        i=7,
        t=1.5,
        steering=0.25,
        throttle=-0.5,
        mode="local",
        image="images/000007.jpg",
        pilot_steering=0.2,
        exit=1,
        confidence=0.9,
        offloaded=True,
        edge_steering=0.3,
        model_version="v3",
        sim={"cte": 0.01},
    )
    assert decode_line(encode_record(rec)) == rec


@pytest.mark.parametrize(
    "line",
    [
        b"{",
        b"[]",
        b'{"i": -1, "t": 0, "steering": 0, "throttle": 0}',
        b'{"i": 1, "t": 0, "steering": 2, "throttle": 0}',
        b'{"i": 1, "t": 0, "steering": 0}',
        b'{"i": 1, "t": 0, "steering": 0, "throttle": 0, "mode": "warp"}',
        b'{"i": 1, "t": 0, "steering": 0, "throttle": 0, "image": "../../etc/passwd"}',
        b"\xff\xfe",
    ],
)
def test_bad_lines_raise_record_error(line):
    with pytest.raises(RecordError):
        decode_line(line)


def test_damage_is_skipped_with_warning(tmp_path, caplog):
    write_log(tmp_path / "log", 10)
    (tmp_path / "log" / "images" / "000002.jpg").write_bytes(b"")  # DonkeyCar's 0-byte JPEG
    (tmp_path / "log" / "images" / "000004.jpg").write_bytes(b"\xff\xd8garbage")
    (tmp_path / "log" / "images" / "000006.jpg").unlink()
    with open(tmp_path / "log" / RECORDS, "ab") as f:
        f.write(b'{"i": 10, "t": 0.5, "steer')  # a truncated last line
    r = LogReader(tmp_path / "log")
    assert len(r.records()) == 10
    got = [rec.i for rec, _ in r.frames()]
    assert got == [0, 1, 3, 5, 7, 8, 9]
    assert r.skipped == 4
    assert "0-byte" in caplog.text
    assert "line 11" in caplog.text  # the truncated line is named


def test_delete_range_is_appended_not_rewritten(tmp_path):
    path = tmp_path / "log"
    with LogWriter(path) as w:
        for i in range(10):
            w.write(Record(i=i, t=i, steering=0, throttle=0), frame(i))
        w.delete(6, 9)
    assert [r.i for r in LogReader(path).records()] == [0, 1, 2, 3, 4, 5]
    lines = (path / RECORDS).read_bytes().splitlines()
    assert len(lines) == 11 and json.loads(lines[-1])["op"] == "delete"


def test_sigkill_while_recording_keeps_flushed_records(tmp_path):
    path = tmp_path / "log"
    child = textwrap.dedent(f"""
        import sys, time, numpy as np
        from edgepilot.drivelog import LogWriter
        from edgepilot.schema.log import Record
        w = LogWriter({str(path)!r})
        img = np.full((120, 160, 3), 128, np.uint8)
        i = 0
        while True:
            w.write(Record(i=i, t=time.time(), steering=0.1, throttle=0.2), img)
            if i == 200:
                print("ready", flush=True)
            i += 1
            time.sleep(0.001)
    """)
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = LogReader(path)
    recs = r.records()
    assert len(recs) >= 150  # at most the unflushed tail is lost
    assert [x.i for x in recs] == list(range(len(recs)))  # no holes: lines are written in order
    n = sum(1 for _ in r.frames())
    assert n == len(recs)  # every record that survived has its image (image before line)


def test_writer_refuses_existing_log(tmp_path):
    write_log(tmp_path / "log", 2)
    from edgepilot import EdgepilotError

    with pytest.raises(EdgepilotError, match="already holds"):
        LogWriter(tmp_path / "log")


def test_newer_schema_is_refused(tmp_path):
    write_log(tmp_path / "log", 2)
    meta = json.loads((tmp_path / "log" / "meta.json").read_text())
    meta["schema"] = 99
    (tmp_path / "log" / "meta.json").write_text(json.dumps(meta))
    from edgepilot import EdgepilotError

    with pytest.raises(EdgepilotError, match="newer"):
        LogReader(tmp_path / "log")


def test_find_logs_expands_folders(tmp_path):
    write_log(tmp_path / "a" / "s1", 2)
    write_log(tmp_path / "a" / "s2", 2)
    assert [p.name for p in find_logs([tmp_path / "a"])] == ["s1", "s2"]


def test_parallel_writer_threads_keep_order_and_pair_images(tmp_path):
    # A burst (block=True, no pacing) makes the second writer thread join in; lines must
    # still come out in call order, deletes where they were called, each image its own.
    path = tmp_path / "log"
    with LogWriter(path, block=True, workers=2) as w:
        for i in range(300):
            w.write(Record(i=i, t=i, steering=0, throttle=0), frame(i))
            if i == 149:
                w.delete(100, 149)
    lines = (path / RECORDS).read_bytes().splitlines()
    assert json.loads(lines[150]) == {"op": "delete", "first": 100, "last": 149}
    assert [json.loads(x)["i"] for k, x in enumerate(lines) if k != 150] == list(range(300))
    r = LogReader(path)
    got = list(r.frames())
    assert [rec.i for rec, _ in got] == [*range(100), *range(150, 300)]
    for rec, img in got[::25]:
        assert np.abs(img.astype(int) - frame(rec.i).astype(int)).mean() < 3
