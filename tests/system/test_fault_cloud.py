"""The cloud trainer (`edgepilot cloud`, a real process on a real broker) SIGKILLed while a
car uploads and while it retrains, then restarted on the same store.

Mid-upload: the car's ``Uploader`` keeps going; when acknowledgements stop it asks again,
the restarted trainer answers from the store alone, and the upload completes without a
chunk the cloud had acknowledged being sent again; every acknowledged chunk is in the
store at the kill (a chunk is stored before it is acknowledged).

Mid-training: the registry and its ``current`` pointers are intact and loadable after
the kill; a restarted trainer runs the retraining again and finishes it. The training
runs in a child process (``cloud_trainer.service.run_isolated``): the kill must take it
down too, or an orphan trainer would write to the registry next to the restarted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.registry import Registry
from cloud_trainer.store import DirStore
from edgepilot.config import REPO_ROOT, BrokerConfig
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.model.package import load_package, make_keys
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.log import Record, SessionMeta
from testbed.procs import descendants
from vehicle.upload import Uploader, pack_log


def save_figures(name: str, figs: dict) -> None:
    out = REPO_ROOT / "var" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figs, indent=1, sort_keys=True))
    print("FIGURES", name, json.dumps(figs, sort_keys=True))


def write_profile(path: Path, broker_url: str, store: Path, **cloud: object) -> Path:
    lines = ['name = "cloud-fault"', "[broker]", f'url = "{broker_url}"', "[cloud]", f'store = "{store}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in cloud.items()]
    lines += ["[model]", 'trusted_keys = ["keys/signing.pub"]']
    path.write_text("\n".join(lines) + "\n")
    return path


class CloudProcess:
    """`edgepilot cloud` in its own process, started in ``cwd`` (its ``keys/`` sign and
    verify); ready once it printed its banner (subscriptions sent)."""

    def __init__(self, cwd: Path, profile: Path, store: Path, broker_url: str) -> None:
        self.stderr = open(cwd / f"cloud-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgepilot", "cloud", "--profile", str(profile)]
            + ["--store", str(store), "--broker", broker_url],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT)),
        )
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60):
            self.kill()
            raise AssertionError("edgepilot cloud did not start: " + self.log()[-2000:])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("edgepilot cloud:"):
                self.ready.set()

    def log(self) -> str:
        if not self.stderr.closed:
            self.stderr.flush()
        return Path(self.stderr.name).read_text()

    def descendants(self) -> list[int]:
        """Every live process below this one (the isolated trainer, its helpers)."""
        return descendants(self.proc.pid)[1:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # the parent only, as `kill -9 PID` or the OOM killer
        self.proc.wait(10)
        self.stderr.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        self.kill()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def make_log(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(11)
    with LogWriter(path, SessionMeta(session=path.name, created=0.0, source="sim"), block=True) as w:
        for i in range(frames):
            w.write(
                Record(i=i, t=i * 0.05, steering=0.1, throttle=0.3),
                rng.integers(0, 256, (120, 160, 3), np.uint8),
            )
    return path


# -- killed mid-upload --------------------------------------------------------------------


def test_cloud_killed_mid_upload_restarted_the_upload_resumes_and_no_acked_chunk_is_lost(broker, tmp_path):
    make_keys(tmp_path / "keys")
    store_dir = tmp_path / "store"
    profile = write_profile(tmp_path / "cloud.toml", broker.url, store_dir, retrain_min_frames=10**9)
    log_dir = make_log(tmp_path / "drive-c", 120)
    chunk = 64 * 1024
    pack = pack_log(log_dir, chunk)
    total = len(pack.chunk_sha256)
    pack.close()
    assert total >= 24

    acks: list[tuple[float, int]] = []  # what the cloud acknowledged, as the car's broker saw it
    spy = Connection(BrokerConfig(url=broker.url), "spy-cloudkill")
    spy.start()
    spy.subscribe(
        fleet.upload_topic("car-ck", "ack"),
        lambda m: acks.append((time.monotonic(), fleet.decode_ack(m.payload).index)),
        qos=1,
    )
    car = Connection(BrokerConfig(url=broker.url), "car-ck")
    car.start()
    t_start = time.monotonic()
    cloud = CloudProcess(tmp_path, profile, store_dir, broker.url)
    # the car waits 4 s for the restarted cloud's answer, or three times what starting a
    # cloud took on this machine just now if that is longer (a busy machine starts it slower);
    # a window smaller than the log, as on a real link: the kill leaves chunks unsent
    up = Uploader(car, "car-ck", chunk_size=chunk, window=4, timeout_s=max(4.0, 3 * (time.monotonic() - t_start)))
    result: dict = {}

    def upload() -> None:
        try:
            result["res"] = up.upload(log_dir, progress=False)
        except Exception as e:  # reported by the assertion below
            result["error"] = e

    th = threading.Thread(target=upload)
    cloud2 = None
    try:
        th.start()
        deadline = time.monotonic() + 60
        while len(acks) < total // 3 and time.monotonic() < deadline and th.is_alive():
            time.sleep(0.002)
        cloud.kill()
        t_kill = time.monotonic()
        time.sleep(0.3)  # acknowledgements already on their way land
        acked = {i for _, i in acks}
        stored = {int(p.name) for p in (store_dir / "incoming" / "car-ck" / pack.sha256).glob("[0-9]*")}
        assert 0 < len(acked) < total, "the kill did not land mid-upload"
        time.sleep(1.0)  # the cloud stays down a moment
        cloud2 = CloudProcess(tmp_path, profile, store_dir, broker.url)
        t_up = time.monotonic()
        th.join(60)
        t_done = time.monotonic()
    finally:
        th.join(60)
        for c in (cloud, cloud2):
            if c is not None:
                c.stop()
        car.close()
        spy.close()
    assert "error" not in result, result.get("error")
    res = result["res"]
    counts = {i: res.sent_indices.count(i) for i in set(res.sent_indices)}
    resent_acked = sorted(i for i in acked if counts.get(i, 0) > 1)
    figs = {
        "chunks": total,
        "chunk_bytes": chunk,
        "acked_at_kill": len(acked),
        "stored_at_kill": len(stored),
        "acked_not_stored": len(acked - stored),
        "sends": len(res.sent_indices),
        "resent_chunks": sum(c - 1 for c in counts.values()),
        "resent_acked_chunks": len(resent_acked),
        "resumes": res.resumes,
        "cloud_down_s": round(t_up - t_kill, 2),
        "complete_after_restart_s": round(t_done - t_up, 2),
    }
    save_figures("cloud_kill_upload", figs)
    assert acked <= stored, "the cloud acknowledged a chunk it had not stored"
    assert not resent_acked, f"acknowledged chunks sent again: {resent_acked}"
    assert res.resumes >= 1 and set(res.sent_indices) == set(range(total))
    meta = json.loads((store_dir / "uploads" / "car-ck" / f"{pack.sha256}.json").read_text())
    assert len(LogReader(store_dir / meta["log"]).records()) == 120


# -- killed mid-training ------------------------------------------------------------------


def seed_store(store_dir: Path, sessions: int = 3, seconds: float = 6.0) -> list[str]:
    """Expert drives in the simulator, stored as ingest leaves an upload:
    ``logs/<car>/<name>/`` plus ``uploads/<id>.json``. Returns the log directories."""
    from edgepilot.sim.drive import expert_drive, open_log
    from edgepilot.sim.expert import Expert
    from edgepilot.sim.tracks import load_track
    from edgepilot.sim.world import SimWorld

    track = load_track("oval")
    out = []
    for n in range(sessions):
        key = f"logs/sim/seed-{n}"
        w = SimWorld(track, seed=n, start_index=n * 40)
        expert = Expert(track, perturb=0.3, seed=n)
        expert_drive(
            w,
            laps=99,
            max_seconds=seconds,
            expert=expert,
            writer=open_log(store_dir / key, w, {}),
        )
        frames = len(LogReader(store_dir / key).records())
        up = store_dir / "uploads" / f"{n:064x}.json"
        up.parent.mkdir(parents=True, exist_ok=True)
        up.write_text(json.dumps({"upload": f"{n:064x}", "car": "sim", "log": key, "frames": frames}))
        out.append(str(store_dir / key))
    return out


def registry_intact(store_dir: Path, trusted: list[str]) -> dict[str, str | None]:
    """Every registered version's package is there with its recorded hash, and every
    ``current`` pointer names one that loads (signature and weights verified)."""
    reg = Registry(DirStore(store_dir), trusted)
    cur = {}
    for target in ("car", "edge"):
        for e in reg.versions(target):
            raw = reg.package_path(target, e["version"]).read_bytes()
            assert hashlib.sha256(raw).hexdigest() == e["sha256"], (target, e["version"])
        cur[target] = reg.current(target)
        if cur[target] is not None:
            load_package(reg.package_path(target, cur[target]), trusted)
    return cur


@pytest.mark.slow
def test_cloud_killed_mid_training_registry_intact_and_a_restart_carries_on(broker, tmp_path, monkeypatch):
    from edgepilot.model.train import TrainConfig, train

    _, pub = make_keys(tmp_path / "keys")
    monkeypatch.chdir(tmp_path)  # the model code trusts ./keys/*.pub
    trusted = [str(pub)]
    store_dir = tmp_path / "store"
    logs = seed_store(store_dir)
    # the model the fleet runs today: the pointer that must survive the kill
    v0 = train(logs, tmp_path / "v0.eppkg", TrainConfig(epochs=1, max_frames=60, threads=1))
    reg = Registry(DirStore(store_dir), trusted)
    reg.add("car", v0["package"])
    reg.promote("car", v0["version"])
    profile = write_profile(
        tmp_path / "cloud.toml",
        broker.url,
        store_dir,
        retrain_min_frames=10,
        epochs=1,
        edge_epochs=1,
        max_frames=240,
        eval_tracks=[],
        margin_mae=1.0,
        margin_autonomy=1.0,
        margin_cte_m=10.0,
        latency_budget_ms=1000.0,
    )
    cloud = CloudProcess(tmp_path, profile, store_dir, broker.url)  # enough new frames: trains at once
    cloud2 = None
    done = store_dir / "state" / "trained.json"
    try:
        deadline = time.monotonic() + 300  # waits: a busy machine trains slower
        while time.monotonic() < deadline and "retrain run-" not in cloud.log():
            time.sleep(0.05)
        trainer = cloud.descendants()
        assert trainer and "retrain run-" in cloud.log(), "no retraining started: " + cloud.log()[-2000:]
        time.sleep(0.5)  # into the training
        assert "retraining skipped" not in cloud.log(), cloud.log()[-2000:]
        assert not done.exists(), "the run finished before the kill"
        cloud.kill()
        t_kill = time.monotonic()
        orphans = [p for p in trainer if alive(p)]
        end = time.monotonic() + 10  # the retraining child, then its edge-model worker, each ~1 GB to tear down
        while orphans and time.monotonic() < end:
            time.sleep(0.05)
            orphans = [p for p in orphans if alive(p)]
        t_gone = time.monotonic()
        for p in orphans:  # the test must not leave them behind whatever happens
            os.kill(p, signal.SIGKILL)
        current_after_kill = registry_intact(store_dir, trusted)
        cloud2 = CloudProcess(tmp_path, profile, store_dir, broker.url)
        t_up = time.monotonic()
        deadline = time.monotonic() + 900
        while not done.exists() and time.monotonic() < deadline and cloud2.proc.poll() is None:
            if "retraining skipped" in cloud2.log():
                break
            time.sleep(0.2)
        t_done = time.monotonic()
        assert done.exists(), cloud2.log()[-3000:]
    finally:
        for c in (cloud, cloud2):
            if c is not None:
                c.stop()
    current = registry_intact(store_dir, trusted)
    figs = {
        "trainer_processes": len(trainer),
        "orphans_after_kill": len(orphans),
        "trainer_gone_after_s": round(t_gone - t_kill, 2),
        "current_after_kill": current_after_kill,
        "current_after_restart": current,
        "restart_run_s": round(t_done - t_up, 1),
        "versions": {t: len(Registry(DirStore(store_dir), trusted).versions(t)) for t in ("car", "edge")},
    }
    save_figures("cloud_kill_training", figs)
    assert not orphans, "the retraining process outlived the killed trainer"
    assert current_after_kill == {"car": v0["version"], "edge": None}
    assert current["car"] is not None and current["edge"] is not None
    assert current["car"] != v0["version"]  # the restarted run finished and was promoted (wide margins)


ORPHAN_PARENT = """
import multiprocessing, os, sys, time
from cloud_trainer.procguard import die_with_parent

def grandchild(parent, guard, ready):
    if guard:
        die_with_parent(parent)
    ready.set()
    time.sleep(60)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=grandchild, args=(os.getpid(), sys.argv[1] == "1", ready))
    p.start()
    ready.wait(60)  # the grandchild is up and past its guard
    print(p.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("guard", [True, False])
def test_a_retraining_child_dies_with_its_killed_trainer(tmp_path, guard):
    """The regression test of the orphan trainer, in seconds (the slow test above kills a
    whole `edgepilot cloud`): a spawned child that called ``die_with_parent`` is gone
    once its parent is SIGKILLed; one that did not outlives it (the test can fail)."""
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_PARENT)
    proc = subprocess.Popen(
        [sys.executable, str(script), "1" if guard else "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the orphaned resource tracker's leak warning
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        child = int(proc.stdout.readline())
        assert alive(child)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        end = time.monotonic() + 1
        while alive(child) and time.monotonic() < end:
            time.sleep(0.02)
        survived = alive(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(NameError, ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    assert survived is not guard


def test_trainer_killed_between_unpack_and_record_the_next_offer_reuses_the_log(tmp_path):
    """The state a trainer SIGKILLed inside the assembly leaves -- the log unpacked, no
    ``uploads/<id>.json`` yet, the chunks still there -- then a restarted trainer (a new
    ``Ingest`` on the same store) gets the car's next offer: one log, not two."""
    from cloud_trainer.ingest import Ingest, record_key

    log_dir = make_log(tmp_path / "drive-a", 20)
    pack = pack_log(log_dir, 64 * 1024)
    offer = fleet.UploadOffer(
        car="car-a",
        upload=pack.sha256,
        name="drive-a",
        size=pack.size,
        chunk_size=pack.chunk_size,
        chunk_sha256=pack.chunk_sha256,
        frames=pack.frames,
    )
    store = DirStore(tmp_path / "store")
    first = Ingest(store)
    assert first.handle_offer(offer).state == "partial"
    for i in range(offer.chunks):
        assert (
            first.handle_chunk(
                "car-a", fleet.ChunkHeader(offer.upload, i, offer.chunk_sha256[i]), pack.chunk(i)
            ).error
            is None
        )
    tar = b"".join(pack.chunk(i) for i in range(offer.chunks))
    pack.close()
    first._unpack(offer, tar, "logs/car-a/drive-a")  # ... and the trainer dies here
    assert not store.exists(record_key("car-a", offer.upload))

    restarted = Ingest(store)
    st = restarted.handle_offer(offer)
    assert st.state == "complete" and st.log == "logs/car-a/drive-a"
    dirs = {k.split("/")[2] for k in store.list("logs/car-a/")}
    assert dirs == {"drive-a"}, dirs  # before the fix: drive-a and drive-a-<sha8>
    assert len(LogReader(store.local_dir(st.log)).records()) == 20

    # another upload under the same name still gets its own directory
    other = make_log(tmp_path / "x" / "drive-a", 5)
    p2 = pack_log(other, 64 * 1024)
    o2 = fleet.UploadOffer("car-a", p2.sha256, "drive-a", p2.size, p2.chunk_size, p2.chunk_sha256, p2.frames)
    restarted.handle_offer(o2)
    for i in range(o2.chunks):
        restarted.handle_chunk("car-a", fleet.ChunkHeader(o2.upload, i, o2.chunk_sha256[i]), p2.chunk(i))
    p2.close()
    st2 = restarted.handle_offer(o2)
    assert st2.state == "complete" and st2.log == f"logs/car-a/drive-a-{o2.upload[:8]}"
    assert len(LogReader(store.local_dir("logs/car-a/drive-a")).records()) == 20  # untouched
