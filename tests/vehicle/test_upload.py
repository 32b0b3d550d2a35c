"""Log upload through a real Mosquitto: idempotent, hash-checked, resumable; counted chunks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.ingest import Ingest
from cloud_trainer.store import DirStore
from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.log import Record, SessionMeta
from vehicle.idle_upload import IdleUploader
from vehicle.upload import UploadCancelled, Uploader, is_uploaded, pack_log


def make_log(path: Path, frames: int, seed: int = 0, shape: tuple[int, int, int] = (120, 160, 3)) -> Path:
    """A real driving log of noise frames (noise JPEGs are large: good for chunk counts)."""
    rng = np.random.default_rng(seed)
    with LogWriter(path, SessionMeta(session=path.name, created=0.0, source="sim"), block=True) as w:
        for i in range(frames):
            img = rng.integers(0, 256, shape, dtype=np.uint8)
            w.write(Record(i=i, t=i * 0.05, steering=float(np.sin(i / 7)) * 0.5, throttle=0.3), img)
    return path


@pytest.fixture
def cloud(broker, tmp_path):
    store = DirStore(tmp_path / "store")
    ingest = Ingest(store)
    conn = Connection(BrokerConfig(url=broker.url), f"cloud-{tmp_path.name}")
    conn.start()
    ingest.attach(conn, group=f"g{abs(hash(tmp_path.name)) % 10**8}")
    try:
        assert conn.wait_subscribed(5)
        yield ingest
    finally:
        ingest.close()
        conn.close()


def settled(fn, quiet_s: float = 0.3):
    last, t = fn(), time.monotonic()
    while time.monotonic() - t < quiet_s:
        time.sleep(0.05)
        now = fn()
        if now != last:
            last, t = now, time.monotonic()
    return last


def car_conn(broker, name: str) -> Connection:
    c = Connection(BrokerConfig(url=broker.url), name)
    c.start()
    return c


def test_pack_is_deterministic_and_ignores_the_marker(tmp_path):
    log = make_log(tmp_path / "s1", 5)
    a = pack_log(log, chunk_size=4096)
    (log / ".uploaded.json").write_text("{}")
    b = pack_log(log, chunk_size=4096)
    assert a.sha256 == b.sha256 and a.chunk_sha256 == b.chunk_sha256
    assert a.frames == 5 and len(a.chunk_sha256) == -(-a.size // 4096)
    (log / "records.jsonl").open("ab").write(b"\n")  # any change -> another upload id
    assert pack_log(log, chunk_size=4096).sha256 != a.sha256


def test_upload_then_second_upload_sends_nothing(broker, cloud, tmp_path):
    log = make_log(tmp_path / "drive-1", 40)
    conn = car_conn(broker, "car-up1")
    try:
        up = Uploader(conn, "car-up1", chunk_size=64 * 1024)
        first = up.upload(log, progress=False)
        assert first.sent_bytes == first.bytes > 0
        assert first.chunks_sent == first.chunks
        got = LogReader(cloud.store.local_dir(first.log))
        assert len(got.records()) == 40
        assert (got.path / "images" / "000039.jpg").read_bytes() == (
            log / "images" / "000039.jpg"
        ).read_bytes()
        assert is_uploaded(log)
        again = up.upload(log, progress=False)
        assert again.sent_bytes == 0 and again.chunks_sent == 0 and again.sha256 == first.sha256
        assert again.log == first.log
        assert cloud.store.list("incoming/") == []
    finally:
        conn.close()


def test_cancelled_upload_resumes_without_resending_acknowledged_chunks(broker, cloud, tmp_path):
    log = make_log(tmp_path / "drive-2", 60, seed=2)
    conn = car_conn(broker, "car-up2")
    try:
        up = Uploader(conn, "car-up2", chunk_size=32 * 1024, window=4)
        acked_at_cancel: list[int] = []

        def keep_going() -> bool:
            stored = cloud.have(pack.sha256)
            if len(stored) >= 8:
                acked_at_cancel.extend(sorted(stored))
                return False
            return True

        pack = pack_log(log, chunk_size=32 * 1024)
        total = len(pack.chunk_sha256)
        assert total > 30
        with pytest.raises(UploadCancelled):
            up.upload(log, progress=False, keep_going=keep_going)
        assert not is_uploaded(log)
        stored_before = settled(lambda: cloud.have(pack.sha256))  # chunks in flight land
        assert stored_before >= set(acked_at_cancel) and len(stored_before) < total
        second = up.upload(log, progress=False)
        assert not set(second.sent_indices) & stored_before  # nothing stored is sent again
        assert set(second.sent_indices) | stored_before == set(range(total))
        assert second.chunks_sent == total - len(stored_before)
        assert LogReader(cloud.store.local_dir(second.log)).records()[-1].i == 59
    finally:
        conn.close()


def test_killed_connection_mid_upload_resumes_in_process(broker, cloud, tmp_path):
    log = make_log(tmp_path / "drive-3", 60, seed=3)
    conn = car_conn(broker, "car-up3")
    try:
        up = Uploader(conn, "car-up3", chunk_size=32 * 1024, window=2)
        pack = pack_log(log, chunk_size=32 * 1024)
        stored_at_kill: set[int] = set()

        def drop_once() -> bool:
            # Called by the uploader between chunks, so the drop lands mid-upload however
            # busy the machine is (a killer thread could wake after the last chunk).
            if not stored_at_kill and len(cloud.have(pack.sha256)) >= 10:
                stored_at_kill.update(cloud.have(pack.sha256))
                conn.client.socket().shutdown(socket.SHUT_RDWR)  # the network drops
            return True

        connects = conn.connects
        res = up.upload(log, progress=False, keep_going=drop_once)
        assert stored_at_kill and len(stored_at_kill) < res.chunks  # the drop was mid-upload
        assert conn.connects > connects  # the car really reconnected
        assert res.resumes >= 1  # and the uploader noticed, however quick the reconnect
        sent_twice = [i for i in set(res.sent_indices) if res.sent_indices.count(i) > 1]
        assert not set(sent_twice) & stored_at_kill  # acknowledged chunks were not re-sent
        assert len(LogReader(cloud.store.local_dir(res.log)).records()) == 60
    finally:
        conn.close()


def test_bad_chunks_and_offers_are_refused_with_a_reason(tmp_path):
    store = DirStore(tmp_path / "store")
    ing = Ingest(store)
    pack = pack_log(make_log(tmp_path / "s", 3), chunk_size=8192)
    offer = fleet.UploadOffer("car-x", pack.sha256, "s", pack.size, 8192, pack.chunk_sha256, 3)
    hdr = fleet.ChunkHeader(pack.sha256, 0, pack.chunk_sha256[0])
    assert "unknown upload" in ing.handle_chunk("car-x", hdr, pack.chunk(0)).error
    assert ing.handle_offer(offer).state == "partial"
    bad = bytearray(pack.chunk(0))
    bad[100] ^= 1
    assert "sha256 mismatch" in ing.handle_chunk("car-x", hdr, bytes(bad)).error
    assert "belongs to car" in ing.handle_chunk("car-y", hdr, pack.chunk(0)).error
    assert ing.handle_chunk("car-x", hdr, pack.chunk(0)).error is None
    assert ing.have(pack.sha256) == {0}
    # a tar that is not a driving log is refused at assembly, never unpacked
    import hashlib

    junk = b"not a tar at all" * 100
    j = fleet.UploadOffer(
        "car-x", hashlib.sha256(junk).hexdigest(), "j", len(junk), 8192, [hashlib.sha256(junk).hexdigest()]
    )
    ing.handle_offer(j)
    ing.handle_chunk("car-x", fleet.ChunkHeader(j.upload, 0, j.chunk_sha256[0]), junk)
    st = ing.handle_offer(j)
    assert st.state == "error" and "not a packed log" in st.error
    assert store.list("logs/") == []


def test_wire_validation_rejects_malformed_messages():
    with pytest.raises(fleet.WireError, match="version"):
        fleet.decode_offer(b'{"v": 99}')
    with pytest.raises(fleet.WireError, match="sha256"):
        fleet.decode_chunk(b'{"v":1,"upload":"zz","index":0,"sha256":"zz"}\nxx')
    with pytest.raises(fleet.WireError, match="chunks"):
        fleet.decode_offer(
            json.dumps(
                {
                    "v": 1,
                    "car": "c",
                    "upload": "a" * 64,
                    "name": "n",
                    "size": 10,
                    "chunk_size": 4,
                    "chunk_sha256": ["a" * 64],
                }
            ).encode()
        )
    with pytest.raises(fleet.WireError, match="name"):
        fleet.check_name("../etc")
    assert fleet.from_ranges(fleet.ranges({0, 1, 2, 5, 9, 10}), 11, "x") == {0, 1, 2, 5, 9, 10}


def test_idle_uploader_waits_for_idle_and_keeps_logs_until_acknowledged(broker, cloud, tmp_path):
    root = tmp_path / "recordings"
    make_log(root / "a", 5, seed=5)
    make_log(root / "b", 5, seed=6)
    conn = car_conn(broker, "car-idle")
    try:
        idle = {"v": False}
        iu = IdleUploader(
            Uploader(conn, "car-idle"), root, lambda: idle["v"], settle_s=0.0, delete_after=True
        )
        assert iu.run_once() == 0 and len(iu.pending()) == 2  # driving: nothing is sent
        idle["v"] = True
        assert iu.run_once() == 2
        assert not (root / "a").exists() and not (root / "b").exists()
        assert len(cloud.store.list("uploads/")) == 2
    finally:
        conn.close()


def test_cli_upload_json_and_error_without_cloud(broker, tmp_path):
    log = make_log(tmp_path / "solo", 3)
    out = subprocess.run(
        [sys.executable, "-m", "edgepilot", "upload", str(log), "--broker", broker.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EDGEPILOT_UPLOAD_TIMEOUT_S": "1"},
    )
    assert out.returncode == 1
    assert "no answer from a cloud trainer" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(EdgepilotError, match="not a driving log"):
        pack_log(tmp_path)
