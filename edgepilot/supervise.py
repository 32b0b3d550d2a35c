"""Run the deployables as separate child processes, as in a real deployment, and never
leave orphans.

The demo and ``launch/fleet`` start a broker, edge nodes, a cloud trainer and cars as
children. Each child gets its own process group, its output goes to a log file, and a
child that dies unexpectedly is reported by name with the tail of its log. On exit
(normal, error, Ctrl-C or SIGTERM) every child is sent SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgepilot import EdgepilotError

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen
    expect_exit: bool = False

    @property
    def out_path(self) -> Path:
        return self.log_path.with_suffix(".out")

    def json_result(self) -> dict:
        """The child's ``--json`` result: the last line of its stdout."""
        import json

        try:
            lines = self.out_path.read_text().strip().splitlines()
            return json.loads(lines[-1]) if lines else {}
        except (OSError, ValueError):
            return {}

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Supervisor:
    logdir: Path
    children: dict[str, Child] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logdir = Path(self.logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        expect_exit: bool = False,
        cwd: str | Path | None = None,
    ) -> Child:
        log_path = self.logdir / f"{name}.log"  # stderr: logs, progress
        err = open(log_path, "ab")  # noqa: SIM115 - owned by the child
        out = open(log_path.with_suffix(".out"), "wb")  # noqa: SIM115 - stdout: tables, --json
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        err.close()
        out.close()
        child = Child(name, argv, log_path, proc, expect_exit)
        self.children[name] = child
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def edgepilot(self, name: str, *args: str, **kw) -> Child:
        return self.start(name, [sys.executable, "-m", "edgepilot", *args], **kw)

    def check(self) -> None:
        """Raise if a long-running child died."""
        for c in self.children.values():
            rc = c.proc.poll()
            if rc is not None and not c.expect_exit:
                raise EdgepilotError(
                    f"{c.name} exited with code {rc}; its log ({c.log_path}) ends:\n{c.tail()}"
                )

    def wait(self, name: str, timeout: float | None = None) -> int:
        """Wait for a child that is expected to finish, checking the others meanwhile."""
        c = self.children[name]
        deadline = None if timeout is None else time.monotonic() + timeout
        while c.proc.poll() is None:
            self.check_others(name)
            if deadline is not None and time.monotonic() > deadline:
                raise EdgepilotError(f"{name} did not finish within {timeout:.0f} s; log: {c.log_path}")
            time.sleep(0.2)
        return c.proc.returncode

    def wait_ready(self, name: str, timeout: float = 60.0, word: str = "ready") -> None:
        """Wait until a long-running child prints ``word`` on its stdout (services print
        e.g. ``edge edge-1 ready`` once they serve), checking that none has died."""
        c = self.children[name]
        deadline = time.monotonic() + timeout
        while word not in (c.out_path.read_text() if c.out_path.exists() else ""):
            self.check()
            if time.monotonic() > deadline:
                raise EdgepilotError(f"{name} did not get ready in {timeout:.0f} s: {c.tail()}")
            time.sleep(0.1)

    def check_others(self, name: str) -> None:
        for c in self.children.values():
            if c.name != name and not c.expect_exit and c.proc.poll() is not None:
                raise EdgepilotError(
                    f"{c.name} exited with code {c.proc.returncode}; its log ends:\n{c.tail()}"
                )

    def stop(self, name: str, timeout: float = 5.0) -> Child | None:
        """SIGTERM (then SIGKILL) a child; returns it, so its output can still be read."""
        c = self.children.pop(name, None)
        if c is None or c.proc.poll() is not None:
            return c
        _signal_group(c.proc, signal.SIGTERM)
        try:
            c.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(c.proc, signal.SIGKILL)
            c.proc.wait()
        return c

    def stop_all(self) -> None:
        for name in list(self.children)[::-1]:
            self.stop(name)

    def __enter__(self) -> Supervisor:
        self._old = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        signal.signal(signal.SIGTERM, self._old)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
