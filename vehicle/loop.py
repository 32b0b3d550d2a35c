"""The onboard loop: source -> pilot -> decision -> actuator -> recorder -> telemetry.

One loop for the real car, the simulator and replay: they differ only in the parts
handed in (``vehicle.parts``). Per frame:

1. between frames, swap in a new model if one is ready (``ModelSlot``);
2. read the newest frame; ask the user (keyboard, gamepad, the expert, or the replayed
   label) for their command and any mode/record/e-stop request;
3. unless the user drives alone, run the early-exit autopilot; when no local exit is sure
   (``Decision.hard``) and offloading is on, send the frame to the edge and wait for its
   answer at most until this frame's deadline — a late answer is counted and ignored and
   the local answer drives;
4. choose the command for the mode (user / local_angle / local), cap the throttle,
   e-stop wins; actuate;
5. queue the record (the writer thread does the disk work).

Nothing here blocks for longer than the offload deadline, and every stage is timed.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2

from edgepilot.drivelog import LogWriter
from edgepilot.schema.log import MODES, Record
from vehicle.hotswap import ModelSlot
from vehicle.parts import Actuator, Frame, Source
from vehicle.timing import StageTimer

log = logging.getLogger(__name__)


def clamp(v: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo if v < lo else hi if v > hi else float(v)


@dataclass(slots=True)
class UserState:
    """What the user (or the expert, or the recorded label) wants this frame.

    ``steering``/``throttle`` are the label; ``applied`` overrides what actually drives
    (the expert's perturbation: it drives off the line, the label says how to recover)."""

    steering: float = 0.0
    throttle: float = 0.0
    applied: tuple[float, float] | None = None
    mode: str | None = None  # request a mode switch
    record: bool | None = None  # request recording on/off
    estop: bool | None = None  # request e-stop on/off
    delete: bool = False  # delete the last N seconds of log
    quit: bool = False


class UserInput(Protocol):
    def poll(self, frame: Frame) -> UserState: ...


class ReplayLabel:
    """In replay the 'user' is whatever was recorded with the frame."""

    def poll(self, frame: Frame) -> UserState:
        return UserState(*frame.label) if frame.label else UserState()


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
    steering_abs_err: float = 0.0
    labelled: int = 0
    estops: int = 0
    deleted: int = 0
    quit: bool = False
    wall_s: float = 0.0


class DriveLoop:
    def __init__(
        self,
        source: Source,
        actuator: Actuator,
        *,
        model: ModelSlot | None = None,
        user: UserInput | None = None,
        offload: Any = None,  # vehicle.offload.OffloadClient
        recorder: LogWriter | None = None,
        options: LoopOptions | None = None,
        on_frame: Any = None,  # callable(frame, info) — UI drawing, telemetry
    ) -> None:
        self.source, self.actuator = source, actuator
        self.slot = model or ModelSlot()
        self.user = user or ReplayLabel()  # no user: whatever was recorded with the frame
        self.offload = offload
        self.recorder = recorder
        self.opt = options or LoopOptions()
        if self.opt.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = self.opt.mode
        self.recording = self.opt.record and recorder is not None
        self.estop = False
        self.on_frame = on_frame
        self.timer = StageTimer()
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._rec_i = 0
        self._recent: collections.deque[tuple[int, float]] = collections.deque()
        period = 1.0 / self.opt.rate_hz if self.opt.rate_hz else None
        self.deadline_s = self.opt.deadline_s or period or 0.05
        self._jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, 90]
        self.moved_at = time.monotonic()  # last frame with throttle applied (idle detection)

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

    def _install_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, lambda *_: self._stop.set())

    # -- one frame ----------------------------------------------------------------------
    def step(self) -> bool:
        tm, st = self.timer, self.stats
        t_start = time.perf_counter()
        self.slot.maybe_swap()
        frame = self.source.read()
        t_frame = time.perf_counter()
        if frame is None:
            return False
        lat: dict[str, float] = {"capture": (t_frame - t_start) * 1e3}
        tm.add("capture", lat["capture"])

        user = self.user.poll(frame)
        self._apply_requests(user)
        if user.quit:  # Esc: stop before this frame drives or is recorded
            st.quit = True
            self._stop.set()
            return False

        steering, throttle = user.applied or (user.steering, user.throttle)
        model = self.slot.current
        dec = None
        offloaded = edge_late = False
        edge_answer = None
        if model is not None and self.mode != "user":
            t = time.perf_counter()
            dec = model.infer(frame.image)
            lat["model"] = (time.perf_counter() - t) * 1e3
            tm.add("model", lat["model"])
            for k, v in dec.stage_ms.items():
                tm.add(k, v)
            st.model_frames += 1
            st.exits[dec.exit] += 1
            pilot_s, pilot_t = dec.steering, dec.throttle
            if dec.hard and self.offload is not None:
                t = time.perf_counter()
                edge_answer, offloaded, edge_late = self._offload(frame, t_frame, dec, model)
                lat["offload"] = (time.perf_counter() - t) * 1e3
                tm.add("offload", lat["offload"])
                if edge_answer is not None:
                    pilot_s, pilot_t = edge_answer.steering, edge_answer.throttle
            if self.mode == "local_angle":
                steering = pilot_s
            else:
                steering, throttle = pilot_s, pilot_t
        steering = clamp(steering)
        throttle = clamp(throttle, -self.opt.throttle_cap, self.opt.throttle_cap)
        if self.estop:
            steering, throttle = 0.0, 0.0

        if throttle != 0.0:
            self.moved_at = time.monotonic()
        t = time.perf_counter()
        self.actuator.run(steering, throttle)
        lat["actuate"] = (time.perf_counter() - t) * 1e3
        tm.add("actuate", lat["actuate"])

        if frame.label is not None and dec is not None:
            st.steering_abs_err += abs(dec.steering - frame.label[0])
            st.labelled += 1
        st.frames += 1
        st.offloaded += offloaded
        st.edge_used += edge_answer is not None
        st.edge_late += edge_late

        if self.recorder is not None:
            if self.opt.auto_record:
                self.recording = throttle > 0.0
            if self.recording:
                t = time.perf_counter()
                self._record(frame, user, steering, throttle, dec, offloaded, edge_answer, edge_late, lat)
                tm.add("record", (time.perf_counter() - t) * 1e3)
        tm.add("frame", (time.perf_counter() - t_frame) * 1e3)

        if self.on_frame is not None:
            self.on_frame(frame, self._info(steering, throttle, dec, offloaded, edge_answer))
        if self.opt.rate_hz:
            left = t_start + 1.0 / self.opt.rate_hz - time.perf_counter()
            if left > 0:
                time.sleep(left)
        return True

    def _offload(self, frame: Frame, t_frame: float, dec: Any, model: Any) -> tuple[Any, bool, bool]:
        """Send a hard frame to the edge and wait for its answer until this frame's deadline.

        Split mode (vehicle.offload) sends the features the model already computed, not a
        JPEG: of the split point its planner chose (``Decision.outputs``), which follows the
        model after a hot-swap (``track``). Returns (answer or None, offloaded, late)."""
        track = getattr(self.offload, "track", None)
        if track is not None:
            track(model, dec)
        if getattr(self.offload, "sends_features", False) and dec.outputs:
            jpeg, extra = (
                None,
                {"features": dec.outputs, "stage": dec.exit, "model": getattr(model, "version", None)},
            )
        else:
            jpeg, extra = frame.jpeg, {}
            if jpeg is None:
                ok, buf = cv2.imencode(".jpg", frame.image, self._jpeg_params)
                if not ok:
                    return None, False, False
                jpeg = buf.tobytes()
        if not self.offload.submit(frame.index, jpeg, self.deadline_s, **extra):
            return None, False, False
        left = max(0.0, self.deadline_s - (time.perf_counter() - t_frame))
        answer = self.offload.poll(frame.index, time.monotonic() + left)
        return answer, True, answer is None

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
        if user.delete and self.recorder is not None and self._recent:
            cutoff = self._recent[-1][1] - self.opt.delete_seconds
            gone = [i for i, t in self._recent if t > cutoff + 1e-9]  # N s at 20 Hz = 20*N records
            if gone:
                self.recorder.delete(gone[0], gone[-1])
                self.stats.deleted += len(gone)
                log.info("deleted records %d..%d (last %.1f s)", gone[0], gone[-1], self.opt.delete_seconds)
                while self._recent and self._recent[-1][0] >= gone[0]:
                    self._recent.pop()

    def _record(
        self,
        frame: Frame,
        user: UserState,
        steering: float,
        throttle: float,
        dec: Any,
        offloaded: bool,
        edge: Any,
        edge_late: bool,
        lat: dict[str, float],
    ) -> None:
        i = self._rec_i
        self._rec_i += 1
        rec = Record(
            i=i,
            t=frame.t,
            steering=clamp(user.steering),
            throttle=clamp(user.throttle),
            mode=self.mode,
            applied_steering=steering,
            applied_throttle=throttle,
            pilot_steering=None if dec is None else float(dec.steering),
            pilot_throttle=None if dec is None else float(dec.throttle),
            exit=None if dec is None else int(dec.exit),
            confidence=None if dec is None else round(float(dec.confidence), 4),
            offloaded=offloaded,
            edge_steering=None if edge is None else float(edge.steering),
            edge_throttle=None if edge is None else float(edge.throttle),
            edge_late=edge_late,
            latency_ms={k: round(v, 4) for k, v in lat.items()},
            model_version=self.slot.version,
            sim=frame.truth,
        )
        self.recorder.write(rec, frame.jpeg if frame.jpeg is not None else frame.image)
        self.stats.recorded += 1
        self._recent.append((i, frame.t))
        while self._recent and frame.t - self._recent[0][1] > self.opt.delete_seconds * 2:
            self._recent.popleft()

    def _info(self, steering: float, throttle: float, dec: Any, offloaded: bool, edge: Any) -> dict[str, Any]:
        return {
            "steering": steering,
            "throttle": throttle,
            "mode": self.mode,
            "recording": self.recording,
            "records": self.stats.recorded,
            "estop": self.estop,
            "exit": None if dec is None else dec.exit,
            "confidence": None if dec is None else dec.confidence,
            "offloaded": offloaded,
            "edge_used": edge is not None,
            "model_version": self.slot.version,
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
            "model_version": self.slot.version,
            "swaps": self.slot.swaps,
            "stages_ms": self.timer.summary(),
        }
