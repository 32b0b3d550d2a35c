"""``edgepilot demo``: the whole loop on one machine, as separate processes.

Mosquitto, a cloud trainer, an edge node and a simulated car run as their own processes
(``edgepilot.supervise``), talking only MQTT and the files a real deployment would
share. This process only starts them, watches the fleet's topics and keeps score:

1. the expert drives the training tracks and records (randomised look, perturbations);
2. the logs are uploaded; the cloud trains the edge model and the car model, gates and
   pushes them; the edge node starts on the edge model;
3. the car takes the pushed model and drives an evaluation track it never saw, with
   early exit, offloading its hard frames to the edge;
4. its log is uploaded; the cloud retrains with it (the expert's labels ride along in
   every record: DAgger), gates, pushes; a car that is driving swaps mid-drive;
5. the car drives the evaluation track again.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.broker import listening, start_broker
from edgepilot.config import load_profile
from edgepilot.progress import bar, table
from edgepilot.supervise import Supervisor

log = logging.getLogger(__name__)

TRAIN_TRACKS = ("oval", "chicane", "kidney", "s_bends", "triangle", "switchback", "random_7")
GATE_TRACKS = ("long_straights",)  # the cloud's closed-loop check: not trained on, not the demo's
EVAL_TRACK = "rounded_square"
CAR = "sim-1"

CLOUD_PROFILE = """\
# written by `edgepilot demo`: small settings so the whole demo fits in minutes on 2 cores
name = "demo-cloud"
[cloud]
store = "{store}"
retrain_min_frames = 1000000000   # the demo asks for each retraining run itself
epochs = {epochs}
edge_epochs = {edge_epochs}
max_frames = {max_frames}
eval_tracks = {gate_tracks}
eval_seconds = 20.0
margin_mae = {margin_mae}
margin_autonomy = {margin_autonomy}
margin_cte_m = {margin_cte_m}
[model]
trusted_keys = ["{pub}"]
"""


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    ok: bool = False
    line: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class FleetWatch:
    """Follows the cloud's run summaries and the car's model status over MQTT."""

    def __init__(self, url: str) -> None:
        from edgepilot.config import BrokerConfig
        from edgepilot.mqtt import Connection
        from edgepilot.schema import fleet

        self.runs: list[dict[str, Any]] = []
        self.car_status: dict[str, dict[str, Any]] = {}
        self._cv = threading.Condition()
        self.conn = Connection(BrokerConfig(url=url), "demo-watch")
        self.conn.start()
        self.conn.subscribe(fleet.CLOUD_RUNS_TOPIC, self._on_run, qos=1)
        self.conn.subscribe(fleet.CAR_MODEL_FILTER, self._on_car, qos=1)
        self.retrain_topic = fleet.CLOUD_RETRAIN_TOPIC

    def _on_run(self, msg: Any) -> None:
        if msg.payload:
            with self._cv:
                self.runs.append(json.loads(msg.payload))
                self._cv.notify_all()

    def _on_car(self, msg: Any) -> None:
        if msg.payload:
            st = json.loads(msg.payload)
            with self._cv:
                self.car_status[st.get("car", "?")] = st
                self._cv.notify_all()

    def retrain(self, timeout: float) -> dict[str, Any]:
        """Ask the cloud for a run and wait for its summary."""
        with self._cv:
            seen = len(self.runs)
        self.conn.publish(self.retrain_topic, b"{}", qos=1)
        run = self._wait(
            lambda: self.runs[-1] if len(self.runs) > seen else None, timeout, "a retraining run"
        )
        if run.get("error"):
            raise EdgepilotError(f"the cloud's retraining run failed: {run['error']}")
        return run

    def car_runs(self, car: str, version: str, timeout: float) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            st = self.car_status.get(car)
            return st if st and st.get("version") == version and st.get("state") == "running" else None

        return self._wait(ok, timeout, f"{car} to run {version}")

    def _wait(self, pred: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cv:
            while (got := pred()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EdgepilotError(f"timed out after {timeout:.0f} s waiting for {what}")
                self._cv.wait(min(left, 1.0))
        return got

    def close(self) -> None:
        self.conn.close()


class Demo:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.headless = bool(args.headless)
        self.phases: list[Phase] = []
        self.py = [sys.executable, "-m", "edgepilot"]

    # -- helpers ---------------------------------------------------------------------------
    def drive_args(self, track: str, *extra: str) -> list[str]:
        a = ["sim", "drive", "--track", track, "--json", "--broker", self.url]
        return a + (["--headless"] if self.headless else []) + list(extra)

    def car_drive_args(self, *extra: str) -> list[str]:
        """The simulated car on the evaluation track: the fleet's model, offloading."""
        return self.drive_args(
            EVAL_TRACK, "--pilot", "model", "--follow-fleet", "--edge", "--rate", "realtime", *extra
        )

    def run_child(
        self, sup: Supervisor, name: str, args: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        sup.edgepilot(name, *args, env=env, expect_exit=True)
        rc = sup.wait(name, timeout)
        child = sup.children[name]
        if rc != 0:
            raise EdgepilotError(f"{name} failed (exit {rc}); its log {child.log_path} ends:\n{child.tail()}")
        return child.json_result()

    def phase(self, name: str) -> Phase:
        p = Phase(name)
        self.phases.append(p)
        print(f"== phase {len(self.phases)}: {name}", file=sys.stderr, flush=True)
        return p

    def done(self, p: Phase, t0: float, line: str, **detail: Any) -> None:
        p.seconds, p.ok, p.line, p.detail = round(time.monotonic() - t0, 1), True, line, detail
        print(f"   {line}  ({p.seconds:.0f} s)", file=sys.stderr, flush=True)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from edgepilot.model.package import default_key_dir, load_private_key

        for sub in ("logs", "store", "proc", "models-" + CAR):
            shutil.rmtree(self.work / sub, ignore_errors=True)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        prof = load_profile(getattr(self.args, "profile", None), "sim")
        self.url = self.args.broker or prof.broker.url
        host_port = self.url.split("://", 1)[-1]
        port = int(host_port.rsplit(":", 1)[1]) if ":" in host_port else 1883
        broker = None
        if not listening(port):
            broker = start_broker(self.work / "mosquitto", port)
            log.warning("started Mosquitto on 127.0.0.1:%d", port)
        load_private_key(None, create=True)  # the fleet's signing key: made on the first run
        key_dir = default_key_dir()
        store = self.work / "store"
        cloud_toml = self.work / "cloud.toml"
        cloud_toml.write_text(
            CLOUD_PROFILE.format(
                store=store,
                epochs=self.args.epochs,
                edge_epochs=max(1, self.args.epochs - 1),
                max_frames=self.args.max_frames,
                gate_tracks=json.dumps(list(GATE_TRACKS)),
                # --gate-open (smoke runs): quality margins so wide that any model passes
                **(
                    {"margin_mae": 1e9, "margin_autonomy": 1e9, "margin_cte_m": 1e9}
                    if getattr(self.args, "gate_open", False)
                    else {"margin_mae": 0.02, "margin_autonomy": 0.0, "margin_cte_m": 0.03}
                ),
                pub=key_dir / "signing.pub",
            )
        )
        watch = FleetWatch(self.url)
        t_all = time.monotonic()
        try:
            with Supervisor(self.work / "proc") as sup:
                sup.edgepilot("cloud", "cloud", "--broker", self.url, "--profile", str(cloud_toml), "-v")
                result = self._phases(sup, watch, store)
        finally:
            watch.close()
            if broker is not None:
                broker.stop()
        result["elapsed_s"] = round(time.monotonic() - t_all, 1)
        return result

    def _phases(self, sup: Supervisor, watch: FleetWatch, store: Path) -> dict[str, Any]:
        from cloud_trainer.registry import Registry
        from cloud_trainer.store import open_store

        a = self.args
        car_env = {"EDGEPILOT_CAR_ID": CAR}
        logs = self.work / "logs"
        # 1. collect ------------------------------------------------------------------
        p, t0 = self.phase("the expert drives the training tracks and records"), time.monotonic()
        frames = 0
        for i, track in enumerate(bar(TRAIN_TRACKS, desc="collect", unit="track")):
            r = self.run_child(
                sup,
                f"collect-{track}",
                self.drive_args(
                    track,
                    "--pilot",
                    "expert",
                    "--record",
                    str(logs / f"expert-{track}"),
                    "--randomize",
                    "--perturb",
                    "0.3",
                    "--seed",
                    str(i + 1),
                    "--laps",
                    str(a.laps),
                    "--rate",
                    "max",
                ),
                300,
            )
            frames += r.get("records", r.get("frames", 0))
        self.done(p, t0, f"{len(TRAIN_TRACKS)} tracks, {frames} frames recorded", frames=frames)

        # 2. upload, first training ---------------------------------------------------
        p, t0 = self.phase("upload the logs; the cloud trains the edge and car models"), time.monotonic()
        sent = sum(self._upload(sup, logs / f"expert-{t}", t)["sent_bytes"] for t in TRAIN_TRACKS)
        run1 = watch.retrain(timeout=a.train_timeout)
        cur = run1.get("current", {})
        if not cur.get("car") or not cur.get("edge"):
            raise EdgepilotError(f"the first training run promoted no car or edge model: {run1}")
        reg = Registry(open_store(store))
        edge_pkg = reg.package_path("edge", cur["edge"])
        sup.edgepilot("edge", "edge", "--broker", self.url, "--model", str(edge_pkg), "--profile", "edge")
        sup.wait_ready("edge")
        self.done(
            p,
            t0,
            f"uploaded {sent / 1e6:.1f} MB; car {cur['car']}, edge {cur['edge']} trained and pushed",
            run=run1.get("run"),
            sent_bytes=sent,
        )

        # 3. drive with early exit + offload --------------------------------------------
        p, t0 = self.phase("the car drives an unseen track with early exit and offload"), time.monotonic()
        before = self._drive(sup, "drive-1", logs / "car-drive-1", car_env)
        self.done(p, t0, self._drive_line(before), **before)

        # 4. upload, retrain, gate, push, swap mid-drive ----------------------------------
        p, t0 = (
            self.phase("upload the car's log; retrain, gate, push; the driving car swaps"),
            time.monotonic(),
        )
        self._upload(sup, logs / "car-drive-1", "car-drive-1")
        sup.edgepilot("car-swap", *self.car_drive_args("--laps", "100"), env=car_env)
        watch.car_runs(CAR, cur["car"], timeout=120)  # the driving car runs the current model
        run2 = watch.retrain(timeout=a.train_timeout)
        new_car = run2.get("current", {}).get("car")
        pushed = "car" in run2.get("promoted", [])
        if pushed:
            watch.car_runs(CAR, new_car, timeout=60)
            time.sleep(2.0)  # a little driving on the new model
        swap_res = sup.stop("car-swap").json_result()  # it printed its result on SIGTERM
        swapped = pushed and swap_res.get("swaps", 0) >= 1 and swap_res.get("model_version") == new_car
        self.done(
            p,
            t0,
            f"gate {'promoted ' + new_car if pushed else 'kept ' + str(new_car)}; "
            f"pushed {pushed}, swapped mid-drive {swapped}",
            run=run2.get("run"),
            gate=run2.get("gate"),
            report=run2.get("report"),
            swap_drive={k: swap_res.get(k) for k in ("frames", "swaps", "model_version", "autonomy")},
        )

        # 5. drive again ---------------------------------------------------------------------
        p, t0 = self.phase("the car drives the unseen track again"), time.monotonic()
        after = self._drive(sup, "drive-2", logs / "car-drive-2", car_env)
        self.done(p, t0, self._drive_line(after), **after)

        sizes = {t: reg.package_path(t, v).stat().st_size for t, v in run2.get("current", {}).items() if v}
        return {
            "phases": [
                {"name": x.name, "ok": x.ok, "seconds": x.seconds, "result": x.line} for x in self.phases
            ],
            "model_versions": {
                "car_before": cur["car"],
                "car_after": new_car,
                "edge": run2["current"].get("edge"),
                "car_drive_1": before.get("model_version"),
                "car_drive_2": after.get("model_version"),
            },
            "package_bytes": sizes,
            "autonomy_before": before.get("autonomy"),
            "autonomy_after": after.get("autonomy"),
            "mean_abs_cte_before_m": before.get("mean_abs_cte_m"),
            "mean_abs_cte_after_m": after.get("mean_abs_cte_m"),
            "exit_rate": after.get("exit_rate"),
            "offload_rate": after.get("offload_rate"),
            "edge_used_rate": after.get("edge_used_rate"),
            "rtt_ms": (after.get("offload") or {}).get("rtt_ms"),
            "pushed": pushed,
            "swapped": swapped,
            "track": EVAL_TRACK,
            "scene_seed": a.scene_seed,
            "latency_ms": a.latency_ms,
        }

    def _upload(self, sup: Supervisor, path: Path, name: str) -> dict[str, Any]:
        return self.run_child(
            sup,
            f"upload-{name}",
            ["upload", str(path), "--broker", self.url, "--json"],
            120,
            env={"EDGEPILOT_CAR_ID": CAR},
        )

    def _drive(self, sup: Supervisor, name: str, record: Path, env: dict[str, str]) -> dict[str, Any]:
        a = self.args
        return self.run_child(
            sup,
            name,
            self.car_drive_args(
                "--laps",
                str(a.eval_laps),
                "--max-seconds",
                str(60.0 * a.eval_laps),
                "--record",
                str(record),
                "--scene-seed",
                str(a.scene_seed),
                "--latency-ms",
                str(a.latency_ms),
            ),
            600,
            env=env,
        )

    @staticmethod
    def _drive_line(r: dict[str, Any]) -> str:
        return (
            f"autonomy {r.get('autonomy')}, {r.get('interventions')} interventions, mean |CTE| "
            f"{r.get('mean_abs_cte_m')} m, exits {r.get('exit_rate')}, offload {r.get('offload_rate')}"
        )


def final_table(res: dict[str, Any]) -> str:
    rows = [
        ["autonomy (before -> after)", f"{res['autonomy_before']} -> {res['autonomy_after']}"],
        [
            "mean |CTE| m (before -> after)",
            f"{res['mean_abs_cte_before_m']} -> {res['mean_abs_cte_after_m']}",
        ],
        ["exit histogram (after)", res["exit_rate"]],
        ["offload rate / edge answers used", f"{res['offload_rate']} / {res['edge_used_rate']}"],
        ["offload round trip ms", res["rtt_ms"]],
        [
            "car model before -> after",
            f"{res['model_versions']['car_before']} -> {res['model_versions']['car_after']}",
        ],
        ["edge model", res["model_versions"]["edge"]],
        ["package bytes", res["package_bytes"]],
        ["pushed / swapped mid-drive", f"{res['pushed']} / {res['swapped']}"],
        ["elapsed", f"{res['elapsed_s']} s"],
    ]
    return table(
        rows, ["", f"track {res['track']}, scene {res['scene_seed']}, latency {res['latency_ms']} ms"]
    )


def run(args: Any) -> dict[str, Any]:
    res = Demo(args).run()
    print(final_table(res), file=sys.stderr)
    return res
