"""``edgepilot bench fl --cars N``: federated fine-tuning against central retraining, side by side.

Everything runs on this machine, every part as in a deployment:

1. data: N simulated cars each drive their own track (the expert, randomised look,
   perturbations: ``sim drive --pilot expert --randomize --perturb 0.3 --record``), so no
   two cars see the same road (non-IID); the cloud drives a reference track of its own
   and a second one that its gate holds out; held-out tracks (driven by no car, nor by the
   cloud) give the evaluation frames;
2. the fleet's current model: trained on the cloud's reference log, compressed, promoted
   (its fp32 source kept), as the registry would hold it;
3. central retraining: the cloud's ``train`` on the union of the cars' logs and the
   reference log, then int8, as if every car had uploaded its logs;
4. federated: for each strategy (FedAvg, FedProx), a real ``fl server`` process and one
   client process per car (half ``fl client`` as on a car, half ``fl proxy`` as an edge
   node acting for a car), plus two misbehaving cars: one sends NaN in every round, one
   dies mid-round 1; rounds go on without them. The result goes through the server's gate,
   registry and int8 compression;
5. every model is evaluated the same way: held-out steering MAE (early exits on, as the
   car runs) and closed-loop autonomy on the held-out tracks (``scored_drives``).

Bytes: what the cars sent (Flower messages with the updates, as the server received
them) against what uploading their logs would send (the deterministic tar that
``edgepilot upload`` sends, per car).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.config import RetrainConfig
from edgepilot.fl.options import EXIT_TOPK, TOPK
from edgepilot.supervise import Supervisor

log = logging.getLogger(__name__)

CAR_TRACKS = ("chicane", "kidney", "s_bends", "triangle", "switchback", "random_7", "omega")
REFERENCE_TRACK = "oval"  # the cloud's own drive: the fleet's current model learnt it
GATE_TRACK = "random_42"  # the cloud's own held-out drive: what its gate measures MAE on
HELDOUT_TRACKS = ("rounded_square", "long_straights")


@dataclass
class BenchConfig:
    cars: int = 4
    laps: int = 2
    rounds: int = 12
    local_epochs: int = 2
    central_epochs: int = RetrainConfig.epochs  # as the cloud's (cold) car runs
    strategies: tuple[str, ...] = ("fedavg", "fedprox")
    mu: float = 0.01
    lr: float = 2e-3
    compress: str = "topk-int8"
    topk: float = TOPK
    exit_topk: float = EXIT_TOPK
    eval_seconds: float = 30.0
    workdir: str = "var/bench-fl"
    fresh: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.cars <= len(CAR_TRACKS):
            raise EdgepilotError(f"--cars must be between 2 and {len(CAR_TRACKS)}, got {self.cars}")


# -- data ----------------------------------------------------------------------------------


def record_all(cfg: BenchConfig, sup: Supervisor, data: Path) -> dict[str, list[str]]:
    """Expert logs: one per car (its own track), the reference, the held-out tracks; two
    recorders at a time. A log already there (same track, laps, seed) is reused."""
    jobs = [(f"car{i}-{t}", t, i + 1) for i, t in enumerate(CAR_TRACKS[: cfg.cars])]
    jobs.append((f"reference-{REFERENCE_TRACK}", REFERENCE_TRACK, 100))
    jobs.append((f"reference-{GATE_TRACK}", GATE_TRACK, 101))
    jobs += [(f"heldout-{t}", t, 200 + i) for i, t in enumerate(HELDOUT_TRACKS)]
    todo = [j for j in jobs if not (data / f"{j[0]}-l{cfg.laps}" / "records.jsonl").exists()]
    for k in range(0, len(todo), 2):
        for name, track, seed in todo[k : k + 2]:
            out = data / f"{name}-l{cfg.laps}"
            shutil.rmtree(out, ignore_errors=True)
            sup.edgepilot(
                f"rec-{name}", "sim", "drive", "--track", track, "--pilot", "expert", "--randomize",
                "--perturb", "0.3", "--laps", str(cfg.laps), "--headless", "--seed", str(seed),
                "--record", str(out), expect_exit=True,
            )  # fmt: skip
        for name, _, _ in todo[k : k + 2]:
            if sup.wait(f"rec-{name}", timeout=1800) != 0:
                raise EdgepilotError(f"recording {name} failed: {sup.children[f'rec-{name}'].tail()}")
    logs = {name: str(data / f"{name}-l{cfg.laps}") for name, _, _ in jobs}
    return {
        "cars": [logs[j[0]] for j in jobs[: cfg.cars]],
        "reference": [logs[f"reference-{REFERENCE_TRACK}"]],
        "gate": [logs[f"reference-{GATE_TRACK}"]],
        "heldout": [logs[f"heldout-{t}"] for t in HELDOUT_TRACKS],
    }


def log_bytes(logs: list[str]) -> int:
    """What uploading these logs sends: the tar ``edgepilot upload`` packs, per log."""
    from vehicle.upload import pack_log

    total = 0
    for p in logs:
        packed = pack_log(p)
        total += packed.size
        packed.close()
    return total


# -- models --------------------------------------------------------------------------------


def central(logs: list[str], out: Path, epochs: int) -> dict[str, Any]:
    """The cloud's retraining of the car model on ``logs`` (train, then int8), timed. A
    result of the same logs and epochs in ``out`` is reused (``cached``: its time is the
    one measured when it was trained); ``--fresh`` starts over."""
    from edgepilot.model.compress import compress_package
    from edgepilot.model.train import TrainConfig, train

    recipe = {"logs": logs, "epochs": epochs, "mutual": RetrainConfig.mutual}  # as the cloud's cold runs
    done = out / "result.json"
    if done.exists():
        prev = json.loads(done.read_text())
        if all(prev.get(k) == v for k, v in recipe.items()) and Path(prev["package"]).exists():
            return {**prev, "cached": True}
    t0 = time.time()
    res = train(logs, out / "car-fp32.eppkg", TrainConfig(arch="early-exit", epochs=epochs, mutual=recipe["mutual"]))
    comp = compress_package(res["package"], str(out / "car.eppkg"), logs)
    result = {**recipe, "fp32": res["package"], "package": comp["package"]}
    result["train_s"] = round(time.time() - t0, 1)
    done.write_text(json.dumps(result))
    return result


def seed_store(store: Path, base: dict[str, Any]) -> None:
    """A registry whose current car model is ``base`` (int8, its fp32 source kept)."""
    from cloud_trainer.registry import Registry
    from cloud_trainer.store import open_store

    shutil.rmtree(store, ignore_errors=True)
    reg = Registry(open_store(str(store)))
    entry = reg.add("car", base["package"], gate={"passed": True, "checks": [], "against": None})
    reg.add_source(entry["version"], base["fp32"])
    reg.promote("car", entry["version"])


def federated(
    cfg: BenchConfig, sup: Supervisor, strategy: str, store: Path, data: dict[str, list[str]], work: Path
) -> dict[str, Any]:
    """One federated run: the server and every car as processes; the server's summary and
    each client's own (bytes, training seconds, peak memory)."""
    from edgepilot.broker import free_port

    addr = f"127.0.0.1:{free_port()}"
    chaos = [("garbage", "nan", "0"), ("dropout", "drop", "1")]
    sup.edgepilot(
        f"fl-server-{strategy}", "fl", "server", "--store", str(store), "--listen", addr,
        "--reference", *data["reference"], *data["gate"], "--rounds", str(cfg.rounds), "--cars", str(cfg.cars + len(chaos)),
        "--min-cars", str(cfg.cars), "--wait", "600", "--round-timeout", "1800", "--strategy", strategy,
        "--mu", str(cfg.mu), "--lr", str(cfg.lr), "--local-epochs", str(cfg.local_epochs), "--compress", cfg.compress,
        "--topk", str(cfg.topk), "--exit-topk", str(cfg.exit_topk), "--eval-tracks", "", "--workdir", str(work), "--no-push", "--json",
        expect_exit=True,
    )  # fmt: skip
    clients = []
    for i, logdir in enumerate(data["cars"]):
        kind = ("client", "--car", f"car{i}") if i % 2 == 0 else ("proxy", "--car", f"car{i}")
        name = f"fl-{kind[0]}-car{i}-{strategy}"
        sup.edgepilot(
            name,
            "fl",
            *kind,
            logdir,
            "--server",
            addr,
            "--connect-timeout",
            "600",
            "--json",
            expect_exit=True,
        )
        clients.append(name)
    for who, fault, rnd in chaos:
        sup.edgepilot(
            f"fl-{who}-{strategy}", "fl", "client", *data["reference"], "--car", who, "--server", addr,
            "--max-frames", "32", "--fault", fault, "--fault-round", rnd, "--connect-timeout", "600",
            expect_exit=True,
        )  # fmt: skip
    if sup.wait(f"fl-server-{strategy}", timeout=7200) != 0:
        raise EdgepilotError(f"the federated server failed: {sup.children[f'fl-server-{strategy}'].tail()}")
    res = sup.children[f"fl-server-{strategy}"].json_result()
    per_client = []
    for name in clients:
        sup.wait(name, timeout=120)
        per_client.append({k: v for k, v in sup.children[name].json_result().items() if k != "per_round"})
    for who, _, _ in chaos:
        sup.stop(f"fl-{who}-{strategy}")
    return {"server": res, "clients": per_client}


def evaluate(pkg: str, frames: list, labels: Any, seconds: float) -> dict[str, Any]:
    """Held-out MAE (early exits on) and closed-loop scores on the held-out tracks."""
    from cloud_trainer.retrain import evaluate_package
    from edgepilot.config import RetrainConfig

    cfg = RetrainConfig(eval_tracks=list(HELDOUT_TRACKS), eval_seconds=seconds)
    r = evaluate_package(Path(pkg), None, frames, labels, cfg)
    cl = r["closed_loop"]
    return {
        "mae": r["steering_mae"],
        # the share of frames each exit answered (the last: the final head), and offloaded
        "exit_rate": r["exit_rate"],
        "offload_rate": r["offload_rate"],
        "autonomy": cl["autonomy"],
        "mean_abs_cte_m": cl["mean_abs_cte_m"],
        "per_track": {t: s["autonomy"] for t, s in cl["tracks"].items()},
        "version": r["version"],
    }


# -- the benchmark -------------------------------------------------------------------------


def bench(cfg: BenchConfig) -> dict[str, Any]:
    from edgepilot.model.evaluate import load_frames

    work = Path(cfg.workdir)
    if cfg.fresh:
        shutil.rmtree(work, ignore_errors=True)
    t_start = time.time()
    out: dict[str, Any] = {"cars": cfg.cars, "rounds": cfg.rounds, "local_epochs": cfg.local_epochs}
    out.update(lr=cfg.lr, mu=cfg.mu)
    with Supervisor(work / "proc") as sup:
        data = record_all(cfg, sup, work / "data")
        frames, labels = load_frames(data["heldout"], 4000)
        base = central(data["reference"], work / "base", cfg.central_epochs)
        cen = central(data["cars"] + data["reference"], work / "central", cfg.central_epochs)
        runs = {}
        for strategy in cfg.strategies:
            store = work / f"store-{strategy}"
            seed_store(store, base)
            t0 = time.time()
            runs[strategy] = federated(cfg, sup, strategy, store, data, work / f"fl-{strategy}")
            runs[strategy]["wall_s"] = round(time.time() - t0, 1)
    scores = {"base": evaluate(base["package"], frames, labels, cfg.eval_seconds)}
    scores["central"] = evaluate(cen["package"], frames, labels, cfg.eval_seconds)
    for strategy, r in runs.items():
        pkg = r["server"].get("package")
        if pkg:
            scores[strategy] = evaluate(pkg, frames, labels, cfg.eval_seconds)
    return summarize(cfg, out, data, cen, runs, scores, time.time() - t_start)


def summarize(
    cfg: BenchConfig,
    out: dict[str, Any],
    data: dict[str, list[str]],
    cen: dict[str, Any],
    runs: dict[str, Any],
    scores: dict[str, Any],
    elapsed: float,
) -> dict[str, Any]:
    """The contract's keys for the strategy with the lower held-out MAE, and everything else."""
    fl = {s: r for s, r in runs.items() if s in scores}
    if not fl:
        raise EdgepilotError("no federated run produced a model: see var/bench-fl/proc/")
    best = min(fl, key=lambda s: scores[s]["mae"])
    srv = runs[best]["server"]
    lb = log_bytes(data["cars"])
    cars = {f"car{i}" for i in range(cfg.cars)}  # the fleet; the two misbehaving cars apart
    fb = sum(n for r in srv["rounds"] for car, n in r["bytes_by_car"].items() if car in cars)
    out.update(
        strategy=best,
        fl_mae=scores[best]["mae"],
        central_mae=scores["central"]["mae"],
        mae_ratio=round(scores[best]["mae"] / scores["central"]["mae"], 3),
        autonomy=scores[best]["autonomy"],
        central_autonomy=scores["central"]["autonomy"],
        fl_bytes=fb,
        log_bytes=lb,
        bytes_ratio=round(lb / max(fb, 1), 1),
        fl_wall_s=runs[best]["wall_s"],
        central_wall_s=cen["train_s"],
        central_cached=bool(cen.get("cached")),
        robustness={
            r["round"]: {
                "accepted": len(r["accepted"]),
                "refused": r["refused"],
                "failures": len(r["failures"]),
            }
            for r in srv["rounds"][:1]
        },
        gate=srv["targets"]["car"]["gate"],
        models=scores,
        runs={
            s: {"federated": r["server"]["federated"], "wall_s": r["wall_s"], "clients": r["clients"]}
            for s, r in runs.items()
        },
        frames={"cars": [_frames(p) for p in data["cars"]], "reference": _frames(data["reference"][0])},
        compress=f"{cfg.compress}@{cfg.topk:g}/{cfg.exit_topk:g}",
        elapsed_s=round(elapsed, 1),
    )
    return out


def _frames(log: str) -> int:
    return sum(1 for line in (Path(log) / "records.jsonl").read_text().splitlines() if '"op"' not in line)


def run(args: Any) -> dict[str, Any]:
    cfg = BenchConfig(
        cars=args.cars,
        laps=args.laps,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        central_epochs=args.epochs,
        strategies=tuple(args.strategies.split(",")),
        mu=args.mu,
        lr=args.lr,
        compress=args.compress,
        topk=args.topk,
        exit_topk=args.exit_topk,
        eval_seconds=args.eval_seconds,
        workdir=args.workdir,
        fresh=args.fresh,
    )
    res = bench(cfg)
    Path(cfg.workdir, "result.json").write_text(json.dumps(res, indent=1, default=str))
    return res
