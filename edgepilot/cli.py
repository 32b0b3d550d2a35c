"""The ``edgepilot`` command line: one tree of subcommands, thin wiring only.

Each leaf names its handler as ``"module:function"``; the module is imported only when
that command runs, so ``edgepilot --help`` is fast and a car without the cloud extras
can still run ``edgepilot drive``. A handler takes the parsed arguments and returns a
result dict: printed as a table, and with ``--json`` as one JSON object on the last line
of stdout. Logs go to stderr. An ``EdgepilotError`` becomes one line and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from edgepilot import EdgepilotError, __version__

NOT_BUILT = 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv: debug)"
    )
    p.add_argument("--profile", help="profile name in launch/profiles/ or a path to a TOML file")


def _broker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="mqtt://HOST:PORT (default: the profile's, else mqtt://127.0.0.1:1883)")


def _sim_look(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", choices=["max", "realtime"], help="simulated time as fast as possible, or paced")
    p.add_argument("--scene-seed", type=int, help="draw the world's look from this seed (0: plain look)")
    p.add_argument("--latency-ms", type=float, help="delay every actuator command by this many ms")


class _Tree:
    """Builds nested subparsers from a compact table."""

    def __init__(self) -> None:
        self.parser = argparse.ArgumentParser(
            prog="edgepilot",
            description=(
                "edgepilot: record, train, drive. An autonomous RC-car stack: an early-exit steering "
                "CNN on the car, hard frames offloaded to an edge node over MQTT, a cloud trainer that "
                "retrains and pushes signed models. Start with `edgepilot sim drive --pilot keyboard` "
                "or `edgepilot demo`."
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.parser.add_argument("--version", action="version", version=f"edgepilot {__version__}")
        self.sub = self.parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        self,
        sub: Any,
        name: str,
        handler: str | None,
        help: str,
        build: Callable[[argparse.ArgumentParser], None] | None = None,
        issue: int | None = None,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        _common(p)
        if build:
            build(p)
        p.set_defaults(handler=handler, issue=issue)
        return p


def build_parser() -> argparse.ArgumentParser:
    t = _Tree()
    s = t.sub

    # -- simulator -----------------------------------------------------------------
    sim = s.add_parser("sim", help="the built-in simulator: drive, score, record")
    simsub = sim.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    def sim_drive(p: argparse.ArgumentParser) -> None:
        p.add_argument("--track", help="track name in datasets/tracks/ or a track JSON file")
        p.add_argument("--pilot", choices=["expert", "model", "keyboard"], default="expert")
        p.add_argument("--model", help="model package (.eppkg) for --pilot model")
        p.add_argument("--laps", type=int, help="laps to drive (default 1)")
        p.add_argument("--record", metavar="DIR", help="record the drive as a driving log in DIR")
        p.add_argument("--edge", action="store_true", help="offload hard frames to the edge node")
        _broker(p)
        _sim_look(p)
        p.add_argument("--headless", action="store_true", help="no window even when a display exists")
        p.add_argument(
            "--perturb", type=float, default=0.0, help="expert: steering perturbation strength (0..1)"
        )
        p.add_argument(
            "--randomize", action="store_true", help="domain randomisation per frame (training data)"
        )
        p.add_argument("--seed", type=int, default=0, help="seed of perturbations and randomisation")
        p.add_argument("--max-seconds", type=float, help="stop after this much simulated time")
        p.add_argument(
            "--plot", metavar="PNG", help="trajectory plot path (default: next to the log, or none)"
        )
        p.add_argument(
            "--follow-fleet",
            action="store_true",
            help="--pilot model: take models the cloud pushes (hot-swapped mid-drive); "
            "without --model, wait for the fleet's current one",
        )

    t.add(
        simsub,
        "drive",
        "edgepilot.sim.cli:drive",
        "closed-loop drive in the simulator, scored per the contract",
        sim_drive,
    )

    def sim_tracks(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="write a generated track to this JSON file")
        p.add_argument(
            "--generate", type=int, metavar="SEED", help="generate a random closed track from SEED"
        )

    t.add(
        simsub,
        "tracks",
        "edgepilot.sim.cli:tracks",
        "list the shipped tracks, or generate a new one",
        sim_tracks,
    )

    # -- replay --------------------------------------------------------------------
    def replay(p: argparse.ArgumentParser) -> None:
        p.add_argument("log", metavar="LOG", help="driving log directory")
        p.add_argument("--model", help="model package (default: the profile's)")
        p.add_argument("--rate", choices=["max", "realtime"], default="max")
        p.add_argument("--edge", action="store_true", help="offload hard frames to the edge node")
        _broker(p)

    t.add(
        s,
        "replay",
        "vehicle.cli:replay",
        "recorded frames through the onboard loop (simulator replay mode)",
        replay,
        5,
    )

    # -- model ---------------------------------------------------------------------
    def train(p: argparse.ArgumentParser) -> None:
        p.add_argument("logs", nargs="+", metavar="LOG", help="driving logs (or folders of logs)")
        p.add_argument("--out", required=True, metavar="PKG", help="model package to write")
        p.add_argument("--arch", choices=["early-exit", "pilotnet", "edge"], default="early-exit")
        p.add_argument("--epochs", type=int)
        p.add_argument("--teacher", metavar="PKG", help="distil from this (larger) model package")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--widths",
            metavar="W,W,...",
            help="channel widths of the architecture (default: edgepilot.model.nets.DEFAULT_WIDTHS)",
        )
        p.add_argument(
            "--head0",
            metavar="ROWS,COLS,HIDDEN",
            help="early-exit: exit 0's head, pooled grid and hidden units (default 2,6,32; "
            "5,13,64 makes exit 0 about as accurate as exit 1, docs/benchmarks.md#model)",
        )
        p.add_argument("--key", help="private key to sign with (default: keys/ of the repo)")

    t.add(s, "train", "edgepilot.model.cli:train", "train a model package from driving logs", train, 4)

    def eval_(p: argparse.ArgumentParser) -> None:
        p.add_argument("package", metavar="PKG")
        p.add_argument("logs", nargs="+", metavar="LOG")

    t.add(
        s, "eval", "edgepilot.model.cli:evaluate", "open-loop evaluation of a model package on logs", eval_, 4
    )

    def calibrate(p: argparse.ArgumentParser) -> None:
        p.add_argument("package", metavar="PKG", help="an fp32 package (compress afterwards)")
        p.add_argument(
            "logs", nargs="+", metavar="LOG", help="logs whose validation sessions to use (the training logs)"
        )
        p.add_argument("--out", required=True, metavar="PKG")
        p.add_argument(
            "--agree-tol",
            type=float,
            help="an exit answers when it agrees with the final head within this on >= 95%% of its "
            "frames (default 0.02; larger: faster, less accurate)",
        )
        p.add_argument(
            "--ok-tol",
            type=float,
            help="a local answer is fine within this of the label (default 0.05; smaller: more offloading)",
        )
        p.add_argument(
            "--max-offload", type=float, help="cap on the share of hard frames per exit (default 0.15)"
        )
        p.add_argument("--key", help="private key to sign with")

    t.add(
        s,
        "calibrate",
        "edgepilot.model.cli:calibrate",
        "re-choose exit and offload thresholds of an fp32 package (another speed/accuracy point)",
        calibrate,
        4,
    )

    def compress(p: argparse.ArgumentParser) -> None:
        p.add_argument("package", metavar="PKG")
        p.add_argument("--out", required=True, metavar="PKG")
        p.add_argument("--calib", nargs="+", metavar="LOG", help="logs to draw calibration frames from")
        p.add_argument(
            "--int8-logits",
            action="store_true",
            help="quantise the exits' last linear too (default: float logits, ~3%% lower steering MAE)",
        )
        p.add_argument("--key", help="private key to sign with")

    t.add(
        s,
        "compress",
        "edgepilot.model.cli:compress",
        "int8 quantisation (+ pruning) of a model package",
        compress,
        4,
    )

    def keys(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default="keys", help="directory for signing.key / signing.pub")
        p.add_argument("--force", action="store_true", help="overwrite existing keys")

    t.add(
        s, "keys", "edgepilot.model.cli:keys", "make an Ed25519 key pair for signing model packages", keys, 4
    )

    # -- benchmarks ----------------------------------------------------------------
    bench = s.add_parser("bench", help="benchmarks (JSON out): record, sim, model, loop, offload")
    bsub = bench.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    def b_record(p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=int, default=3000)
        p.add_argument("--out", help="directory to write into (default: a temporary one)")

    t.add(
        bsub,
        "record",
        "edgepilot.bench_record:run",
        "driving-log recorder throughput vs bare JPEG encoding",
        b_record,
    )

    def b_sim(p: argparse.ArgumentParser) -> None:
        p.add_argument("--track", default="oval")
        p.add_argument("--steps", type=int, default=3000)

    t.add(
        bsub,
        "sim",
        "edgepilot.sim.cli:bench",
        "simulator steps (physics + render) per second, one core",
        b_sim,
        3,
    )

    def b_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, metavar="PKG")
        p.add_argument("--baseline", required=True, metavar="PKG")
        p.add_argument("--data", required=True, nargs="+", metavar="LOG")

    t.add(
        bsub,
        "model",
        "edgepilot.model.cli:bench",
        "per-frame compute of a model vs a baseline, side by side",
        b_model,
        4,
    )

    def b_loop(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, metavar="PKG")
        p.add_argument("--data", required=True, metavar="LOG")

    t.add(
        bsub, "loop", "vehicle.cli:bench_loop", "the whole onboard loop in replay: fps and latency", b_loop, 5
    )

    def b_offload(p: argparse.ArgumentParser) -> None:
        _broker(p)
        p.add_argument("--vehicles", type=int, default=8)
        p.add_argument("--rate", type=float, default=30.0, help="frames per second per vehicle")
        p.add_argument("--duration", type=float, default=10.0, help="seconds")
        p.add_argument(
            "--saturate",
            action="store_true",
            help="instead: start edge nodes here (1 node batch 1, 1 node batched, 2 nodes) and "
            "measure each one's saturated requests/s in alternating rounds (--duration s each)",
        )
        p.add_argument("--rounds", type=int, default=3, help="--saturate: rounds per set-up")
        p.add_argument("--window", type=int, default=64, help="--saturate: requests kept in flight")
        p.add_argument("--model", help="--saturate: the edge nodes' model (default builtin:pilotnet)")

    t.add(
        bsub,
        "offload",
        "edge_node.bench:run",
        "offload round trips through a running edge node",
        b_offload,
        6,
    )

    # -- data ----------------------------------------------------------------------
    data = s.add_parser("data", help="driving-log tools: DonkeyCar tub import/export, info")
    dsub = data.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    t.add(
        dsub,
        "info",
        "edgepilot.data_cli:info",
        "records, duration and a steering histogram of a log",
        lambda p: p.add_argument("log", metavar="LOG"),
    )

    def two(p: argparse.ArgumentParser) -> None:
        p.add_argument("src", metavar="SRC")
        p.add_argument("dst", metavar="OUT")

    t.add(
        dsub,
        "import-donkey",
        "edgepilot.donkey:import_cli",
        "convert a DonkeyCar tub (v2) into a driving log",
        two,
    )
    t.add(
        dsub,
        "export-donkey",
        "edgepilot.donkey:export_cli",
        "convert a driving log into a DonkeyCar tub (v2)",
        two,
    )

    # -- the whole loop, and fleet plumbing ----------------------------------------
    def demo(p: argparse.ArgumentParser) -> None:
        p.add_argument("--headless", action="store_true", help="no pygame window even when a display exists")
        _broker(p)
        p.add_argument(
            "--workdir", default="var/demo", help="where the demo keeps its logs, store and models"
        )
        p.add_argument("--laps", type=int, default=2, help="expert laps per training track")
        p.add_argument("--eval-laps", type=int, default=2, help="laps of the evaluation drives")
        p.add_argument("--epochs", type=int, default=6, help="training epochs per cloud run")
        p.add_argument(
            "--gate-open",
            action="store_true",
            help="push the retrained car model whatever its quality checks say (latency is "
            "still checked): for tiny smoke runs, whose models drive at random",
        )
        p.add_argument("--max-frames", type=int, default=8000, help="cap on training frames per run")
        p.add_argument("--scene-seed", type=int, default=3, help="the evaluation drives' scene (0: plain)")
        p.add_argument(
            "--latency-ms", type=float, default=50.0, help="actuator latency of the evaluation drives"
        )
        p.add_argument(
            "--train-timeout", type=float, default=420.0, help="seconds to wait for a training run"
        )

    t.add(
        s,
        "demo",
        "edgepilot.demo:run",
        "the whole loop on one machine: collect, train, drive, offload, retrain, push",
        demo,
        8,
    )

    def upload(p: argparse.ArgumentParser) -> None:
        p.add_argument("log", metavar="LOG")
        _broker(p)

    t.add(
        s,
        "upload",
        "vehicle.upload:cli",
        "send a driving log to the cloud trainer (resumable, idempotent)",
        upload,
        7,
    )

    def edge(p: argparse.ArgumentParser) -> None:
        _broker(p)
        p.add_argument("--model", metavar="PKG", help="the edge model package")
        p.add_argument("--node-id")
        p.add_argument(
            "--tails",
            metavar="FILE|DIR",
            help="split-mode tails: a file, or a directory of them (one per car model)",
        )

    t.add(s, "edge", "edge_node.service:cli", "run an edge node: answer hard frames for the fleet", edge, 6)

    def cloud(p: argparse.ArgumentParser) -> None:
        _broker(p)
        p.add_argument("--store", help="store directory (logs, model registry)")

    t.add(
        s,
        "cloud",
        "cloud_trainer.service:cli",
        "run the cloud trainer: ingest logs, retrain, gate, push",
        cloud,
        7,
    )

    models = s.add_parser("models", help="the cloud's model registry: list, promote, rollback")
    msub = models.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    def store(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", help="store directory")
        p.add_argument("--target", choices=["car", "edge"], default="car")

    t.add(msub, "list", "cloud_trainer.registry:cli_list", "list model versions", store, 7)
    t.add(
        msub,
        "promote",
        "cloud_trainer.registry:cli_promote",
        "make a version current and push it",
        lambda p: (store(p), p.add_argument("version"), _broker(p)),
        7,
    )
    t.add(
        msub,
        "rollback",
        "cloud_trainer.registry:cli_rollback",
        "put the previous version back on the fleet",
        lambda p: (store(p), _broker(p)),
        7,
    )

    def drive(p: argparse.ArgumentParser) -> None:
        _broker(p)
        p.add_argument("--model", metavar="PKG")
        p.add_argument("--mode", choices=["user", "local_angle", "local"])
        p.add_argument("--edge", action="store_true")
        p.add_argument("--headless", action="store_true")

    t.add(
        s,
        "drive",
        "vehicle.cli:drive",
        "drive the real car on the autopilot (headless works, e.g. over SSH)",
        drive,
        5,
    )
    t.add(
        s,
        "collect",
        "vehicle.cli:collect",
        "drive the real car by keyboard or gamepad and record",
        lambda p: (_broker(p), p.add_argument("--record", metavar="DIR")),
        5,
    )
    return t.parser


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    from edgepilot.progress import flat_rows, table

    if not as_json:
        rows = flat_rows(result)
        if rows:
            print(table(rows))
    else:
        print(json.dumps(result, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None) or not hasattr(args, "handler"):
        parser.print_help()
        return 0 if not getattr(args, "command", None) else NOT_BUILT
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    name = " ".join(x for x in (args.command, getattr(args, "subcommand", None)) if x)
    module, _, func = args.handler.partition(":")
    # OpenMP threads that wait for work spin by default: with intra-op threads on a machine
    # whose cores are busy (the edge's batches, training), spinning starved the real work
    # (measured: an edge's batched throughput fell 9x under load). Passive waiting costs
    # nothing measurable when the cores are free. Must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ModuleNotFoundError, AttributeError) as e:
        if not str(getattr(e, "name", "") or "").startswith(module.split(".")[0]) and isinstance(
            e, ModuleNotFoundError
        ):
            raise
        issue = f" (issue #{args.issue})" if args.issue else ""
        print(f"edgepilot {name}: not built yet{issue}", file=sys.stderr)
        return NOT_BUILT
    try:
        result = fn(args)
    except EdgepilotError as e:
        print(f"edgepilot {name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"edgepilot {name}: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, int):
        return result
    if result is not None:
        _print_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
