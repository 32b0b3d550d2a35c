"""The standard-kit profiles load and drive: DriveLoop (edgepilot.drive.loop) with make_camera (the
picamera2 stand-in, tests/standins) and make_actuator -- the PCA9685 driver against the chip's
register model (tests/standins/pca9685_chip.py), the Robo HAT MM1 driver on a pty. Frames go
in, the chip's pins follow the commands, and every run ends at neutral."""

from __future__ import annotations

import os
import select
import threading
import tty
from dataclasses import replace

import pytest

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig, load_profile
from edgepilot.drive.loop import DriveLoop, LoopOptions
from edgepilot.drive.parts import UserState
from tests.helpers import wait_for
from tests.standins.pca9685_chip import ModelI2C, PCA9685Chip
from vehicle.cameras import make_camera
from vehicle.drivetrain import make_actuator

# (steering, throttle) the user holds, each for a few frames; throttle 1.0 meets the profile's cap
SCRIPT = [(0.0, 0.0), (-1.0, 0.2), (1.0, 0.4), (0.5, -0.5), (0.0, 1.0), (-0.25, 0.0)]
HOLD = 3


class ScriptedUser:
    """The user: each command of SCRIPT for HOLD frames."""

    def __init__(self) -> None:
        self.n = 0

    def poll(self, frame) -> UserState:
        s, t = SCRIPT[min(self.n // HOLD, len(SCRIPT) - 1)]
        self.n += 1
        return UserState(steering=s, throttle=t)


def expected_us(cfg: ActuatorConfig, steering: float, throttle: float) -> tuple[float, float]:
    """The pulse widths the profile's calibration asks for, worked out here."""

    def side(x: float, neg: int, mid: int, pos: int) -> float:
        return mid + abs(x) * ((pos if x >= 0 else neg) - mid)

    return (
        side(steering, cfg.steering_left_us, cfg.steering_center_us, cfg.steering_right_us),
        side(throttle, cfg.throttle_reverse_us, cfg.throttle_neutral_us, cfg.throttle_forward_us),
    )


def chip_pins(chip: PCA9685Chip, cfg: ActuatorConfig) -> tuple[float | None, float | None]:
    return chip.pulse_us(cfg.steering_channel), chip.pulse_us(cfg.throttle_channel)


def near(got, want, chip: PCA9685Chip) -> bool:
    half_tick = (chip.regs[0xFE] + 1) / 25e6 * 1e6 / 2
    return all(g is not None and abs(g - w) <= half_tick for g, w in zip(got, want, strict=True))


def test_both_kit_profiles_load():
    p = load_profile("kit-picam-pca9685")
    assert (p.camera.kind, p.actuator.kind, p.actuator.i2c_address) == ("picamera2", "pca9685", 0x40)
    assert (p.actuator.steering_channel, p.actuator.throttle_channel, p.actuator.pwm_freq_hz) == (1, 0, 60)
    m = load_profile("kit-picam-mm1")
    assert (m.camera.kind, m.actuator.kind, m.actuator.port) == ("picamera2", "robohat", "/dev/serial0")


def test_pi_camera_and_pca9685_profile_drives_the_chip(picam):
    prof = load_profile("kit-picam-pca9685")
    cfg = prof.actuator
    i2c = ModelI2C(bus=cfg.i2c_bus, chips={cfg.i2c_address: PCA9685Chip()})
    chip = i2c.chips[cfg.i2c_address]
    camera = make_camera(prof.camera)
    actuator = make_actuator(cfg, i2c_bus_factory=i2c.open)
    seen: list[tuple[tuple[float, float], tuple]] = []

    def on_frame(frame, info) -> None:
        assert frame.image.shape == (prof.camera.height, prof.camera.width, 3)
        want = expected_us(cfg, info["steering"], info["throttle"])
        wait_for(lambda: near(chip_pins(chip, cfg), want, chip), 2)  # the worker writes it
        seen.append((want, chip_pins(chip, cfg)))

    opts = LoopOptions(mode="user", throttle_cap=prof.drive.throttle_cap, rate_hz=prof.drive.rate_hz)
    loop = DriveLoop(camera, actuator, user=ScriptedUser(), options=opts, on_frame=on_frame)
    try:
        stats = loop.run(max_frames=len(SCRIPT) * HOLD)
    finally:
        camera.close()
    assert stats.frames == len(SCRIPT) * HOLD and picam.INSTANCES[0].frames_delivered >= stats.frames
    assert all(near(pins, want, chip) for want, pins in seen), seen
    wanted = {expected_us(cfg, s, max(-0.5, min(0.5, t))) for s, t in SCRIPT}
    assert {want for want, _ in seen} == wanted  # every command reached the pins, capped at 0.5
    assert near(chip_pins(chip, cfg), expected_us(cfg, 0, 0), chip)  # neutral at the end
    assert actuator.stats["failsafe_neutral"] == 0


def test_a_camera_that_stops_mid_drive_stops_the_car_at_neutral(picam, monkeypatch):
    from vehicle import cameras

    monkeypatch.setattr(cameras, "START_TIMEOUT_S", 0.6)
    prof = load_profile("kit-picam-pca9685")
    i2c = ModelI2C(bus=1)
    chip = i2c.chips[0x40]
    camera = make_camera(prof.camera, timeout_s=0.3)
    actuator = make_actuator(prof.actuator, i2c_bus_factory=i2c.open)

    def on_frame(frame, info) -> None:
        if loop.stats.frames == 5:
            wait_for(
                lambda: near(chip_pins(chip, prof.actuator), expected_us(prof.actuator, 0, 0.5), chip), 2
            )
            picam.INSTANCES[0].stall()

    class Forward:
        def poll(self, frame) -> UserState:
            return UserState(steering=0.0, throttle=0.5)

    loop = DriveLoop(camera, actuator, user=Forward(), options=LoopOptions(mode="user"), on_frame=on_frame)
    try:
        with pytest.raises(EdgepilotError, match="no frame for 0.3 s"):
            loop.run(max_frames=1000)
    finally:
        camera.close()
    assert 5 <= loop.stats.frames <= 6  # the stall, then at most the frame already captured
    assert near(chip_pins(chip, prof.actuator), expected_us(prof.actuator, 0, 0), chip)


def test_pi_camera_and_mm1_profile_drives_the_serial_port(picam, tmp_path):
    prof = load_profile("kit-picam-mm1")
    master, slave = os.openpty()
    tty.setraw(slave)
    received = bytearray()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if select.select([master], [], [], 0.05)[0]:
                received.extend(os.read(master, 4096))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    actuator = make_actuator(replace(prof.actuator, port=os.ttyname(slave)))
    camera = make_camera(prof.camera)
    loop = DriveLoop(
        camera, actuator, user=ScriptedUser(), options=LoopOptions(mode="user", throttle_cap=0.5)
    )
    try:
        assert wait_for(lambda: actuator.connected, 5)
        stats = loop.run(max_frames=len(SCRIPT) * HOLD)
        assert wait_for(lambda: received.endswith(b"1500, 1500\r"), 5), bytes(received[-80:])
    finally:
        done.set()
        reader.join()
        camera.close()
        os.close(master)
        os.close(slave)
    assert stats.frames == len(SCRIPT) * HOLD
    lines = {tuple(int(v) for v in raw.split(b", ")) for raw in bytes(received).split(b"\r") if raw}
    assert len(lines) >= 4  # the commands went out, not only neutral
