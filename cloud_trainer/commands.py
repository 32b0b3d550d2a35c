"""The cloud trainer's commands: ``edgepilot cloud``, the model registry (``models``) and the
fleet dashboard (``dashboard``)."""

from __future__ import annotations

import argparse

from edgepilot.cli import Command, add_broker


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


COMMANDS = [
    Command(("cloud",), "run the cloud trainer: ingest logs, retrain, gate, push", "cloud_trainer.service:cli", _cloud),
    Command(
        ("dashboard",),
        "the fleet in a browser: cars, edge nodes, training runs, model registry (default http://127.0.0.1:8080/)",
        "cloud_trainer.dashboard.cli:cli",
        _dashboard,
    ),
    Command(("models", "list"), "list model versions", "cloud_trainer.registry:cli_list", _store),
    Command(("models", "promote"), "make a version current and push it", "cloud_trainer.registry:cli_promote", _promote),
    Command(("models", "rollback"), "put the previous version back on the fleet", "cloud_trainer.registry:cli_rollback", _rollback),
]
