"""The CLI contract (docs: ../shared CONTRACT.md): ``--json`` puts one JSON object with the
contract's keys on the last stdout line; every command has a working ``--help`` and a
handler that exists, inside the package that registers it; ``python -m edgepilot``
works; user errors are one line.

Commands are run as a user runs them (a subprocess) where the output streams matter, and
in-process where only argument parsing does (fast).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgepilot.cli as cli
from edgepilot import EdgepilotError
from edgepilot.cli import Command, build_parser, discover, main
from tests.helpers import SIM_DRIVE_KEYS

ROOT = Path(__file__).resolve().parents[2]
TUB = ROOT / "datasets" / "samples" / "donkey_tub"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "edgepilot", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple]:
    """(command words, parser) for every runnable command of the tree."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaves(sub, (*prefix, name))
            return
    yield prefix, parser


LEAVES = {" ".join(words): p for words, p in leaves(build_parser())}


def test_every_contract_command_is_in_the_tree():
    for cmd in [
        "sim drive",
        "replay",
        "train",
        "eval",
        "compress",
        "bench model",
        "bench loop",
        "bench offload",
        "bench record",
        "bench sim",
        "data import-donkey",
        "data export-donkey",
        "data info",
        "demo",
        "upload",
        "edge",
        "cloud",
        "drive",
        "collect",
    ]:
        assert cmd in LEAVES, cmd
        assert LEAVES[cmd].get_default("handler"), cmd


@pytest.mark.parametrize("cmd", sorted(LEAVES))
def test_help_works_for_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: edgepilot {cmd}")
    assert "--json" in out
    assert LEAVES[cmd].description.split()[0] in out  # says what the command does


def test_help_of_the_tree_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for word in ("sim", "bench", "data", "demo", "edge", "cloud"):
        assert word in out


def test_every_command_has_a_handler_that_exists():
    """No command is a stub: each handler imports and is callable."""
    for cmd, p in LEAVES.items():
        module, _, func = p.get_default("handler").partition(":")
        assert callable(getattr(importlib.import_module(module), func)), cmd


def test_each_package_registers_its_own_commands():
    """The library and every deployable list their commands (pyproject entry points);
    each handler lives in the package that registers it."""
    tops = {c.handler.split(".", 1)[0] for c in discover()}
    assert tops == {"edgepilot", "vehicle", "edge_node", "cloud_trainer", "testbed"}


def test_a_handler_in_another_package_is_refused(monkeypatch):
    class FakeEntryPoint:
        value = "vehicle.commands:COMMANDS"

        def load(self):
            return [Command(("sneaky",), "x", "cloud_trainer.service:cli")]

    monkeypatch.setattr(cli, "entry_points", lambda group: [FakeEntryPoint()])
    with pytest.raises(EdgepilotError, match="another package"):
        discover()


def test_python_dash_m_edgepilot_works():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"edgepilot {cli.__version__}"


@pytest.fixture(scope="module")
def imported_log(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "log"
    r = run_cli("data", "import-donkey", str(TUB), str(out), "--json")
    assert r.returncode == 0, r.stderr
    return out


# (command, contract keys); {tmp} and {log} are filled in per test
JSON_COMMANDS = [
    (["data", "import-donkey", str(TUB), "{tmp}/imp"], {"records"}),
    (["data", "export-donkey", "{log}", "{tmp}/tub"], {"records"}),
    (["data", "info", "{log}"], {"records", "duration_s", "steering_histogram"}),
    (["bench", "record", "--frames", "20"], {"records_per_s", "floor_per_s", "ratio_to_floor", "dropped"}),
    (["bench", "sim", "--track", "oval", "--steps", "50"], {"fps"}),
    (
        ["sim", "drive", "--track", "oval", "--pilot", "expert", "--max-seconds", "2", "--headless"],
        SIM_DRIVE_KEYS,
    ),
]


@pytest.mark.parametrize("argv, keys", JSON_COMMANDS, ids=[" ".join(a[:2]) for a, _ in JSON_COMMANDS])
def test_json_is_one_object_on_the_last_stdout_line(argv, keys, imported_log, tmp_path):
    args = [a.format(tmp=tmp_path, log=imported_log) for a in argv]
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.rstrip("\n").split("\n")[-1]
    obj = json.loads(last)
    assert isinstance(obj, dict)
    assert keys <= set(obj), f"missing {keys - set(obj)}"
    assert "Traceback" not in r.stderr


def test_data_info_counts_match_the_tub(imported_log):
    r = run_cli("data", "info", str(imported_log), "--json")
    obj = json.loads(r.stdout.splitlines()[-1])
    assert obj["records"] == 35 and obj["frames_ok"] == 35 and obj["frames_empty"] == 0
    assert sum(obj["steering_histogram"]["counts"]) == 35
    assert obj["modes"] == {"user": 12, "local_angle": 12, "local": 11}
    assert "steering histogram" in r.stdout and "#" in r.stdout  # text bars before the JSON


def test_data_info_counts_broken_frames(imported_log, tmp_path):
    import shutil

    log = tmp_path / "log"
    shutil.copytree(imported_log, log)
    (log / "images" / "000000.jpg").write_bytes(b"")
    (log / "images" / "000001.jpg").write_bytes(b"\xff\xd8 not really")
    (log / "images" / "000002.jpg").unlink()
    r = run_cli("data", "info", str(log), "--json")
    obj = json.loads(r.stdout.splitlines()[-1])
    assert (obj["frames_ok"], obj["frames_empty"], obj["frames_corrupt"], obj["frames_missing"]) == (
        32,
        1,
        1,
        1,
    )


def test_user_error_is_one_line_and_exit_1(tmp_path):
    r = run_cli("data", "info", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "not a driving log" in r.stderr


def test_bad_profile_value_is_one_line_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[actuator]\nbaud = '115200'\n")
    r = run_cli("models", "list", "--profile", str(bad), "--store", str(tmp_path / "store"))
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert str(bad) in err and "actuator.baud" in err and "expected an integer" in err
