"""The PCA9685 servo board on I2C: steering servo and ESC of DonkeyCar's standard kit.

Why ``smbus2`` and not Adafruit's ``adafruit-circuitpython-pca9685``: smbus2 is one pure-Python
file with no dependencies that talks to the kernel's ``i2c-dev`` interface (``/dev/i2c-1``, the
``I2C_SMBUS`` ioctl) directly. Adafruit's library runs on CircuitPython's ``busio`` API, which on a
Pi means Adafruit-Blinka with its platform detection, GPIO back-ends (RPi.GPIO/lgpio), pyftdi,
adafruit-circuitpython-busdevice and -register: several packages to install and keep in step on
the car for the dozen register writes this board needs. The chip is simple enough to drive
from the datasheet, and owning the sequence lets the driver check what it wrote.

How the chip is driven (NXP PCA9685 product data sheet, rev. 4):

* PRE_SCALE = round(25 MHz / (4096 x f)) - 1 (the internal 25 MHz oscillator; equation 1), e.g.
  101 at 60 Hz (a 59.84 Hz frame, one tick = 102 / 25 MHz = 4.08 us) and 121 at 50 Hz
  (4.88 us). PRE_SCALE is writable only while MODE1.SLEEP is set, so set-up is: SLEEP with
  auto-increment (AI), PRE_SCALE, MODE2 = OUTDRV (totem-pole outputs, not inverted, updated at
  the I2C STOP), both channels to neutral, then wake and give the oscillator its 500 us. The
  outputs therefore start at neutral: an ESC arms on it, and a chip still holding a previous
  run's command is put to sleep (no pulses) before it could drive with it.
* A channel is written in one auto-incremented 4-byte transaction (LEDn_ON_L/H = 0,
  LEDn_OFF_L/H = ticks): the outputs change at the STOP, so no half-written pulse width ever
  reaches the servo.
* Every second MODE1 and PRE_SCALE are read back; a chip found asleep or with another prescale
  (a brown-out, someone else's program) is set up again, from neutral.

Safety, the same contract as the serial actuators (``vehicle.actuators``): ``run()`` only stores
the newest command for a worker thread and returns; ``neutral()``; ``close()`` sends neutral
and is called at interpreter exit too. Neutral on any fault: an I2C error (EREMOTEIO when the
chip does not answer) gets one neutral write attempt, then the bus is closed and reopened with
exponential back-off up to ``reconnect_max_s`` -- at once when the loop hands over a new command
-- and a reconnected chip gets neutral before any command; a command older than 250 ms is never
sent; and when the loop stops commanding for 250 ms (a hung model, a stuck process) the worker
puts the outputs to neutral itself. What no software on the Pi can cover: the PCA9685 has no
watchdog, so after ``kill -9`` or a crash of the whole Pi it keeps the last pulse widths until
power goes or someone writes to it (docs/hardware.md says what to do about that).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig
from vehicle.actuators import STALE_S, pulses, validate

log = logging.getLogger(__name__)

OSC_HZ = 25_000_000  # the internal oscillator
MODE1, MODE2, LED0_ON_L, PRE_SCALE = 0x00, 0x01, 0x06, 0xFE
RESTART, AI, SLEEP = 0x80, 0x20, 0x10  # MODE1 bits
OUTDRV = 0x04  # MODE2: totem-pole outputs
WAKE_S = 0.0006  # the oscillator needs 500 us after SLEEP is cleared
VERIFY_S = 1.0  # how often MODE1/PRE_SCALE are read back
FREQ_RANGE_HZ = (40, 200)  # frames servos and ESCs take; 50 or 60 Hz is usual


class I2CBus(Protocol):
    """What the driver uses of ``smbus2.SMBus``."""

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None: ...

    def close(self) -> None: ...


def prescale_for(freq_hz: float) -> int:
    """PRE_SCALE for ``freq_hz`` (datasheet equation 1; the chip forces at least 3)."""
    return min(255, max(3, round(OSC_HZ / (4096 * freq_hz)) - 1))


def tick_us(freq_hz: float) -> float:
    """Length of one of the 4096 counts of a PWM frame at ``freq_hz`` (as the chip runs it)."""
    return (prescale_for(freq_hz) + 1) * 1e6 / OSC_HZ


def us_to_ticks(us: float, freq_hz: float) -> int:
    return round(us / tick_us(freq_hz))


def ticks_to_us(ticks: float, freq_hz: float) -> float:
    return ticks * tick_us(freq_hz)


def open_smbus(bus: int) -> I2CBus:
    try:
        from smbus2 import SMBus
    except ModuleNotFoundError:
        raise EdgepilotError(
            "actuator.kind 'pca9685' needs smbus2: pip install 'edgepilot[vehicle]' (launch/car-setup does)"
        ) from None
    return SMBus(bus)


def validate_pca9685(cfg: ActuatorConfig) -> None:
    lo, hi = FREQ_RANGE_HZ
    if not lo <= cfg.pwm_freq_hz <= hi:
        raise EdgepilotError(
            f"actuator.pwm_freq_hz: {cfg.pwm_freq_hz} Hz is outside {lo}..{hi} Hz (servos and ESCs: 50 or 60)"
        )
    if not 0x40 <= cfg.i2c_address <= 0x7F:
        raise EdgepilotError(
            f"actuator.i2c_address: {cfg.i2c_address:#04x} is not a PCA9685 address (0x40..0x7f; "
            "`i2cdetect -y 1` shows it)"
        )
    for name in ("steering_channel", "throttle_channel"):
        if not 0 <= getattr(cfg, name) <= 15:
            raise EdgepilotError(f"actuator.{name}: {getattr(cfg, name)} is not a channel (0..15)")
    if cfg.steering_channel == cfg.throttle_channel:
        raise EdgepilotError(f"actuator: steering and throttle both on channel {cfg.steering_channel}")
    if cfg.i2c_bus < 0:
        raise EdgepilotError(f"actuator.i2c_bus: {cfg.i2c_bus} is not a bus number (/dev/i2c-N)")


class ChipReset(Exception):
    """The chip no longer runs as it was set up (a power glitch, another program)."""


class PCA9685Actuator:
    """Steering and throttle on two channels of a PCA9685; the Actuator contract of the loop."""

    kind = "pca9685"

    def __init__(self, cfg: ActuatorConfig, bus_factory: Callable[[int], I2CBus] | None = None) -> None:
        validate(cfg)
        validate_pca9685(cfg)
        self.cfg = cfg
        self.addr = cfg.i2c_address
        self.prescale = prescale_for(cfg.pwm_freq_hz)
        self._open = bus_factory or open_smbus
        self._neutral_us = pulses(0.0, 0.0, cfg)
        self.connected = False
        self.telemetry: dict[str, Any] = {"assumed_neutral": True}
        self.stats: dict[str, Any] = dict.fromkeys(
            ("commands", "sent", "coalesced", "dropped_stale", "connects", "disconnects", "open_failures"),
            0,
        )
        self.stats.update(failsafe_neutral=0, chip_resets=0, last_error=None)
        self._cond = threading.Condition()
        self._pending: tuple[tuple[int, int], float] | None = None
        self._last_cmd = 0.0  # monotonic time of the last run()
        self._out_us: tuple[int, int] | None = None  # what the channels carry now
        self._bus: I2CBus | None = None
        self._verified_at = 0.0
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="actuator-pca9685", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a process that ends without close() still leaves neutral

    # -- the loop's side: O(1), never blocks on the bus, never raises -------------------------
    def run(self, steering: float, throttle: float) -> None:
        us = pulses(steering, throttle, self.cfg)
        with self._cond:
            if self._pending is not None:
                self.stats["coalesced"] += 1
            self._last_cmd = time.monotonic()
            self._pending = (us, self._last_cmd)
            self.stats["commands"] += 1
            self._cond.notify()

    def neutral(self) -> None:
        self.run(0.0, 0.0)

    def close(self, timeout: float = 1.0) -> None:
        """Send neutral (when the chip answers), then release the bus. Idempotent."""
        if self._closing:
            return
        atexit.unregister(self.close)
        with self._cond:
            self._pending = (self._neutral_us, time.monotonic())
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def __enter__(self) -> PCA9685Actuator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the chip ---------------------------------------------------------------------------
    def _write_channels(self, us: tuple[int, int]) -> None:
        freq = self.cfg.pwm_freq_hz
        # throttle first: when the two writes straddle a fault, the motor has its word already
        for ch, width in ((self.cfg.throttle_channel, us[1]), (self.cfg.steering_channel, us[0])):
            off = us_to_ticks(width, freq)
            self._bus.write_i2c_block_data(self.addr, LED0_ON_L + 4 * ch, [0, 0, off & 0xFF, off >> 8])
        self._out_us = us
        self.telemetry["commanded_us"] = us
        self.telemetry["assumed_neutral"] = us == self._neutral_us

    def _set_up(self) -> None:
        """Neutral on a chip that runs as configured; the whole set-up on one that does not."""
        bus, a = self._bus, self.addr
        mode1 = bus.read_byte_data(a, MODE1)
        if not mode1 & SLEEP and mode1 & AI and bus.read_byte_data(a, PRE_SCALE) == self.prescale:
            self._write_channels(self._neutral_us)
            return
        awake = (mode1 & ~(RESTART | SLEEP)) | AI
        bus.write_byte_data(a, MODE1, awake | SLEEP)  # oscillator off: PRE_SCALE is writable now
        bus.write_byte_data(a, PRE_SCALE, self.prescale)
        bus.write_byte_data(a, MODE2, OUTDRV)
        self._write_channels(self._neutral_us)  # in place before the outputs start
        bus.write_byte_data(a, MODE1, awake)
        time.sleep(WAKE_S)
        self._verify()

    def _verify(self) -> None:
        mode1 = self._bus.read_byte_data(self.addr, MODE1)
        prescale = self._bus.read_byte_data(self.addr, PRE_SCALE)
        if mode1 & SLEEP or not mode1 & AI or prescale != self.prescale:
            raise ChipReset(f"MODE1 {mode1:#04x}, PRE_SCALE {prescale} (want awake, AI, {self.prescale})")

    # -- the worker -------------------------------------------------------------------------
    def _try_connect(self) -> bool:
        try:
            self._bus = self._open(self.cfg.i2c_bus)
        except Exception as e:  # no /dev/i2c-N (I2C not enabled), permissions
            self._note_failure(e)
            return False
        try:
            self._set_up()
        except Exception as e:  # the chip does not answer (EREMOTEIO), a reset under us
            self._close_bus()
            self._note_failure(e)
            return False
        self.connected = True
        self._verified_at = time.monotonic()
        self.stats["connects"] += 1
        log.info(
            "actuator pca9685: chip %#04x on /dev/i2c-%d at %d Hz",
            self.addr,
            self.cfg.i2c_bus,
            self.cfg.pwm_freq_hz,
        )
        return True

    def _note_failure(self, e: Exception) -> None:
        self.stats["open_failures"] += 1
        self.stats["last_error"] = str(e)
        if self.stats["open_failures"] == 1:
            log.warning(
                "actuator pca9685: chip %#04x on /dev/i2c-%d: %s; retrying", self.addr, self.cfg.i2c_bus, e
            )

    def _close_bus(self) -> None:
        with contextlib.suppress(Exception):
            self._bus.close()
        self._bus = None
        self.connected = False

    def _lost(self, e: Exception) -> None:
        log.warning("actuator pca9685: %r; neutral, reconnecting", e)
        with contextlib.suppress(Exception):  # one try: the error may have been a single glitch
            self._write_channels(self._neutral_us)
        self.stats["disconnects"] += 1
        self.stats["chip_resets"] += isinstance(e, ChipReset)
        self.stats["last_error"] = str(e)
        self.telemetry["assumed_neutral"] = True
        self._out_us = None
        self._close_bus()

    def _work(self) -> None:
        backoff = 0.05
        while True:
            if self._bus is None:
                if self._try_connect():
                    backoff = 0.05
                elif self._closing:
                    return  # nothing answers: there is nothing to put to neutral
                else:
                    with self._cond:  # a new command ends the wait: retry at once
                        if self._pending is None:
                            self._cond.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                    continue
            try:
                done = self._serve_once()
            except (OSError, ChipReset) as e:
                self._lost(e)
                continue
            if done:
                self._close_bus()
                return

    def _serve_once(self) -> bool:
        """Write the newest command, or neutral when the loop went quiet; True once closed."""
        now = time.monotonic()
        quiet_at = self._last_cmd + STALE_S if self._out_us not in (None, self._neutral_us) else None
        with self._cond:
            if self._pending is None and not self._closing:
                self._cond.wait(max(0.0, min(VERIFY_S, quiet_at - now)) if quiet_at else VERIFY_S)
            pending, self._pending = self._pending, None
            closing = self._closing
        now = time.monotonic()
        if pending is not None:
            us, t = pending
            if now - t > STALE_S and not closing:
                self.stats["dropped_stale"] += 1
            else:
                self._write_channels(us)
                self.stats["sent"] += 1
        elif quiet_at is not None and now >= quiet_at:
            log.warning("actuator pca9685: no command for %.0f ms: neutral", STALE_S * 1000)
            self._write_channels(self._neutral_us)
            self.stats["failsafe_neutral"] += 1
        if closing:
            return True
        if now - self._verified_at >= VERIFY_S:
            self._verify()
            self._verified_at = now
        return False


def probe(cfg: ActuatorConfig, bus_factory: Callable[[int], I2CBus] | None = None) -> dict[str, Any]:
    """What the chip runs now, read from its registers (nothing is written)."""
    bus = (bus_factory or open_smbus)(cfg.i2c_bus)
    try:
        mode1 = bus.read_byte_data(cfg.i2c_address, MODE1)
        prescale = bus.read_byte_data(cfg.i2c_address, PRE_SCALE)
        out: dict[str, Any] = {"mode1": mode1, "asleep": bool(mode1 & SLEEP), "prescale": prescale}
        out["frequency_hz"] = round(OSC_HZ / (4096 * (prescale + 1)), 2)
        for name in ("steering_channel", "throttle_channel"):
            base = LED0_ON_L + 4 * getattr(cfg, name)
            on_l, on_h, off_l, off_h = (bus.read_byte_data(cfg.i2c_address, base + i) for i in range(4))
            ticks = 0 if off_h & 0x10 else ((off_h & 0xF) << 8 | off_l) - ((on_h & 0xF) << 8 | on_l)
            out[name.replace("_channel", "_us")] = round(ticks % 4096 * (prescale + 1) * 1e6 / OSC_HZ, 1)
        return out
    finally:
        bus.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m vehicle.pca9685 {probe,neutral} --profile P``: read the chip, or put it to neutral
    (e.g. systemd's ExecStopPost after the car's process was killed: the chip has no watchdog)."""
    import argparse
    import json

    from edgepilot.config import load_profile

    p = argparse.ArgumentParser(prog="python -m vehicle.pca9685")
    p.add_argument("action", choices=("probe", "neutral"))
    p.add_argument("--profile", default="kit-picam-pca9685")
    args = p.parse_args(argv)
    cfg = load_profile(args.profile).actuator
    if cfg.kind != "pca9685":
        raise SystemExit(f"profile {args.profile}: actuator.kind is {cfg.kind!r}, not 'pca9685'")
    if args.action == "neutral":
        act = PCA9685Actuator(cfg)  # its set-up writes neutral before it counts as connected
        deadline = time.monotonic() + 2.0
        while not act.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        reached = act.connected
        act.close()
        print(json.dumps({"neutral": reached, "us": act._neutral_us, "error": act.stats["last_error"]}))
        return 0 if reached else 1
    print(json.dumps(probe(cfg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
