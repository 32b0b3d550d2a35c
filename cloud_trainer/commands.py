"""The cloud trainer's commands: ``edgepilot cloud``, the model registry (``models``) and the
fleet dashboard (``dashboard``)."""

from __future__ import annotations

import argparse

from edgepilot.cli import Command, add_broker
from edgepilot.fl.options import EXIT_TOPK, TOPK


def _cloud(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    p.add_argument("--store", help="store directory (logs, model registry)")
    p.add_argument("--dashboard", action="store_true", help="serve the fleet dashboard too (the profile's [dashboard])")
    p.add_argument("--dashboard-port", type=int, metavar="P", help="its port (default: the profile's, 8080)")


def _dashboard(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    p.add_argument("--port", type=int, metavar="P", help="HTTP port (default: the profile's [dashboard] port, 8080; 0: any free one)")
    p.add_argument(
        "--bind",
        metavar="ADDR",
        help="address to listen on (default 127.0.0.1: read-only without login; any other "
        "address needs the operator's token for everything)",
    )
    p.add_argument("--store", metavar="DIR", help="the cloud trainer's store: registry, runs, plots (default: the profile's)")


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store directory")
    p.add_argument("--target", choices=["car", "edge"], default="car")


def _promote(p: argparse.ArgumentParser) -> None:
    _store(p)
    p.add_argument("version")
    add_broker(p)


def _rollback(p: argparse.ArgumentParser) -> None:
    _store(p)
    add_broker(p)


def _fl_server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store directory (registry, reports; its logs are the default reference)")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where cars connect (Flower gRPC; default: the profile's [fl] listen, 127.0.0.1:9092). Off "
        "loopback it needs --tls-cert/--tls-key and --client-keys, or --insecure",
    )
    p.add_argument("--init", metavar="PKG", help="fp32 car package to start from (default: the current car model's)")
    p.add_argument("--reference", nargs="+", metavar="LOG", help="the server's own logs: exit calibration, int8, gate")
    # defaults: the settings `edgepilot bench fl` measured (docs/benchmarks.md)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--cars", type=int, default=2, help="cars a round waits for (up to --wait s)")
    p.add_argument("--min-cars", type=int, help="fewest cars a round goes on with (default: --cars)")
    p.add_argument("--wait", type=float, default=120.0, help="seconds a round waits for --cars to connect")
    p.add_argument("--round-timeout", type=float, default=600.0, help="seconds before a car is a straggler")
    p.add_argument("--strategy", choices=["fedavg", "fedprox"], default="fedprox")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal strength")
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3, help="local learning rate, cosine-decayed over the rounds")
    p.add_argument("--compress", choices=["none", "int8", "topk", "topk-int8"], default="topk-int8")
    p.add_argument("--topk", type=float, default=TOPK, help="share of each tensor's values a car sends (top-k)")
    p.add_argument(
        "--exit-topk",
        type=float,
        default=EXIT_TOPK,
        help="... of the early exits' heads (less: exit 1 lags the final head, fewer frames leave early)",
    )
    p.add_argument("--max-norm", type=float, default=1000.0, help="refuse updates with a larger L2 norm")
    p.add_argument("--eval-tracks", metavar="T1,T2", help="the gate's closed-loop tracks (default: the profile's)")
    p.add_argument("--workdir", default="var/fl", help="where the run keeps its packages")
    p.add_argument("--key", help="package signing key (default: keys/signing.key)")
    p.add_argument("--no-push", action="store_true", help="register and promote, but do not announce")
    add_broker(p)
    link = p.add_argument_group("the link (default: the profile's [fl]; docs/federated.md, docs/deploy.md)")
    link.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (chain) ...")
    link.add_argument("--tls-key", metavar="PEM", help="... and its private key")
    link.add_argument(
        "--tls-ca", metavar="PEM", help="the CA that signed --tls-cert, handed to Flower with it (optional)"
    )
    link.add_argument(
        "--client-keys",
        metavar="DIR",
        help="take signed updates only, from the keys in DIR: cars/<car>.pub, nodes/<node>.pub with "
        "nodes/<node>.cars (the cars that edge node may train for); made by `edgepilot keys --car/--node`",
    )
    link.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --listen without TLS or without client keys (a lab network you trust)",
    )


COMMANDS = [
    Command(("cloud",), "run the cloud trainer: ingest logs, retrain, gate, push", "cloud_trainer.service:cli", _cloud),
    Command(
        ("dashboard",),
        "the fleet in a browser: cars, edge nodes, training runs, model registry (default http://127.0.0.1:8080/)",
        "cloud_trainer.dashboard.cli:cli",
        _dashboard,
    ),
    Command(
        ("fl", "server"),
        "a federated fine-tuning run (Flower): rounds over the cars, then gate, register, push",
        "cloud_trainer.fl:cli",
        _fl_server,
    ),
    Command(("models", "list"), "list model versions", "cloud_trainer.registry:cli_list", _store),
    Command(("models", "promote"), "make a version current and push it", "cloud_trainer.registry:cli_promote", _promote),
    Command(("models", "rollback"), "put the previous version back on the fleet", "cloud_trainer.registry:cli_rollback", _rollback),
]
