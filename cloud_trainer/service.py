"""``edgepilot cloud``: the long-running cloud trainer.

One process, three jobs on one MQTT connection:

- ingest uploads (``cloud_trainer.ingest``) into the store, through a shared
  subscription (group ``cloud``) so that several trainers split the fleet's uploads;
- retrain when ``retrain_min_frames`` new frames arrived since the last run (or when
  asked on ``edgepilot/v1/cloud/retrain``), one run at a time on a worker thread, so
  ingest keeps going while it trains;
- push whatever the gate promotes (``cloud_trainer.push``; a car model with the
  split-mode tails trained in its run, for the edge nodes) and follow what every car
  reports it runs (``car/+/model``, kept in ``fleet/<car>.json``).

State lives in the store only (``state/trained.json``: the logs the last run used), so
a restarted trainer — or another one on the same store — carries on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from cloud_trainer.control import ModelControl
from cloud_trainer.ingest import Ingest
from cloud_trainer.procguard import die_with_parent
from cloud_trainer.push import ANNOUNCE_TTL_S, announce_key, push_current
from cloud_trainer.registry import Registry
from cloud_trainer.retrain import RetrainConfig, retrain
from cloud_trainer.store import Store, open_store
from edgepilot import EdgepilotError
from edgepilot.config import UploadLimits
from edgepilot.keys import load_private_key
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)

TRAINED = "state/trained.json"


class CloudService:
    def __init__(
        self,
        store: Store,
        conn: Connection,
        cfg: RetrainConfig,
        *,
        min_frames: int = 2000,
        trusted_keys: list[str] | None = None,
        key: str | None = None,
        workdir: str | Path | None = None,
        group: str = "cloud",
        isolate: bool = True,
        announce_ttl_s: float = ANNOUNCE_TTL_S,
        announce_key: str | None = None,
        limits: UploadLimits | None = None,
        operator_token_file: str | None = None,
    ) -> None:
        self.store = store
        self.isolate = isolate
        self.conn = conn
        self.cfg = cfg
        self.min_frames = min_frames
        self.key = key
        self.group = group
        self.registry = Registry(store, trusted_keys)
        self.ingest = Ingest(store, on_log=self._on_log, limits=limits)
        self.workdir = Path(workdir) if workdir else Path(getattr(store, "root", ".")) / "work"
        self.fleet: dict[str, dict[str, Any]] = {}
        self.runs: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._forced = False
        self._thread: threading.Thread | None = None
        self.announce_ttl_s = announce_ttl_s
        self.announce_key_path = announce_key  # None: $EDGEPILOT_ANNOUNCE_KEY or keys/announce.key
        self._refresher: threading.Thread | None = None
        # one change of the fleet's models at a time: a run's promotion, a refresh, a
        # change the dashboard asked for
        self._push_lock = threading.RLock()
        self.control = ModelControl(self.registry, conn, self._push_for_change, operator_token_file, lock=self._push_lock, group=group)

    # -- state ---------------------------------------------------------------------------
    def trained_logs(self) -> set[str]:
        return set(json.loads(self.store.get(TRAINED))["logs"]) if self.store.exists(TRAINED) else set()

    def new_frames(self) -> int:
        done = self.trained_logs()
        n = 0
        for key in self.store.list("uploads/"):
            rec = json.loads(self.store.get(key))
            if rec["log"] not in done:
                n += int(rec.get("frames", 0))
        return n

    # -- events --------------------------------------------------------------------------
    def _on_log(self, key: str, frames: int) -> None:
        if self.new_frames() >= self.min_frames:
            self._wake.set()

    def _on_retrain(self, msg: paho.MQTTMessage) -> None:
        self._forced = True
        self._wake.set()

    def _on_car(self, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        try:
            st = fleet.decode_car_status(msg.payload)
        except WireError as e:
            log.warning("ignoring car status on %s: %s", msg.topic, e)
            return
        self.fleet[st.car] = {
            "version": st.version,
            "state": st.state,
            "offered": st.offered,
            "error": st.error,
        }
        if st.state == "refused":
            log.warning("car %s refused model %s: %s", st.car, st.offered, st.error)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.ingest.attach(self.conn, self.group)
        self.conn.subscribe(fleet.CLOUD_RETRAIN_TOPIC, self._on_retrain, qos=1)
        self.conn.subscribe(fleet.CAR_MODEL_FILTER, self._on_car, qos=1)
        self.control.attach()
        self._thread = threading.Thread(target=self._loop, name="retrain", daemon=True)
        self._thread.start()
        self._refresher = threading.Thread(target=self._refresh_loop, name="announce-refresh", daemon=True)
        self._refresher.start()
        # started = uploads are routed to us (as EdgeService.start): wait for the SUBACKs
        if self.conn.connected.is_set() and not self.conn.wait_subscribed(5.0):
            log.warning("cloud: the broker did not acknowledge every subscription in 5 s")
        if self.new_frames() >= self.min_frames:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(600)
        self.control.close()
        self.ingest.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            forced, self._forced = self._forced, False
            if forced or self.new_frames() >= self.min_frames:
                self.run_once()

    def run_once(self) -> dict[str, Any] | None:
        """One retraining run now; the summary, or None when it could not run (logged)."""
        logs_before = {json.loads(self.store.get(k))["log"] for k in self.store.list("uploads/")}
        try:
            if self.isolate:
                res = run_isolated(self.store, self.registry.trusted_keys, self.workdir, self.cfg, self.key)
            else:
                res = retrain(self.registry, self.workdir, self.cfg, key=self.key)
            for target in res["promoted"]:
                self.push(target)
        except EdgepilotError as e:
            self.errors.append(str(e))
            log.error("retraining skipped: %s", e)
            # say so on the runs topic: whoever asked for this run must not wait for it
            failed = fleet.RunSummary(None, error=str(e), current=self._current(), at=time.time())
            self.conn.publish(fleet.CLOUD_RUNS_TOPIC, fleet.encode_run_summary(failed), qos=1, retain=False)
            return None
        self.store.put(TRAINED, json.dumps({"logs": sorted(logs_before), "run": res["run"]}).encode())
        self.runs.append(res)
        if (res.get("tails") or {}).get("error"):
            self.errors.append(f"tails: {res['tails']['error']}")
        summary = fleet.encode_run_summary(self._summary(res))
        self.conn.publish(fleet.CLOUD_RUNS_TOPIC, summary, qos=1, retain=True)
        log.info("run %s: promoted %s; report %s", res["run"], res["promoted"] or "nothing", res["report"])
        return res

    def _current(self) -> dict[str, str | None]:
        return {t: self.registry.current(t) for t in ("car", "edge")}

    def _summary(self, res: dict[str, Any]) -> fleet.RunSummary:
        return fleet.RunSummary(
            run=res["run"],
            promoted=res["promoted"],
            current=self._current(),
            report=res["report"],
            gate={t: r["gate"]["passed"] for t, r in res["targets"].items()},
            checks={t: r["gate"]["checks"] for t, r in res["targets"].items()},
            data=list(res.get("train", [])),
            heldout=list(res.get("heldout", [])),
            tails=res.get("tails"),
            elapsed_s=res.get("elapsed_s"),
            at=time.time(),
        )

    def push(self, target: str, rollback: bool = False) -> Any:
        """Announce the current ``target`` model, signed with the announcement key (the
        package key signed the package itself when it was trained)."""
        key = announce_key() if self.announce_key_path is None else load_private_key(self.announce_key_path)
        with self._push_lock:
            return push_current(self.conn, self.registry, target, key=key, rollback=rollback, ttl_s=self.announce_ttl_s)

    def _push_for_change(self, target: str, rollback: bool) -> bool:
        """``push`` for a change asked over the bus: the registry has changed already, so a
        push that fails is reported (not pushed) and the refresh tells the fleet later."""
        try:
            self.push(target, rollback)
            return True
        except EdgepilotError as e:
            log.error("%s model changed in the registry, not announced: %s", target, e)
            return False

    def _refresh_loop(self) -> None:
        """Re-announce the current models (a newer counter, a new expiry) every quarter of
        the announcement's lifetime: a car knows a push it sees is not a frozen old one."""
        while not self._stop.wait(self.announce_ttl_s / 4):
            for target in ("car", "edge"):
                if self.registry.current(target) is None:
                    continue
                try:
                    self.push(target)
                except EdgepilotError as e:
                    log.warning("could not refresh the %s announcement: %s", target, e)


def _child(
    location: str,
    trusted: list[str] | None,
    workdir: str,
    cfg: RetrainConfig,
    key: str | None,
    parent: int = 0,
) -> dict:
    if parent:
        die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return retrain(Registry(open_store(location), trusted), workdir, cfg, key=key)


def run_isolated(
    store: Store, trusted: list[str] | None, workdir: Path, cfg: RetrainConfig, key: str | None
) -> dict[str, Any]:
    """One retraining run in a fresh (spawned) process.

    Why: training is the part that can run out of memory or crash, and it must not take
    ingest down with it; and torch.fx tracing (int8 compression) patches
    ``nn.Module.__call__`` process-wide while it runs, which would break any model
    inference in the same process. The child shares only the store."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    location = str(getattr(store, "root", ""))
    if not location:
        raise EdgepilotError("isolated retraining needs a store with a location")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(_child, location, trusted, str(workdir), cfg, key, os.getpid()).result()
        except BrokenProcessPool:
            raise EdgepilotError("the retraining process died (out of memory?)") from None


def cli(args: argparse.Namespace) -> dict[str, Any]:
    """Run until SIGTERM/Ctrl-C; prints what it did when it stops."""
    import signal

    from edgepilot.config import load_profile
    from edgepilot.mqtt import broker_config

    prof = load_profile(getattr(args, "profile", None), default="cloud")
    store = open_store(getattr(args, "store", None) or prof.cloud.store)
    conn = Connection(broker_config(prof.broker, getattr(args, "broker", None)), f"cloud-{os.getpid()}")
    conn.start()
    cfg = prof.cloud.retrain()
    ttl = prof.cloud.announce_ttl_s
    svc = CloudService(
        store,
        conn,
        cfg,
        min_frames=prof.cloud.retrain_min_frames,
        trusted_keys=prof.model.trusted_keys or None,
        announce_ttl_s=ttl,
        limits=prof.cloud.upload_limits(),
        operator_token_file=prof.dashboard.token_file,
    )
    svc.start()
    dash = None
    if getattr(args, "dashboard", False):
        from cloud_trainer.dashboard.cli import start_background

        location = getattr(args, "store", None) or prof.cloud.store
        dash = start_background(prof, getattr(args, "broker", None), location, getattr(args, "dashboard_port", None))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"edgepilot cloud: store {store}, broker {conn.cfg.url}; Ctrl-C to stop", flush=True)
    t0 = time.time()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if dash is not None:
            dash.stop()
        svc.stop()
        conn.close()
    st = svc.ingest.stats
    return {
        "uptime_s": round(time.time() - t0, 1),
        "logs_received": st.logs,
        "frames_received": st.frames,
        "chunks": st.chunks,
        "refused": st.refused,
        "uploads_expired": st.expired,
        "runs": len(svc.runs),
        "current": {t: svc.registry.current(t) for t in ("car", "edge")},
        "fleet": svc.fleet,
    }
