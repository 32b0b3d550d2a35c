"""The PCA9685 driver (vehicle.pca9685) against a register-level model of the chip
(tests/standins/pca9685_chip.py: the datasheet's MODE1/MODE2/PRE_SCALE/LEDn/ALL_LED behaviour
behind smbus2's SMBus methods). The chip is the stand-in; the driver, its worker thread,
the calibration and make_actuator are the real code. Pulse widths are read off the model's
registers and prescale: what the chip would put on its pins."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig
from tests.helpers import wait_for
from tests.standins.pca9685_chip import (
    AI,
    MODE1,
    MODE2,
    OUTDRV,
    PRE_SCALE,
    SLEEP,
    ModelI2C,
    PCA9685Chip,
    led_base,
)
from vehicle import pca9685
from vehicle.actuators import STALE_S
from vehicle.drivetrain import make_actuator

STEER, THROTTLE = 1, 0  # DonkeyCar's default channels
CFG = ActuatorConfig(
    kind="pca9685",
    steering_left_us=1100,
    steering_center_us=1480,
    steering_right_us=1880,
    throttle_reverse_us=1200,
    throttle_neutral_us=1500,
    throttle_forward_us=1700,
    steering_channel=STEER,
    throttle_channel=THROTTLE,
    pwm_freq_hz=60,
)
NEUTRAL = (1480.0, 1500.0)


@pytest.fixture
def i2c():
    return ModelI2C(bus=1)


def tick(chip: PCA9685Chip) -> float:
    """One count of the chip's PWM frame, from its PRE_SCALE register."""
    return (chip.regs[PRE_SCALE] + 1) / 25e6 * 1e6


def outputs(chip: PCA9685Chip) -> tuple[float | None, float | None]:
    return chip.pulse_us(STEER), chip.pulse_us(THROTTLE)


def near(got: tuple[float | None, ...], want: tuple[float, ...], chip: PCA9685Chip) -> bool:
    """Equal within half a count: the chip's resolution."""
    return all(g is not None and abs(g - w) <= tick(chip) / 2 for g, w in zip(got, want, strict=True))


def first_changes(chip: PCA9685Chip, since: int, before: tuple[float, float]) -> tuple[float | None, ...]:
    """Each channel's first output after trace entry ``since`` that differs from ``before``."""
    firsts = []
    for ch, old in ((STEER, before[0]), (THROTTLE, before[1])):
        vals = [o[ch] for o in chip.trace[since:]]
        firsts.append(next((v for v in vals if v is None or abs(v - old) > tick(chip) / 2), None))
    return tuple(firsts)


def start(i2c: ModelI2C, cfg: ActuatorConfig = CFG):
    act = make_actuator(cfg, i2c_bus_factory=i2c.open)
    assert wait_for(lambda: act.connected, 5), act.stats
    return act


def drive(act, chip: PCA9685Chip, steering: float, throttle: float, want: tuple[float, float]) -> None:
    """Command at the loop's 20 Hz until the chip's pins show ``want``."""
    for _ in range(100):
        act.run(steering, throttle)
        if wait_for(lambda: near(outputs(chip), want, chip), 0.05):
            return
    raise AssertionError(f"chip outputs {outputs(chip)}, wanted {want}; stats {act.stats}")


@pytest.mark.parametrize("freq", [50, 60])
def test_set_up_follows_the_datasheet_and_the_first_pulses_are_neutral(i2c, freq):
    chip = i2c.chips[0x40]
    act = start(i2c, replace(CFG, pwm_freq_hz=freq))
    try:
        assert chip.regs[MODE1] & (SLEEP | AI) == AI  # awake, auto-increment
        assert chip.regs[MODE2] == OUTDRV  # totem pole, not inverted, update on STOP
        assert abs(chip.frequency_hz() - freq) / freq < 0.01  # nearest prescale to the frame rate
        assert chip.prescale_blocked == 0 and chip.restart_too_soon == 0
        pulsing = [o for o in chip.trace if o[STEER] is not None or o[THROTTLE] is not None]
        assert pulsing and all(near((o[STEER], o[THROTTLE]), NEUTRAL, chip) for o in pulsing)
        assert all(o[ch] is None for o in chip.trace for ch in range(16) if ch not in (STEER, THROTTLE))
    finally:
        act.close()


@pytest.mark.parametrize(
    ("steering", "throttle", "want"),
    [
        (-1, 0, (1100, 1500)),
        (1, 0, (1880, 1500)),
        (0, 1, (1480, 1700)),
        (0, -1, (1480, 1200)),
        (0.5, 0.3, (1680, 1560)),
    ],
)
def test_pins_carry_the_calibrated_pulse_widths(i2c, steering, throttle, want):
    chip = i2c.chips[0x40]
    act = start(i2c)
    try:
        drive(act, chip, steering, throttle, want)
    finally:
        act.close()
    assert near(outputs(chip), NEUTRAL, chip)  # close() leaves neutral on the pins


def test_reversed_directions_and_other_channels(i2c):
    chip = i2c.chips[0x40]
    cfg = replace(CFG, steering_reverse=True, throttle_reverse=True, steering_channel=15, throttle_channel=4)
    act = make_actuator(cfg, i2c_bus_factory=i2c.open)
    try:
        assert wait_for(lambda: act.connected, 5)
        for _ in range(100):
            act.run(-1.0, 1.0)
            if wait_for(lambda: near((chip.pulse_us(15), chip.pulse_us(4)), (1880, 1200), chip), 0.05):
                break
        assert near((chip.pulse_us(15), chip.pulse_us(4)), (1880, 1200), chip)
        assert chip.pulse_us(STEER) is None and chip.pulse_us(THROTTLE) is None
    finally:
        act.close()


def test_no_pulse_width_ever_appears_that_was_not_commanded(i2c):
    """A channel is written in one transaction: no torn OFF_L/OFF_H mix reaches the pins. At 50 Hz
    (4.88 us counts) the steering range 1100..1880 us crosses 256 counts, so byte-wise writes would
    show pulses nobody commanded."""
    chip = i2c.chips[0x40]
    act = start(i2c, replace(CFG, pwm_freq_hz=50))
    commands = [(s / 10, t / 10) for s, t in zip(range(-10, 11), range(10, -11, -1), strict=True)]
    wanted_steer = {1480 + (s * 400 if s >= 0 else s * 380) for s, _ in commands} | {1480}
    wanted_thr = {1500 + (t * 200 if t >= 0 else t * 300) for _, t in commands} | {1500}
    try:
        for s, t in commands * 3:
            act.run(s, t)
            time.sleep(0.002)
        drive(act, chip, 0.0, 0.0, NEUTRAL)
    finally:
        act.close()
    assert act.stats["sent"] >= 10
    for ch, wanted in ((STEER, wanted_steer), (THROTTLE, wanted_thr)):
        seen = {o[ch] for o in chip.trace if o[ch] is not None}
        assert seen and all(min(abs(v - w) for w in wanted) <= tick(chip) / 2 for v in seen), (ch, seen)


def test_neutral_when_the_loop_stops_commanding(i2c):
    chip = i2c.chips[0x40]
    act = start(i2c)
    try:
        for _ in range(10):  # 0.5 s of driving at 20 Hz: the failsafe must not cut in
            last = time.monotonic()
            act.run(0.0, 0.5)
            time.sleep(0.05)
        assert act.stats["failsafe_neutral"] == 0 and near(outputs(chip), (1480, 1600), chip)
        assert wait_for(lambda: near(outputs(chip), NEUTRAL, chip), 5)
        assert time.monotonic() - last >= STALE_S  # not before the loop was quiet that long
        assert act.stats["failsafe_neutral"] == 1 and act.telemetry["assumed_neutral"]
        drive(act, chip, 0.0, 0.5, (1480, 1600))  # the loop comes back: so do the commands
    finally:
        act.close()


def test_i2c_errors_neutral_then_reconnect(i2c):
    chip = i2c.chips[0x40]
    act = start(i2c)
    try:
        drive(act, chip, 0.3, 0.5, (1600, 1600))
        n_trace = len(chip.trace)
        i2c.fail_next(4)  # noise on the bus: four transactions in a row are not acknowledged
        for _ in range(100):
            act.run(0.3, 0.5)
            if wait_for(lambda: act.stats["connects"] >= 2, 0.05):
                break
        drive(act, chip, 0.3, 0.5, (1600, 1600))
        assert near(first_changes(chip, n_trace, (1600, 1600)), NEUTRAL, chip)  # neutral before anything
        assert near(outputs(chip), (1600, 1600), chip)
        assert act.stats["disconnects"] >= 1 and act.stats["connects"] >= 2 and i2c.opens >= 2
        assert "Remote I/O error" in act.stats["last_error"]
    finally:
        act.close()


def test_board_off_the_bus_never_blocks_the_loop_and_comes_back_at_neutral(i2c):
    chip = i2c.chips[0x40]
    act = start(i2c)
    try:
        drive(act, chip, 0.3, 0.5, (1600, 1600))
        i2c.unplug()
        for _ in range(10):
            act.run(0.3, 0.5)
            time.sleep(0.02)
        assert wait_for(lambda: not act.connected, 5)
        assert near(outputs(chip), (1600, 1600), chip)  # a chip off the bus keeps its last pulses
        n_trace = len(chip.trace)
        i2c.plug()
        for _ in range(100):
            act.run(0.3, 0.5)
            if wait_for(lambda: act.connected, 0.05):
                break
        drive(act, chip, 0.3, 0.5, (1600, 1600))
        assert near(first_changes(chip, n_trace, (1600, 1600)), NEUTRAL, chip)  # neutral first
    finally:
        act.close()


def test_a_chip_that_lost_power_is_set_up_again(i2c, monkeypatch):
    monkeypatch.setattr(pca9685, "VERIFY_S", 0.1)
    chip = i2c.chips[0x40]
    act = start(i2c)
    try:
        drive(act, chip, 0.0, 0.5, (1480, 1600))
        chip.power_cycle()  # asleep, 200 Hz, all channels off
        assert outputs(chip) == (None, None)
        drive(act, chip, 0.0, 0.5, (1480, 1600))
        assert act.stats["chip_resets"] == 1
        pulsing = [(o[STEER], o[THROTTLE]) for o in chip.trace if o[STEER] is not None]
        assert near(pulsing[0], NEUTRAL, chip)
        assert abs(chip.frequency_hz() - 60) < 0.5
    finally:
        act.close()


def program(chip: PCA9685Chip, prescale: int, throttle_ticks: int) -> None:
    """A chip as a previous program left it: awake, running a throttle pulse."""
    chip.write(MODE1, [0x11 | AI])
    chip.write(PRE_SCALE, [prescale])
    chip.write(led_base(THROTTLE), [0, 0, throttle_ticks & 0xFF, throttle_ticks >> 8])
    chip.write(MODE1, [0x01 | AI])
    chip.trace.clear()


@pytest.mark.parametrize("prescale", [101, 30])  # our frequency / another program's 200 Hz
def test_a_chip_left_running_gets_neutral_before_anything_else(i2c, prescale):
    chip = i2c.chips[0x40]
    program(chip, prescale, 420)  # 1714 us at 60 Hz: the car would drive off
    assert chip.pulse_us(THROTTLE) is not None
    act = start(i2c)
    try:
        pulses = [o[THROTTLE] for o in chip.trace if o[THROTTLE] is not None]
        assert pulses and all(near((p,), (1500,), chip) for p in pulses)
        assert chip.frequency_hz() == pytest.approx(25e6 / (4096 * 102))
    finally:
        act.close()


def test_no_i2c_bus_is_retried_and_reported_never_raised(tmp_path):
    """The real smbus2 path: this machine has no /dev/i2c-7."""
    act = make_actuator(replace(CFG, i2c_bus=7))
    try:
        act.run(0.0, 0.5)  # the loop's call returns; nothing raises
        assert wait_for(lambda: act.stats["open_failures"] >= 2, 5)
        assert "/dev/i2c-7" in act.stats["last_error"] and not act.connected
    finally:
        act.close()
    assert not act._thread.is_alive()  # close() ends the worker even with no chip to reach


def test_calibration_and_board_settings_are_checked():
    for bad, msg in [
        (replace(CFG, pwm_freq_hz=300), r"pwm_freq_hz: 300 Hz is outside 40..200"),
        (replace(CFG, i2c_address=0x20), r"i2c_address: 0x20 is not a PCA9685 address"),
        (replace(CFG, throttle_channel=16), r"throttle_channel: 16 is not a channel"),
        (replace(CFG, throttle_channel=STEER), r"steering and throttle both on channel 1"),
        (replace(CFG, steering_center_us=1990), r"steering_center_us 1990 is not between"),
    ]:
        with pytest.raises(EdgepilotError, match=msg):
            make_actuator(bad, i2c_bus_factory=ModelI2C().open)


def test_datasheet_prescale_and_tick():
    assert (
        pca9685.prescale_for(60) == 101
        and pca9685.prescale_for(50) == 121
        and pca9685.prescale_for(200) == 30
    )
    assert pca9685.tick_us(60) == pytest.approx(4.08)
    assert pca9685.us_to_ticks(pca9685.ticks_to_us(370, 60), 60) == 370


def test_probe_reads_what_the_chip_runs(i2c):
    chip = i2c.chips[0x40]
    act = start(i2c)
    try:
        drive(act, chip, -1.0, 0.5, (1100, 1600))
        got = pca9685.probe(CFG, bus_factory=i2c.open)
    finally:
        act.close()
    assert got["prescale"] == 101 and not got["asleep"] and abs(got["frequency_hz"] - 59.84) < 0.01
    assert near((got["steering_us"], got["throttle_us"]), (1100, 1600), chip)


def test_neutral_command_without_a_bus_says_so(capsys):
    """``python -m vehicle.pca9685 neutral`` on this machine (no /dev/i2c-1): exit 1 and why."""
    assert pca9685.main(["neutral", "--profile", "kit-picam-pca9685"]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["neutral"] is False and "/dev/i2c-1" in out["error"]
