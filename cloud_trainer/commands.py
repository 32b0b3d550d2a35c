"""The cloud trainer's commands: ``edgepilot cloud`` and the model registry (``models``)."""

from __future__ import annotations

import argparse

from edgepilot.cli import Command, add_broker


def _cloud(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    p.add_argument("--store", help="store directory (logs, model registry)")


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
    Command(("models", "list"), "list model versions", "cloud_trainer.registry:cli_list", _store),
    Command(("models", "promote"), "make a version current and push it", "cloud_trainer.registry:cli_promote", _promote),
    Command(("models", "rollback"), "put the previous version back on the fleet", "cloud_trainer.registry:cli_rollback", _rollback),
]
