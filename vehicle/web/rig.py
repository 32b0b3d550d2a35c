"""A car on the bench for the web controller's tests and benchmark: the real loop, the
real serial actuator and the real recorder, with two stand-ins for what cannot be here.

- The motor controller: the far end of a pseudo-terminal pair. ``PtyMotor`` reads what
  ``FramedActuator`` writes there and decodes it with ``vehicle.serial_proto`` (the
  firmware's own framing), timestamping each steering/throttle command as it arrives.
- The camera: the frames of a recorded log (``datasets/samples``), looped and paced at
  the camera's rate, stamped with the wall clock and without their JPEG bytes, so the
  loop, the recorder and the page see what a live camera gives them.

Everything between the page and the pty is the product's code path: ``start_web``,
``DriveLoop``, ``FramedActuator``.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import threading
import time
import tty
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from edgepilot.config import REPO_ROOT, Profile
from edgepilot.drive.loop import DriveLoop, LoopOptions
from edgepilot.drive.parts import Frame
from edgepilot.drive.replay import ReplaySource
from edgepilot.drivelog import LogWriter
from edgepilot.schema.log import SessionMeta
from vehicle import serial_proto as sp
from vehicle.actuators import FramedActuator, pulses
from vehicle.web.controller import WebControl, start_web

SAMPLE = REPO_ROOT / "datasets" / "samples" / "sim-oval"


@dataclass(frozen=True)
class Cmd:
    t: float  # wall clock when the bytes were read off the pty (epoch s)
    steering_us: int
    throttle_us: int


class PtyMotor:
    """The motor controller's end of the serial cable: every CMD frame, decoded."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo or line editing before the driver configures it
        self.path = os.ttyname(self.slave)
        self.cmds: list[Cmd] = []
        self._cond = threading.Condition()
        self._stop = False
        self._parser = sp.Parser()
        self._thread = threading.Thread(target=self._read, name="pty-motor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            if not select.select([self.master], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            now = time.time()
            got = [f for f in self._parser.feed(data) if f.type == sp.T_CMD]
            if got:
                with self._cond:
                    self.cmds.extend(Cmd(now, *sp.decode_cmd(f)) for f in got)
                    self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.cmds)

    def since(self, mark: int) -> list[Cmd]:
        with self._cond:
            return self.cmds[mark:]

    def wait(self, pred, after: int = 0, timeout: float = 5.0) -> Cmd | None:
        """The first command after index ``after`` for which ``pred(cmd)`` holds."""
        deadline = time.monotonic() + timeout
        i = after
        with self._cond:
            while True:
                while i < len(self.cmds):
                    if pred(self.cmds[i]):
                        return self.cmds[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def more(self, n: int, timeout: float = 5.0) -> list[Cmd]:
        """The next ``n`` commands (one per loop frame): waits by frames, not by the clock."""
        start = self.mark()
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.cmds) < start + n and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return self.cmds[start : start + n]

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class LiveReplay:
    """Recorded frames as a live camera gives them: looped, at ``fps``, wall-clock stamped,
    no label, no JPEG (the loop and the page encode, as with a camera)."""

    def __init__(self, path: str | Path = SAMPLE, fps: float = 20.0) -> None:
        self.inner = ReplaySource(path, rate="max", loop=True)
        self.period = 1.0 / fps
        self._next = time.monotonic()
        self._n = 0
        self._closed = False

    def read(self) -> Frame | None:
        if self._closed:
            return None
        self._next += self.period
        wait = self._next - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            self._next = time.monotonic()  # fell behind: a camera does not queue up
        f = self.inner.read()
        if f is None:
            return None
        self._n += 1
        return Frame(f.image, time.time(), self._n)

    def close(self) -> None:
        self._closed = True


class Rig:
    """The loop on its own thread with the page's user input, the pty motor and a log."""

    def __init__(
        self,
        profile: Profile,
        *,
        log_dir: Path | None = None,
        options: LoopOptions | None = None,
        fps: float = 20.0,
    ) -> None:
        self.profile = profile
        self.opts = options or LoopOptions(mode="user", throttle_cap=0.5, delete_seconds=1.0)
        self.motor = PtyMotor()
        self.actuator_cfg = replace(profile.actuator, kind="framed", port=self.motor.path, heartbeat_ms=50)
        self.actuator = FramedActuator(self.actuator_cfg)
        self.recorder = None
        if log_dir is not None:
            meta = SessionMeta(
                session=uuid.uuid4().hex, created=time.time(), source="car", car_id=profile.car_id
            )
            self.recorder = LogWriter(log_dir, meta)
        self.announced = io.StringIO()  # what the car printed: the URL, a new token
        self.web: WebControl = start_web(profile, mode=self.opts.mode, out=self.announced)
        self.loop = DriveLoop(
            LiveReplay(fps=fps),
            self.actuator,
            user=self.web.user,
            recorder=self.recorder,
            options=self.opts,
            on_frame=self.web.on_frame,
        )
        self._stopped = False
        self.thread = threading.Thread(target=self.loop.run, name="drive-loop", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        server = self.web.user.server
        assert server is not None
        return server.url.replace("0.0.0.0", "127.0.0.1")

    def pulses(self, steering: float, throttle: float) -> tuple[int, int]:
        """What the motor controller receives for a command (the profile's calibration)."""
        return pulses(steering, throttle, self.actuator_cfg)

    def stop(self) -> None:
        """Idempotent: the loop ends (the actuator at neutral), then the page, the log, the pty."""
        if self._stopped:
            return
        self._stopped = True
        self.loop.stop()
        self.thread.join(5)
        self.web.stop()
        if self.recorder is not None:
            self.recorder.close()
        self.motor.close()
