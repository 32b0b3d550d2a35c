"""The car's actuators: steering servo and ESC behind a serial motor controller.

Two protocols, both over pyserial:

* ``RoboHatActuator`` speaks the Robo HAT MM1 text protocol of DonkeyCar's
  ``RoboHATDriver``, ``b"%d, %d\\r" % (steering_us, throttle_us)`` per command, within
  what the board's ``code.py`` accepts: pulses of 1000..2000 us (it drops a shorter
  line) and no faster than it reads (one line per 25 ms loop pass). Which pulse a
  steering command becomes is the profile's calibration; DonkeyCar's MM1 defaults put
  full left at 2000 us (``steering_left_us = 2000``, ``steering_right_us = 1000``).
* ``FramedActuator`` speaks the project's framed binary protocol (``vehicle.serial_proto``)
  to the ATmega328P firmware in ``vehicle/firmware``: sequence numbers, CRC-16, a
  heartbeat, and ACK/telemetry frames back. The firmware returns to neutral by itself
  when no valid command arrived for 250 ms, and holds neutral while an RC kill switch
  says so.

Both report the RC receiver the controller reads (``rc_reading()``): the transmitter as
the user's input (``vehicle.rc_input``).

Why a worker thread per actuator: the control loop must never wait on a serial port.
``run()`` only stores the newest command and wakes the worker; the worker writes it,
reads what the car sends back, sends heartbeats, and when the port vanishes (USB
unplugged, controller reset) it marks the link down, assumes the car went to neutral
(the firmware's failsafe does that) and reopens the port with exponential back-off
capped at ``reconnect_max_s`` -- and at once when the loop hands it a new command, so a
replugged port carries commands again within one loop period (a failed open costs
microseconds). Commands are coalesced, never queued: a late command is a wrong command.

A pty or USB-serial slave whose other end went away reads as "ready" with no data
(pyserial: SerialException) or fails writes with EIO: both mean the port is gone;
the handle is closed and the path reopened, never reused.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig
from edgepilot.schema.log import unit_command
from vehicle import serial_proto as sp

log = logging.getLogger(__name__)

PULSE_MIN_US = 500  # outside this no RC servo or ESC input is meaningful
PULSE_MAX_US = 2500
MM1_MIN_US = 1000  # code.py parses a command only from a line of 10+ characters:
MM1_MAX_US = 2000  # "%d, %d" of two 4-digit pulses, and its RC read-back keeps to 1000..2000
MM1_INTERVAL_S = 0.030  # code.py reads one line per loop pass of >= 25 ms; faster piles up
STALE_S = sp.FAILSAFE_MS / 1000  # a command older than the firmware's failsafe is never sent
DEFAULT_PORTS = {"framed": "/dev/ttyACM0", "robohat": "/dev/serial0"}
KILL_SWITCH = {"off": 0, "high": sp.RC_KILL, "low": sp.RC_KILL | sp.RC_KILL_LOW}
RC_MIN_US = 800  # the firmware's EP_RC_MIN_US..EP_RC_MAX_US: a receiver pulse, not a glitch
RC_MAX_US = 2200
CALIBRATION = (
    "steering_left_us",
    "steering_center_us",
    "steering_right_us",
    "throttle_reverse_us",
    "throttle_neutral_us",
    "throttle_forward_us",
)


@dataclass(frozen=True, slots=True)
class RcReading:
    """The RC receiver as the motor controller last reported it, in microseconds; None is
    no signal on that channel. ``killed``: the firmware's kill switch holds the outputs at
    neutral (killed, or waiting for a neutral throttle to re-arm)."""

    steering_us: int | None
    throttle_us: int | None
    aux_us: int | None = None
    killed: bool = False
    at: float = 0.0  # time.monotonic() when it arrived


def validate(cfg: ActuatorConfig) -> None:
    """Reject calibrations that would drive the car somewhere it was not told to go."""
    where = "actuator"
    lo_us, hi_us, why = PULSE_MIN_US, PULSE_MAX_US, ""
    if cfg.kind == "robohat":
        lo_us, hi_us = MM1_MIN_US, MM1_MAX_US
        why = " (the Robo HAT MM1's code.py drops a command with a pulse outside 1000..2000 us)"
    for name in CALIBRATION:
        v = getattr(cfg, name)
        if not lo_us <= v <= hi_us:
            raise EdgepilotError(f"{where}.{name}: {v} us is outside {lo_us}..{hi_us} us{why}")
    _validate_kill_switch(cfg)
    lo, mid, hi = cfg.steering_left_us, cfg.steering_center_us, cfg.steering_right_us
    if not min(lo, hi) <= mid <= max(lo, hi):
        raise EdgepilotError(f"{where}: steering_center_us {mid} is not between the end points {lo} and {hi}")
    lo, mid, hi = cfg.throttle_reverse_us, cfg.throttle_neutral_us, cfg.throttle_forward_us
    if not min(lo, hi) <= mid <= max(lo, hi):
        raise EdgepilotError(
            f"{where}: throttle_neutral_us {mid} is not between reverse {lo} and forward {hi}"
        )
    if not 0 < cfg.heartbeat_ms < sp.FAILSAFE_MS:
        raise EdgepilotError(f"{where}.heartbeat_ms: {cfg.heartbeat_ms} must be in 1..{sp.FAILSAFE_MS - 1}")
    if cfg.reconnect_max_s <= 0:
        raise EdgepilotError(f"{where}.reconnect_max_s: must be > 0, got {cfg.reconnect_max_s}")


def _validate_kill_switch(cfg: ActuatorConfig) -> None:
    if cfg.kill_switch not in KILL_SWITCH:
        raise EdgepilotError(f"actuator.kill_switch: {cfg.kill_switch!r} is not one of off, high, low")
    if cfg.kill_switch != "off" and cfg.kind != "framed":
        raise EdgepilotError(
            f'actuator.kill_switch: only the edgepilot firmware (kind = "framed") has a kill switch, '
            f'not kind {cfg.kind!r}; set kill_switch = "off"'
        )
    if not RC_MIN_US <= cfg.kill_threshold_us <= RC_MAX_US:
        raise EdgepilotError(
            f"actuator.kill_threshold_us: {cfg.kill_threshold_us} us is outside {RC_MIN_US}..{RC_MAX_US} us"
        )


def serial_port(cfg: ActuatorConfig) -> str:
    """The profile's port, or the kind's usual one."""
    return cfg.port or DEFAULT_PORTS.get(cfg.kind, "/dev/ttyACM0")


def _map(x: float, neg_us: int, mid_us: int, pos_us: int) -> int:
    """-1..1 onto a piecewise-linear pulse: each half has its own end point, so a
    servo whose centre is not midway between its ends still reaches both ends."""
    x = unit_command(x)
    end = pos_us if x >= 0 else neg_us
    return int(round(mid_us + abs(x) * (end - mid_us)))


def pulses(steering: float, throttle: float, cfg: ActuatorConfig) -> tuple[int, int]:
    """Calibrated pulse widths (us): steering -1 = full left, throttle -1 = full reverse.

    ``steering_reverse``/``throttle_reverse`` flip the direction (a servo mounted the
    other way round, an ESC wired in reverse); inputs are clamped to -1..1."""
    s = -steering if cfg.steering_reverse else steering
    t = -throttle if cfg.throttle_reverse else throttle
    return (
        _map(s, cfg.steering_left_us, cfg.steering_center_us, cfg.steering_right_us),
        _map(t, cfg.throttle_reverse_us, cfg.throttle_neutral_us, cfg.throttle_forward_us),
    )


def _open_serial(port: str, baud: int) -> Any:
    import serial  # pyserial: the vehicle extra

    # timeout=0: reads never block (the worker select()s first); the write timeout
    # bounds how long a full buffer can hold the worker, never the control loop.
    return serial.Serial(port, baud, timeout=0, write_timeout=0.2)


class SerialActuator:
    """Common part of both serial protocols: the worker thread, reconnects, stats."""

    kind = "serial"
    extra_stats: tuple[str, ...] = ()
    min_interval_s = 0.0  # the controller's pace: never two commands closer than this

    def __init__(self, cfg: ActuatorConfig, port: str | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        self.port = port or serial_port(cfg)
        self.connected = False
        self.telemetry: dict[str, Any] = {}
        self.stats: dict[str, Any] = {
            "commands": 0,  # run() calls
            "sent": 0,  # commands written to the port
            "coalesced": 0,  # replaced by a newer one before the worker sent them
            "dropped_stale": 0,  # too old to send when the link came back
            "connects": 0,
            "disconnects": 0,
            "open_failures": 0,
            "write_timeouts": 0,
            "last_error": None,
        }
        self.stats.update(dict.fromkeys(self.extra_stats, 0))  # before the worker can count them
        self._neutral_us = pulses(0.0, 0.0, cfg)
        self._lock = threading.Lock()
        self._pending: tuple[tuple[int, int], float] | None = None
        self._closing = False
        self._last_cmd_at = -1e9
        self._last_run_at = time.monotonic()
        self._rc: RcReading | None = None
        self._ser: Any = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._work, name=f"actuator-{self.kind}", daemon=True)
        self._thread.start()
        # a process that ends without close() still leaves the car at neutral
        atexit.register(self.close)

    # -- the loop's side: O(1), never blocks, never raises ---------------------------
    def run(self, steering: float, throttle: float) -> None:
        us = pulses(steering, throttle, self.cfg)
        with self._lock:
            if self._pending is not None:
                self.stats["coalesced"] += 1
            self._pending = (us, time.monotonic())
            self._last_run_at = self._pending[1]
            self.stats["commands"] += 1
        self._wake()

    def neutral(self) -> None:
        self.run(0.0, 0.0)

    def rc_reading(self) -> RcReading | None:
        """The receiver as the controller last reported it (None: nothing yet)."""
        return self._rc

    def close(self, timeout: float = 1.0) -> None:
        """Send neutral (when the port is up), then release it. Idempotent."""
        if self._closing:
            return
        atexit.unregister(self.close)
        with self._lock:
            self._pending = (self._neutral_us, time.monotonic())
        self._closing = True
        self._wake()
        self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SerialActuator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol hooks -------------------------------------------------------------
    def _on_connect(self) -> None:
        self._write_command(self._neutral_us)

    def _encode_command(self, us: tuple[int, int]) -> bytes:
        raise NotImplementedError

    def _on_bytes(self, data: bytes) -> None:
        pass

    def _periodic(self, now: float) -> float | None:
        """Periodic duties; returns seconds until the next one (None: none)."""
        return None

    # -- the worker -----------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # pipe full (already woken) or closed
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 512):
                pass

    def _write_command(self, us: tuple[int, int]) -> None:
        self._write(self._encode_command(us))
        self._last_cmd_at = time.monotonic()

    def _write(self, data: bytes) -> None:
        import serial

        try:
            self._ser.write(data)
        except serial.SerialTimeoutException:
            self.stats["write_timeouts"] += 1  # nobody reads: not a lost port

    def _lost(self, err: Exception) -> None:
        log.warning(
            "actuator %s: port %s lost (%r); car assumed at neutral, reconnecting", self.kind, self.port, err
        )
        self.stats["disconnects"] += 1
        self.stats["last_error"] = str(err)
        self.connected = False
        self.telemetry["assumed_neutral"] = True
        with contextlib.suppress(Exception):
            self._ser.close()
        self._ser = None

    def _try_open(self) -> bool:
        try:
            self._ser = _open_serial(self.port, self.cfg.baud)
            self.connected = True
            self.stats["connects"] += 1
            self._on_connect()
            log.info("actuator %s: connected on %s", self.kind, self.port)
            return True
        except Exception as e:  # SerialException, OSError, ValueError from a bad path
            if self._ser is not None:
                self._lost(e)
            else:
                self.stats["open_failures"] += 1
                self.stats["last_error"] = str(e)
                if self.stats["open_failures"] == 1:
                    log.warning("actuator %s: cannot open %s (%s); retrying", self.kind, self.port, e)
            return False

    def _work(self) -> None:
        backoff = 0.05
        while True:
            if self._ser is None:
                if self._closing:
                    return
                if not self._try_open():
                    select.select([self._wake_r], [], [], backoff)
                    self._drain_wake()
                    backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                    continue
                backoff = 0.05
            try:
                self._serve_once()
            except Exception as e:  # the port died under us: EIO, ENXIO, SerialException
                self._lost(e)
                continue
            if self._closing:
                # neutral once more: the command taken in _serve_once may predate close()
                with contextlib.suppress(Exception):
                    self._write_command(self._neutral_us)
                    self._ser.flush()
                with contextlib.suppress(Exception):
                    self._ser.close()
                self._ser = None
                self.connected = False
                return

    def _pace_left(self) -> float:
        """Seconds until the controller takes another command (<= 0: now)."""
        return self._last_cmd_at + self.min_interval_s - time.monotonic()

    def _serve_once(self) -> None:
        next_due = self._periodic(time.monotonic())
        timeout = next_due if next_due is not None else 0.5
        if self._pending is not None:
            timeout = max(0.0, min(timeout, self._pace_left()))
        fd = self._ser.fileno()
        ready, _, _ = select.select([fd, self._wake_r], [], [], timeout)
        if self._wake_r in ready:
            self._drain_wake()
        if fd in ready:
            data = self._ser.read(4096)
            if data:
                self._on_bytes(data)
        if self._pace_left() > 0 and not self._closing:
            return  # held: the newest command goes out when the controller can take it
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            us, t = pending
            if time.monotonic() - t > STALE_S and not self._closing:
                self.stats["dropped_stale"] += 1
            else:
                self._write_command(us)
                self.stats["sent"] += 1
                self.telemetry["assumed_neutral"] = False
                self.telemetry["commanded_us"] = us


def mm1_line(us: tuple[int, int]) -> bytes:
    """One MM1 command line. code.py takes the pulses from the first and last 4 characters
    of a line of 10 or more, so both are kept to 4 digits (1000..2000 us); a calibration
    outside that is refused at start-up (``validate``), the clamp here is the last guard."""
    s, t = (min(MM1_MAX_US, max(MM1_MIN_US, int(v))) for v in us)
    return b"%d, %d\r" % (s, t)


class RoboHatActuator(SerialActuator):
    """Robo HAT MM1 with DonkeyCar's ``code.py``: one text line per command, on the Pi's
    GPIO UART (``/dev/serial0``), at most one per ``MM1_INTERVAL_S``.

    The board sends the RC receiver's pulses back every 25 ms as ``"%i, %i\\r\\n"``
    (steering, throttle): ``rc_reading()`` (the transmitter as user input) and
    ``telemetry["rc_us"]``. code.py keeps the last reading when the receiver stops
    pulsing, so a transmitter that lost its link is not visible here."""

    kind = "robohat"
    extra_stats = ("bad_lines", "quiet_neutral")
    min_interval_s = MM1_INTERVAL_S

    def __init__(self, cfg: ActuatorConfig, port: str | None = None) -> None:
        self._rx = bytearray()
        super().__init__(cfg, port)

    def _on_connect(self) -> None:
        # a CR first ends whatever partial line the board holds (code.py clears its
        # buffer on CR), so neutral is not glued to the remains of an old line
        self._write(b"\r" + mm1_line(self._neutral_us))
        self._last_cmd_at = time.monotonic()

    def _encode_command(self, us: tuple[int, int]) -> bytes:
        return mm1_line(us)

    def _periodic(self, now: float) -> float:
        """code.py holds the last command for 10 s after the last byte: when the loop
        goes quiet for STALE_S (hung, stuck in a slow call) the worker sends neutral
        itself, as the framed firmware would by its own failsafe."""
        quiet = now - self._last_run_at
        if quiet < STALE_S:
            return STALE_S - quiet
        if self._pending is None and self.telemetry.get("commanded_us", self._neutral_us) != self._neutral_us:
            log.warning("actuator robohat: no command for %.0f ms: neutral", quiet * 1000)
            self._write_command(self._neutral_us)
            self.telemetry["commanded_us"] = self._neutral_us
            self.stats["quiet_neutral"] += 1
        return STALE_S

    def _on_bytes(self, data: bytes) -> None:
        self._rx += data
        *lines, rest = self._rx.replace(b"\n", b"\r").split(b"\r")
        self._rx = bytearray(rest[-256:])
        for line in lines:
            if line.strip():
                self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        parts = line.split(b",")
        try:
            s, t = (int(p) for p in parts)
        except ValueError:
            self.stats["bad_lines"] += 1
            return
        if not (PULSE_MIN_US <= s <= PULSE_MAX_US and PULSE_MIN_US <= t <= PULSE_MAX_US):
            self.stats["bad_lines"] += 1
            return
        self.telemetry["rc_us"] = (s, t)
        self._rc = RcReading(s, t, at=time.monotonic())


class FramedActuator(SerialActuator):
    """The project's firmware: CMD frames, a heartbeat every ``heartbeat_ms``, ACK and
    telemetry frames back. ``telemetry`` holds the latest firmware report (pulses the
    outputs carry, failsafe flag and count, error counters) and the ACK round trip.

    Protocol version 2: on every (re)connect and firmware reset the driver also sends
    RC_CONFIG (the profile's kill switch, and a request for RC frames); the receiver's
    pulses land in ``rc_reading()``. With a kill switch in the profile, commands are held
    at neutral until the firmware has acknowledged that RC_CONFIG: a version 1 firmware
    (ACK_UNKNOWN) never drives, with an error in the log saying to flash the current one."""

    kind = "framed"
    extra_stats = (
        "acks",
        "nacks",
        "heartbeats",
        "telemetry",
        "firmware_resets",
        "rx_bad_crc",
        "configs",
        "rc_reports",
        "killed_acks",
    )

    def __init__(self, cfg: ActuatorConfig, port: str | None = None) -> None:
        self._seq = 0
        self._parser = sp.Parser()
        self._next_hb = 0.0
        self._sent_at: dict[int, float] = {}
        self._rc_config_seq: int | None = None
        self._kill_confirmed = cfg.kill_switch == "off"
        super().__init__(cfg, port)

    def _next_seq(self) -> int:
        s = self._seq
        self._seq = (s + 1) & 0xFF
        return s

    def _send_config(self) -> None:
        c = self.cfg
        lo = min(c.steering_left_us, c.steering_right_us, c.throttle_reverse_us, c.throttle_forward_us)
        hi = max(c.steering_left_us, c.steering_right_us, c.throttle_reverse_us, c.throttle_forward_us)
        self._write(sp.config(self._next_seq(), *self._neutral_us, lo, hi))
        self._rc_config_seq = self._next_seq()
        flags = sp.RC_REPORT | KILL_SWITCH[c.kill_switch]
        self._write(sp.rc_config(self._rc_config_seq, flags, c.kill_threshold_us))
        self.stats["configs"] += 1

    def _on_connect(self) -> None:
        self._parser = sp.Parser()
        self._kill_confirmed = self.cfg.kill_switch == "off"
        self._send_config()
        super()._on_connect()
        self._next_hb = 0.0

    def _encode_command(self, us: tuple[int, int]) -> bytes:
        if not self._kill_confirmed:
            us = self._neutral_us  # the profile wants a kill switch the firmware has not confirmed
        seq = self._next_seq()
        self._sent_at[seq] = time.monotonic()
        return sp.cmd(seq, *us)

    def _periodic(self, now: float) -> float:
        if now >= self._next_hb:
            self._write(sp.heartbeat(self._next_seq()))
            self.stats["heartbeats"] += 1
            self._next_hb = now + self.cfg.heartbeat_ms / 1000
        return max(0.0, self._next_hb - now)

    def _on_bytes(self, data: bytes) -> None:
        for frame in self._parser.feed(data):
            reply = sp.decode_reply(frame)
            if isinstance(reply, sp.Ack):
                self._on_ack(reply)
            elif isinstance(reply, sp.Telemetry):
                self._on_telemetry(reply)
            elif isinstance(reply, sp.RcReport):
                self._on_rc(reply)
        self.stats["rx_bad_crc"] = self._parser.bad_crc
        if len(self._sent_at) > 64:  # ACKs lost on the way back: forget the oldest
            for k in list(self._sent_at)[:-64]:
                del self._sent_at[k]

    def _on_ack(self, reply: sp.Ack) -> None:
        sent = self._sent_at.pop(reply.seq, None)
        if sent is not None:
            self.telemetry["ack_rtt_ms"] = (time.monotonic() - sent) * 1000
        self.stats["acks"] += 1
        if reply.seq == self._rc_config_seq:
            self._on_rc_config_ack(reply.status)
        elif reply.status == sp.ACK_KILLED:
            self.stats["killed_acks"] += 1
        elif reply.status not in (sp.ACK_OK, sp.ACK_CLAMPED):
            self.stats["nacks"] += 1
        self.telemetry["outputs_us"] = (reply.steering_us, reply.throttle_us)

    def _on_rc_config_ack(self, status: int) -> None:
        self._rc_config_seq = None
        self.telemetry["rc_supported"] = status == sp.ACK_OK
        if status == sp.ACK_OK:
            self._kill_confirmed = True
            return
        self.stats["nacks"] += 1
        if self.cfg.kill_switch != "off":
            log.error(
                "actuator framed: the firmware on %s refused RC_CONFIG (ACK status %d: %s); the "
                "profile's kill switch is not in force, so every command is held at neutral. "
                "Flash the current firmware: make -C vehicle/firmware flash",
                self.port,
                status,
                "protocol version 1, no RC receiver" if status == sp.ACK_UNKNOWN else "rejected",
            )

    def _on_telemetry(self, reply: sp.Telemetry) -> None:
        self.stats["telemetry"] += 1
        if reply.flags & sp.F_BOOT and self.stats["telemetry"] > 1:
            self.stats["firmware_resets"] += 1
        if not reply.flags & sp.F_CONFIGURED:
            # the firmware reset (an Uno resets when the port opens and its
            # bootloader eats the first bytes): its failsafe neutral must be
            # the profile's, not the firmware's default 1500 us
            self._send_config()
        self.telemetry.update(
            outputs_us=(reply.steering_us, reply.throttle_us),
            failsafe=reply.failsafe,
            failsafe_count=reply.failsafe_count,
            killed=bool(reply.flags & sp.F_KILLED),
            rx_ok=reply.rx_ok,
            rx_bad=reply.rx_bad,
            rx_lost=reply.rx_lost,
            uptime_ms=reply.uptime_ms,
            at=time.monotonic(),
        )

    def _on_rc(self, r: sp.RcReport) -> None:
        self.stats["rc_reports"] += 1
        self._rc = RcReading(
            r.steering_us or None, r.throttle_us or None, r.aux_us or None, r.killed, time.monotonic()
        )
        self.telemetry["rc_us"] = (r.steering_us, r.throttle_us, r.aux_us)
        self.telemetry["killed"] = r.killed


class LogActuator:
    """``kind = "none"``: no motors, commands only logged (bench runs, dry runs on the car)."""

    kind = "none"

    def __init__(self, cfg: ActuatorConfig) -> None:
        validate(cfg)
        self.cfg = cfg
        self.connected = True
        self.telemetry: dict[str, Any] = {}
        self.stats: dict[str, Any] = {"commands": 0}
        self.last_us = pulses(0.0, 0.0, cfg)

    def run(self, steering: float, throttle: float) -> None:
        self.last_us = pulses(steering, throttle, self.cfg)
        self.stats["commands"] += 1
        log.debug("actuator none: %d, %d us", *self.last_us)

    def neutral(self) -> None:
        self.run(0.0, 0.0)

    def close(self) -> None:
        self.neutral()
