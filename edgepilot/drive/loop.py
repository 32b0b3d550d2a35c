"""The onboard loop: source -> user -> pilot -> offload -> actuator -> recorder.

One loop for the real car, the simulator, replay and the cloud's closed-loop gate: they
differ only in the parts handed in (``edgepilot.drive.parts``). Per frame:

1. between frames, swap in a new model if one is ready (``ModelSlot``);
2. read the newest frame; ask the user (keyboard, gamepad, phone, transmitter, the expert,
   or the replayed label) for their command and any mode/record/e-stop request;
3. unless the user drives alone, run the early-exit autopilot; when no local exit is sure
   (``Decision.hard``) and offloading is on, send the frame to the edge and wait for its
   answer at most until this frame's deadline; a late answer is counted and ignored and
   the local answer drives;
4. choose the command for the mode (user / local_angle / local), cap the throttle,
   e-stop wins; actuate;
5. queue the record (the writer thread does the disk work), with where its label came
   from: a frame the autopilot drove with no human at the controls has no label.

Nothing here blocks for longer than the offload deadline, and every stage is timed.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from edgepilot.drive.parts import (
    Actuator,
    Decision,
    EdgeAnswer,
    Frame,
    Offloader,
    Pilot,
    Recorder,
    Source,
    UserInput,
    UserState,
)
from edgepilot.drive.slot import ModelSlot
from edgepilot.imaging import encode_jpeg
from edgepilot.schema.log import MODES, Record, unit_command
from edgepilot.stats import StageTimer

log = logging.getLogger(__name__)

OnFrame = Callable[[Frame, dict[str, Any]], None]


def clamp(v: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo if v < lo else hi if v > hi else float(v)


class ReplayLabel:
    """In replay the 'user' is whatever was recorded with the frame, from its source."""

    def poll(self, frame: Frame) -> UserState:
        if not frame.label:
            return UserState()
        return UserState(*frame.label, source=frame.label_source)


@dataclass
class LoopOptions:
    mode: str = "local"
    throttle_cap: float = 1.0
    rate_hz: float | None = None  # pace to this rate; None: as fast as the source delivers
    record: bool = False
    auto_record: bool = False  # record only while the applied throttle > 0
    delete_seconds: float = 5.0
    deadline_s: float | None = None  # offload deadline; default one frame period (or 50 ms)
    car_id: str = "car-1"


@dataclass
class LoopStats:
    frames: int = 0
    model_frames: int = 0
    exits: collections.Counter = field(default_factory=collections.Counter)
    offloaded: int = 0
    edge_used: int = 0
    edge_late: int = 0
    recorded: int = 0
    unlabelled: int = 0  # recorded frames with no label (autopilot, no human at the controls)
    steering_abs_err: float = 0.0
    labelled: int = 0
    estops: int = 0
    takeovers: int = 0  # autopilot frames a human drove (interventions: labelled frames)
    deleted: int = 0
    quit: bool = False
    wall_s: float = 0.0


@dataclass(slots=True)
class Tick:
    """What one frame came to: the command that drove and how it was reached."""

    steering: float
    throttle: float
    dec: Decision | None = None
    offloaded: bool = False
    edge: EdgeAnswer | None = None
    edge_late: bool = False
    lat: dict[str, float] = field(default_factory=dict)


class DriveLoop:
    def __init__(
        self,
        source: Source,
        actuator: Actuator,
        *,
        model: ModelSlot[Pilot] | None = None,
        user: UserInput | None = None,
        offload: Offloader | None = None,
        recorder: Recorder | None = None,
        options: LoopOptions | None = None,
        on_frame: OnFrame | None = None,
    ) -> None:
        self.source, self.actuator = source, actuator
        self.slot: ModelSlot[Pilot] = model or ModelSlot()
        self.user = user or ReplayLabel()  # no user: whatever was recorded with the frame
        self.offload = offload
        self.recorder = recorder
        self.opt = options or LoopOptions()
        if self.opt.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = self.opt.mode
        self.recording = self.opt.record and recorder is not None
        self.auto_record = self.opt.auto_record  # until the user toggles recording by hand
        self.estop = False
        self.on_frame = on_frame
        self.timer = StageTimer()
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._rec_i = 0
        self._recent: collections.deque[tuple[int, float]] = collections.deque()
        period = 1.0 / self.opt.rate_hz if self.opt.rate_hz else None
        self.deadline_s = self.opt.deadline_s or period or 0.05
        self._last_frame_t: float | None = None
        self.loop_hz = 0.0  # smoothed frame rate, for the HUD

    # -- control ------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, max_frames: int | None = None) -> LoopStats:
        """Run until the source ends, ``stop()``, SIGTERM/Ctrl-C, or ``max_frames``.

        Always ends with the actuator at neutral."""
        installed = self._install_signals()
        t0 = time.perf_counter()
        try:
            while not self._stop.is_set() and (max_frames is None or self.stats.frames < max_frames):
                if not self.step():
                    break
        except KeyboardInterrupt:
            log.warning("interrupted: stopping the car")
        finally:
            self.stats.wall_s = time.perf_counter() - t0
            try:
                self.actuator.neutral()
            finally:
                self.actuator.close()
                if installed:
                    signal.signal(signal.SIGTERM, installed)
        return self.stats

    def _install_signals(self) -> Callable[[int, FrameType | None], object] | int | None:
        """SIGTERM stops the loop (main thread only); returns the handler it replaced."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, lambda *_: self._stop.set())

    # -- one frame ----------------------------------------------------------------------
    def step(self) -> bool:
        t_start = time.perf_counter()
        self.slot.maybe_swap()
        frame = self.source.read()
        t_frame = time.perf_counter()
        if frame is None:
            return False
        capture_ms = self._time("capture", t_start, t_frame)
        user = self.user.poll(frame)
        self._apply_requests(user)
        if user.quit:  # Esc: stop before this frame drives or is recorded
            self.stats.quit = True
            self._stop.set()
            return False
        tick = self._decide(frame, user, t_frame, capture_ms)
        t = time.perf_counter()
        self.actuator.run(tick.steering, tick.throttle)
        tick.lat["actuate"] = self._time("actuate", t)
        self._count(frame, tick)
        self._maybe_record(frame, user, tick)
        self._time("frame", t_frame)
        self._note_rate(t_frame)
        if self.on_frame is not None:
            self.on_frame(frame, self._info(tick))
        self._pace(t_start)
        return True

    def _time(self, stage: str, t0: float, t1: float | None = None) -> float:
        ms = ((t1 if t1 is not None else time.perf_counter()) - t0) * 1e3
        self.timer.add(stage, ms)
        return ms

    def _decide(self, frame: Frame, user: UserState, t_frame: float, capture_ms: float) -> Tick:
        """The command for this frame: the user's, the pilot's, or the edge's, by mode."""
        steering, throttle = user.applied or (user.steering, user.throttle)
        tick = Tick(steering, throttle, lat={"capture": capture_ms})
        model = self.slot.current
        takeover = user.active and user.source == "human"  # the human's hands win
        self.stats.takeovers += takeover and self.mode != "user"
        if model is not None and self.mode != "user" and not takeover:
            pilot_s, pilot_t = self._pilot(frame, model, tick, t_frame)
            if self.mode == "local_angle":
                tick.steering = pilot_s
            else:
                tick.steering, tick.throttle = pilot_s, pilot_t
        tick.steering = clamp(tick.steering)
        tick.throttle = clamp(tick.throttle, -self.opt.throttle_cap, self.opt.throttle_cap)
        if self.estop:
            tick.steering, tick.throttle = 0.0, 0.0
        return tick

    def _pilot(self, frame: Frame, model: Pilot, tick: Tick, t_frame: float) -> tuple[float, float]:
        t = time.perf_counter()
        dec = tick.dec = model.infer(frame.image)
        tick.lat["model"] = self._time("model", t)
        for k, v in dec.stage_ms.items():
            self.timer.add(k, v)
        self.stats.model_frames += 1
        self.stats.exits[dec.exit] += 1
        if dec.hard and self.offload is not None:
            t = time.perf_counter()
            tick.edge, tick.offloaded, tick.edge_late = self._offload(frame, t_frame, dec, model)
            tick.lat["offload"] = self._time("offload", t)
            if tick.edge is not None:
                return tick.edge.steering, tick.edge.throttle
        return dec.steering, dec.throttle

    def _offload(
        self, frame: Frame, t_frame: float, dec: Decision, model: Pilot
    ) -> tuple[EdgeAnswer | None, bool, bool]:
        """Send a hard frame to the edge and wait for its answer until this frame's deadline.

        Split mode sends the features the model already computed, not a JPEG: of the split
        point the offloader's planner chose (``Decision.outputs``), which follows the model
        after a hot-swap (``track``). Returns (answer or None, offloaded, late)."""
        off = self.offload
        assert off is not None
        off.track(model, dec)
        if off.sends_features and dec.outputs:
            jpeg, extra = None, {"features": dec.outputs, "stage": dec.exit, "model": model.version}
        else:
            jpeg, extra = frame.jpeg, {}
            if jpeg is None:
                jpeg = encode_jpeg(frame.image, 90)
        if not off.submit(frame.index, jpeg, self.deadline_s, **extra):
            return None, False, False
        left = max(0.0, self.deadline_s - (time.perf_counter() - t_frame))
        answer = off.poll(frame.index, time.monotonic() + left)
        return answer, True, answer is None

    def _count(self, frame: Frame, tick: Tick) -> None:
        st = self.stats
        if frame.label is not None and tick.dec is not None:
            st.steering_abs_err += abs(tick.dec.steering - frame.label[0])
            st.labelled += 1
        st.frames += 1
        st.offloaded += tick.offloaded
        st.edge_used += tick.edge is not None
        st.edge_late += tick.edge_late

    def _note_rate(self, t_frame: float) -> None:
        if self._last_frame_t is not None:
            dt = t_frame - self._last_frame_t
            if dt > 0:
                self.loop_hz = 1.0 / dt if not self.loop_hz else 0.9 * self.loop_hz + 0.1 / dt
        self._last_frame_t = t_frame

    def _pace(self, t_start: float) -> None:
        if self.opt.rate_hz:
            left = t_start + 1.0 / self.opt.rate_hz - time.perf_counter()
            if left > 0:
                time.sleep(left)

    # -- user requests ------------------------------------------------------------------
    def _apply_requests(self, user: UserState) -> None:
        if user.mode is not None and user.mode in MODES and user.mode != self.mode:
            log.info("mode: %s -> %s", self.mode, user.mode)
            self.mode = user.mode
        if user.estop is not None and user.estop != self.estop:
            self.estop = user.estop
            self.stats.estops += user.estop
            log.warning("E-STOP %s", "on" if self.estop else "off")
        if user.record is not None and self.recorder is not None:
            self.recording = user.record
            self.auto_record = False  # a Record button pressed: the human decides from now on
        if user.delete and self.recorder is not None:
            self._delete_recent()

    def _delete_recent(self) -> None:
        """The last ``delete_seconds`` of log (DonkeyCar's 'erase the last N seconds')."""
        if not self._recent or self.recorder is None:
            return
        cutoff = self._recent[-1][1] - self.opt.delete_seconds
        gone = [i for i, t in self._recent if t > cutoff + 1e-9]  # N s at 20 Hz = 20*N records
        if not gone:
            return
        self.recorder.delete(gone[0], gone[-1])
        self.stats.deleted += len(gone)
        log.info("deleted records %d..%d (last %.1f s)", gone[0], gone[-1], self.opt.delete_seconds)
        while self._recent and self._recent[-1][0] >= gone[0]:
            self._recent.pop()

    # -- recording ----------------------------------------------------------------------
    def label_source(self, user: UserState) -> str:
        """Whose answer this frame's label is: the simulator's expert is always right; a
        human's command is a label while the human drives (user mode) or takes over (an
        intervention); anything else is an autopilot frame with no label."""
        if user.source == "expert":
            return "expert"
        if user.source == "human" and (self.mode == "user" or user.active):
            return "human"
        return "none"

    def _maybe_record(self, frame: Frame, user: UserState, tick: Tick) -> None:
        if self.recorder is None:
            return
        if self.auto_record:
            self.recording = tick.throttle > 0.0
        if self.recording:
            t = time.perf_counter()
            self._record(frame, user, tick)
            self._time("record", t)

    def _record(self, frame: Frame, user: UserState, tick: Tick) -> None:
        assert self.recorder is not None
        i = self._rec_i
        self._rec_i += 1
        source = self.label_source(user)
        # the throttle label is what the car was given (after the cap), not the raw key
        label_t = clamp(unit_command(user.throttle), -self.opt.throttle_cap, self.opt.throttle_cap)
        dec, edge = tick.dec, tick.edge
        rec = Record(
            i=i,
            t=frame.t,
            steering=unit_command(user.steering),
            throttle=label_t,
            label_source=source,
            mode=self.mode,
            applied_steering=tick.steering,
            applied_throttle=tick.throttle,
            pilot_steering=None if dec is None else float(dec.steering),
            pilot_throttle=None if dec is None else float(dec.throttle),
            exit=None if dec is None else int(dec.exit),
            confidence=None if dec is None else round(float(dec.confidence), 4),
            offloaded=tick.offloaded,
            edge_steering=None if edge is None else float(edge.steering),
            edge_throttle=None if edge is None else float(edge.throttle),
            edge_late=tick.edge_late,
            latency_ms={k: round(v, 4) for k, v in tick.lat.items()},
            model_version=self.slot.version,
            sim=frame.truth,
        )
        self.recorder.write(rec, frame.jpeg if frame.jpeg is not None else frame.image)
        self.stats.recorded += 1
        self.stats.unlabelled += source == "none"
        self._recent.append((i, frame.t))
        while self._recent and frame.t - self._recent[0][1] > self.opt.delete_seconds * 2:
            self._recent.popleft()

    def _info(self, tick: Tick) -> dict[str, Any]:
        dec, edge = tick.dec, tick.edge
        return {
            "steering": tick.steering,
            "throttle": tick.throttle,
            "mode": self.mode,
            "recording": self.recording,
            "auto_record": self.auto_record,
            "records": self.stats.recorded,
            "estop": self.estop,
            "exit": None if dec is None else dec.exit,
            "confidence": None if dec is None else dec.confidence,
            "offloaded": tick.offloaded,
            "edge_used": edge is not None,
            "edge_rtt_ms": None if edge is None else round(edge.rtt_ms, 2),
            "loop_hz": round(self.loop_hz, 1),
            "model_version": self.slot.version,
            "frames": self.stats.frames,
            "takeovers": self.stats.takeovers,
        }

    # -- results --------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        """The contract's replay/drive keys, plus the per-stage table's figures."""
        st = self.stats
        frame_h = self.timer.stages.get("frame")
        n_model = max(st.model_frames, 1)
        return {
            "frames": st.frames,
            "fps": round(st.frames / st.wall_s, 1) if st.wall_s else 0.0,
            "latency_ms": {
                "p50": round(frame_h.percentile(50), 4) if frame_h else None,
                "p99": round(frame_h.percentile(99), 4) if frame_h else None,
            },
            "steering_mae": round(st.steering_abs_err / st.labelled, 5) if st.labelled else None,
            "exit_rate": {str(k): round(v / n_model, 4) for k, v in sorted(st.exits.items())},
            "offload_rate": round(st.offloaded / n_model, 4) if st.model_frames else 0.0,
            "edge_used_rate": round(st.edge_used / n_model, 4) if st.model_frames else 0.0,
            "edge_late": st.edge_late,
            "recorded": st.recorded,
            "unlabelled": st.unlabelled,
            "takeovers": st.takeovers,
            "model_version": self.slot.version,
            "swaps": self.slot.swaps,
            "stages_ms": self.timer.summary(),
        }
