"""The library's own commands: model (train, eval, calibrate, compress, keys), data,
simulator tracks, and the single-process benchmarks (model, record, sim)."""

from __future__ import annotations

import argparse

from edgepilot.cli import Command
from edgepilot.model import cli as model_cli  # the model commands' arguments live beside their handlers


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", metavar="LOG", help="driving logs (or folders of logs)")
    p.add_argument("--out", required=True, metavar="PKG", help="model package to write")
    p.add_argument("--arch", choices=["early-exit", "pilotnet", "edge"], default="early-exit")
    p.add_argument("--epochs", type=int)
    p.add_argument("--teacher", metavar="PKG", help="distil from this (larger) model package")
    p.add_argument(
        "--init",
        metavar="PKG",
        help="start from this fp32 package's weights (same --arch; its training sessions stay out of validation)",
    )
    p.add_argument(
        "--confidence",
        choices=["entropy", "learned"],
        default="entropy",
        help="what an early exit's confidence is: its steering distribution's entropy, or an output "
        "trained to predict its own error (docs/model.md)",
    )
    p.add_argument(
        "--mutual",
        type=float,
        metavar="GAMMA",
        help="share the final head learns from exit 1's answers (default 0.5: without it the two heads "
        "drift apart and fewer frames leave early; 0.7, the cloud's cold runs: more frames early on small "
        "logs; 0: it learns from the labels alone; docs/model.md)",
    )
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
    p.add_argument(
        "--head1",
        metavar="ROWS,COLS,HIDDEN",
        help="early-exit: exit 1's head, pooled grid and hidden units (default 3,7,64; the "
        "variants measured against it: docs/benchmarks.md#model, fourteenth round)",
    )
    p.add_argument(
        "--labels",
        default="human,expert",
        metavar="SRC,SRC",
        help="label sources to train on: human, expert, edge (the edge's answers as a teacher); "
        "autopilot frames nobody labelled are always skipped (default human,expert)",
    )
    p.add_argument("--key", help="private key to sign with (default: keys/ of the repo)")


def _eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", metavar="PKG")
    p.add_argument("logs", nargs="+", metavar="LOG")


def _keys(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="keys", help="directory for the pairs (signing.key/.pub, announce.key/.pub; cars/, nodes/)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--role",
        choices=["signing", "announce"],
        help="make only this pair: 'signing' signs packages, 'announce' signs model announcements",
    )
    which.add_argument(
        "--car",
        metavar="ID",
        help="a car's federated-learning pair instead (OUT/cars/ID.key, .pub): it signs the car's "
        "weight updates; the server trusts the .pub (fl server --client-keys)",
    )
    which.add_argument(
        "--node",
        metavar="ID",
        help="an edge node's federated-learning pair (OUT/nodes/ID.key, .pub), for `fl proxy`",
    )
    p.add_argument(
        "--for",
        dest="for_cars",
        metavar="CAR,CAR",
        help="with --node: the cars it may train for (written to OUT/nodes/ID.cars, read by the server)",
    )


def _bench_record(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--out", help="directory to write into (default: a temporary one)")


def _bench_sim(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track", default="oval")
    p.add_argument("--steps", type=int, default=3000)


def _tracks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="write a generated track to this JSON file")
    p.add_argument("--generate", type=int, metavar="SEED", help="generate a random closed track from SEED")


def _one_log(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", metavar="LOG")


def _two(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="OUT")


def _migrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", metavar="LOG", help="driving logs (or folders of logs) to bring to this schema")


COMMANDS = [
    Command(("train",), "train a model package from driving logs", "edgepilot.model.cli:train", _train),
    Command(("eval",), "open-loop evaluation of a model package on logs", "edgepilot.model.cli:evaluate", _eval),
    Command(
        ("calibrate",),
        "re-choose exit and offload thresholds of an fp32 package (another speed/accuracy point)",
        "edgepilot.model.cli:calibrate",
        model_cli.calibrate_arguments,
    ),
    Command(("compress",), "int8 quantisation (+ pruning) of a model package", "edgepilot.model.cli:compress", model_cli.compress_arguments),
    Command(
        ("keys",),
        "make the fleet's Ed25519 key pairs: one signs model packages, one signs announcements "
        "(--car/--node: a federated-learning client's pair)",
        "edgepilot.keys:cli",
        _keys,
    ),
    Command(("bench", "model"), "per-frame compute of a model vs a baseline, side by side", "edgepilot.model.cli:bench", model_cli.bench_arguments),
    Command(("bench", "record"), "driving-log recorder throughput vs bare JPEG encoding", "edgepilot.bench_record:run", _bench_record),
    Command(("bench", "sim"), "simulator steps (physics + render) per second, one core", "edgepilot.sim.cli:bench", _bench_sim),
    Command(("sim", "tracks"), "list the shipped tracks, or generate a new one", "edgepilot.sim.cli:tracks", _tracks),
    Command(("data", "info"), "records, duration and a steering histogram of a log", "edgepilot.data_cli:info", _one_log),
    Command(("data", "import-donkey"), "convert a DonkeyCar tub (v2) into a driving log", "edgepilot.donkey:import_cli", _two),
    Command(("data", "export-donkey"), "convert a driving log into a DonkeyCar tub (v2)", "edgepilot.donkey:export_cli", _two),
    Command(
        ("data", "migrate"),
        "bring driving logs to this schema in place (labels say where they came from)",
        "edgepilot.data_cli:migrate",
        _migrate,
    ),
]
