"""The ``edgepilot`` command line: finds each package's commands, shared flags, errors.

Commands are not named here. Every package that has some (the library itself,
``vehicle``, ``edge_node``, ``cloud_trainer``, ``testbed``) lists them as ``Command``
entries in its own ``commands`` module, next to their arguments, and registers that list
in the ``edgepilot.commands`` entry-point group (pyproject.toml). A command's handler is a
``"module:function"`` string inside the package that registers it: the module is imported
only when the command runs, so ``edgepilot --help`` is fast and a car without torch can
still run ``edgepilot drive``. A handler takes the parsed arguments and returns a result
dict: printed as a table, and with ``--json`` as one JSON object on the last line of
stdout. Logs go to stderr. An ``EdgepilotError`` becomes one line and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from edgepilot import EdgepilotError, __version__
from edgepilot.extras import EXTRA_FOR, missing

ENTRY_POINTS = "edgepilot.commands"

GROUPS = {
    "sim": "the built-in simulator: drive, score, record",
    "bench": "benchmarks (JSON out): {leaves}",
    "data": "driving-log tools: DonkeyCar tub import/export, info, migrate",
    "models": "the cloud's model registry: list, promote, rollback",
    "profile": "profiles: convert a DonkeyCar config",
    "fl": "federated fine-tuning: server and client",
}
"""Help of the command groups; their leaves come from the packages (``{leaves}``: their names)."""

ORDER = ("sim", "replay", "collect", "drive", "train", "eval", "calibrate", "compress", "keys")
"""The first commands ``--help`` lists, in a newcomer's order; the rest follow by name."""


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # ("sim", "drive") is ``edgepilot sim drive``
    help: str
    handler: str  # "package.module:function", inside the package that registers it
    arguments: Callable[[argparse.ArgumentParser], Any] | None = None
    description: str | None = None


def add_broker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="mqtt://HOST:PORT (default: the profile's, else mqtt://127.0.0.1:1883)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv: debug)"
    )
    p.add_argument("--profile", help="profile name in launch/profiles/ or a path to a TOML file")


def discover() -> list[Command]:
    """Every registered command; a handler outside its registering package is refused
    (the layers: a package's commands run that package's code)."""
    found: list[Command] = []
    for ep in entry_points(group=ENTRY_POINTS):
        top = ep.value.split(".", 1)[0].split(":", 1)[0]
        for cmd in ep.load():
            if cmd.handler.split(".", 1)[0].split(":", 1)[0] != top:
                raise EdgepilotError(
                    f"command {' '.join(cmd.path)} of {top} names a handler in another package"
                )
            found.append(cmd)
    return found


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def build_parser(commands: Iterable[Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgepilot",
        description=(
            "edgepilot: record, train, drive. An autonomous RC-car stack: an early-exit steering "
            "CNN on the car, hard frames offloaded to an edge node over MQTT, a cloud trainer that "
            "retrains and pushes signed models. Start with `edgepilot sim drive --pilot keyboard` "
            "or `edgepilot demo`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"edgepilot {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, Any] = {}
    cmds = sorted(discover() if commands is None else commands, key=lambda c: (_rank(c.path[0]), c.path))
    for cmd in cmds:
        sub = top
        for depth, name in enumerate(cmd.path[:-1]):
            if name not in groups:
                leaves = sorted(
                    {c.path[depth + 1] for c in cmds if c.path[: depth + 1] == cmd.path[: depth + 1]}
                )
                text = GROUPS.get(name, "").format(leaves=", ".join(leaves))
                g = sub.add_parser(name, help=text, description=text)
                groups[name] = g.add_subparsers(dest=f"sub{depth}", metavar="SUBCOMMAND", required=True)
            sub = groups[name]
        p = sub.add_parser(cmd.path[-1], help=cmd.help, description=cmd.description or cmd.help)
        _common(p)
        if cmd.arguments is not None:
            cmd.arguments(p)
        p.set_defaults(handler=cmd.handler, command_name=" ".join(cmd.path))
    return parser


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    from edgepilot.progress import flat_rows, table

    if as_json:
        print(json.dumps(result, default=str))
        return
    rows = flat_rows(result)
    if rows:
        print(table(rows))


def _run(args: argparse.Namespace) -> int:
    module, _, func = args.handler.partition(":")
    name = args.command_name
    try:
        result = getattr(importlib.import_module(module), func)(args)
    except EdgepilotError as e:
        print(f"edgepilot {name}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        top = (e.name or "").partition(".")[0]
        if top not in EXTRA_FOR:
            raise
        print(f"edgepilot {name}: error: {missing(top, 'this command')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"edgepilot {name}: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, int):
        return result
    if result is not None:
        _print_result(result, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 0
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # OpenMP threads that wait for work spin by default: with intra-op threads on a machine
    # whose cores are busy (the edge's batches, training), spinning starved the real work
    # (an edge's batched throughput fell 9x under load). Passive waiting costs nothing
    # measurable when the cores are free. Must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return _run(args)


if __name__ == "__main__":
    raise SystemExit(main())
