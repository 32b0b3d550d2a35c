"""SIGKILL of the car's upload process mid-upload: the next ``edgepilot upload`` resumes
against the cloud and re-sends no chunk the cloud had stored (acknowledged) at the kill.

Covered elsewhere (referenced, not duplicated): SIGKILL while recording keeps every
flushed record (tests/test_drivelog.py); the edge node SIGKILLed mid-request while a car
drives on (tests/test_edge_processes.py); the connection dropped mid-upload resumes in
process (tests/test_upload.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cloud_trainer.ingest import Ingest
from cloud_trainer.store import DirStore
from edgepilot.config import REPO_ROOT, BrokerConfig
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.mqtt import Connection
from edgepilot.schema.log import Record, SessionMeta
from vehicle.upload import CHUNK_SIZE, WINDOW, pack_log


def save_figures(name: str, figs: dict) -> None:
    out = REPO_ROOT / "var" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figs, indent=1, sort_keys=True))
    print("FIGURES", name, json.dumps(figs, sort_keys=True))


def make_log(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(9)
    with LogWriter(path, SessionMeta(session=path.name, created=0.0, source="sim"), block=True) as w:
        for i in range(frames):
            w.write(
                Record(i=i, t=i * 0.05, steering=0.1, throttle=0.3),
                rng.integers(0, 256, (120, 160, 3), np.uint8),
            )
    return path


def upload_cmd(log: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "edgepilot", "upload", str(log), "--broker", url, "--json"]


def test_sigkill_while_uploading_resumes_without_resending_acknowledged_chunks(broker, tmp_path):
    # more chunks than the uploader keeps in flight (WINDOW): the kill always leaves some
    # unsent (with fewer, every chunk could already be queued at the broker when it lands)
    log = make_log(tmp_path / "drive-k", 560)
    pack = pack_log(log)
    total = len(pack.chunk_sha256)
    assert total >= WINDOW + 6
    ingest = Ingest(DirStore(tmp_path / "store"))
    conn = Connection(BrokerConfig(url=broker.url), "cloud-kill")
    conn.start()
    ingest.attach(conn, group="gkill")
    try:
        assert conn.wait_subscribed(5)
        p = subprocess.Popen(
            upload_cmd(log, broker.url), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while len(ingest.have(pack.sha256)) < 4 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        t_kill = time.monotonic()
        stored_at_kill = set(ingest.have(pack.sha256))
        assert 0 < len(stored_at_kill) < total, "the kill did not land mid-upload"
        time.sleep(0.5)  # chunks in flight land
        stored_settled = set(ingest.have(pack.sha256))
        again = subprocess.run(
            upload_cmd(log, broker.url), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        t_done = time.monotonic()
        assert again.returncode == 0, again.stderr[-2000:]
        res = json.loads(again.stdout.strip().splitlines()[-1])
    finally:
        ingest.close()
        conn.close()
    resent_bound = res["bytes"] - len(stored_settled & set(range(total - 1))) * CHUNK_SIZE
    figs = {
        "chunks": total,
        "stored_at_kill": len(stored_at_kill),
        "bytes": res["bytes"],
        "sent_bytes_after_restart": res["sent_bytes"],
        "resume_to_complete_s": round(t_done - t_kill, 2),
    }
    save_figures("sigkill_upload", figs)
    assert res["sha256"] == pack.sha256
    # the acknowledged (stored) chunks were not sent again: at most the rest went out
    assert 0 < res["sent_bytes"] <= resent_bound
    (record,) = [json.loads(ingest.store.get(k)) for k in ingest.store.list("uploads/")]  # uploads/<car>/
    assert record["upload"] == pack.sha256
    key = record["log"]
    assert len(LogReader(ingest.store.local_dir(key)).records()) == 560
