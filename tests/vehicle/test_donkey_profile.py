"""``profile from-donkey`` (vehicle.donkey_profile) on DonkeyCar 5.1's own config templates,
read out of the donkeycar 5.1.0 wheel that ./launch/setup keeps in .venv/cache/donkeycar (not
committed). The converted PCA9685 profile then drives the register model of the chip
(tests/standins/pca9685_chip.py): the chip must get DonkeyCar's own tick values."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import pytest

from edgepilot import EdgepilotError
from edgepilot.config import REPO_ROOT, load_profile
from tests.helpers import wait_for
from tests.standins.pca9685_chip import ModelI2C, led_base
from vehicle.commands import from_donkey_arguments
from vehicle.donkey_profile import from_donkey
from vehicle.drivetrain import make_actuator

WHEEL_DIR = REPO_ROOT / ".venv" / "cache" / "donkeycar"
# the datasheet's prescale for DonkeyCar's 60 Hz, worked out here rather than taken from the code
PRESCALE_60 = round(25e6 / (4096 * 60)) - 1  # 101
TICK_US = (PRESCALE_60 + 1) / 25e6 * 1e6  # 4.08 us


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Path:
    wheels = sorted(WHEEL_DIR.glob("donkeycar-5.1.0-*.whl"))
    if not wheels:
        pytest.fail(f"no donkeycar 5.1.0 wheel in {WHEEL_DIR}: run ./launch/setup (it fetches it from PyPI)")
    out = tmp_path_factory.mktemp("donkeycar")
    with zipfile.ZipFile(wheels[0]) as z:
        for name in ("cfg_complete.py", "myconfig.py"):
            (out / name).write_bytes(z.read(f"donkeycar/templates/{name}"))
    return out


def car_dir(templates: Path, tmp_path: Path, my_lines: str = "") -> Path:
    """A mycar/ as `donkey createcar` makes it: config.py = cfg_complete.py, plus myconfig.py."""
    car = tmp_path / "mycar"
    car.mkdir()
    (car / "config.py").write_bytes((templates / "cfg_complete.py").read_bytes())
    (car / "myconfig.py").write_text((templates / "myconfig.py").read_text() + my_lines)
    return car


def convert(config: Path, out: Path, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    from_donkey_arguments(parser)
    result = from_donkey(parser.parse_args([str(config), "--out", str(out), *extra]))
    json.dumps(result)  # the CLI prints it with --json
    return result


def test_cfg_complete_converts_to_a_pca9685_profile_with_donkeycars_ticks(templates, tmp_path):
    out = tmp_path / "car.toml"
    result = convert(templates / "cfg_complete.py", out)
    assert result["profile"] == str(out) and result["drivetrain"] == "PWM_STEERING_THROTTLE"
    prof = load_profile(str(out))
    a = prof.actuator
    assert (a.kind, a.i2c_bus, a.i2c_address, a.steering_channel, a.throttle_channel) == (
        "pca9685",
        1,
        0x40,
        1,
        0,
    )
    assert a.pwm_freq_hz == 60
    # cfg_complete.py: left 460, right 290, forward 500, stopped 370, reverse 220 ticks; centre 375
    want = {
        "steering_left_us": 460,
        "steering_center_us": 375,
        "steering_right_us": 290,
        "throttle_forward_us": 500,
        "throttle_neutral_us": 370,
        "throttle_reverse_us": 220,
    }
    for key, ticks in want.items():
        assert abs(getattr(a, key) - ticks * TICK_US) <= 0.5, key
    c = prof.camera
    assert (c.kind, c.source, c.width, c.height, c.fps, c.flip_h, c.flip_v) == (
        "picamera2",
        "0",
        160,
        120,
        20,
        False,
        False,
    )
    assert prof.drive.rate_hz == 20 and prof.drive.auto_record and prof.drive.mode == "user"
    assert prof.drive.throttle_cap == 0.5 and prof.gamepad.invert_throttle
    # what the file computes at run time is reported, with its line, not run
    unsupported = "\n".join(result["unsupported"])
    assert "cfg_complete.py:19: CAR_PATH = PACKAGE_PATH = os.path.dirname" in unsupported
    assert "WEB_CONTROL_PORT = int(os.getenv" in unsupported
    assert "GYM_CONF" not in unsupported  # GYM_CONF["racer_name"] = ... is a literal assignment
    assert result["defaults_used"] == [] or "MM1_SERIAL_PORT" not in result["defaults_used"]


def test_the_converted_profile_puts_donkeycars_ticks_on_the_chip(templates, tmp_path):
    out = tmp_path / "car.toml"
    convert(templates / "cfg_complete.py", out)
    i2c = ModelI2C(bus=1)
    chip = i2c.chips[0x40]
    act = make_actuator(load_profile(str(out)).actuator, i2c_bus_factory=i2c.open)

    def off_ticks(ch: int) -> int:
        r = chip.regs[led_base(ch) : led_base(ch) + 4]
        return ((r[3] & 0xF) << 8 | r[2]) - ((r[1] & 0xF) << 8 | r[0])

    try:
        assert wait_for(lambda: act.connected, 5)
        assert chip.regs[0xFE] == PRESCALE_60
        for (steering, throttle), ticks in [
            ((-1, 1), (460, 500)),
            ((1, -1), (290, 220)),
            ((0, 0), (375, 370)),
        ]:
            for _ in range(100):
                act.run(steering, throttle)
                if wait_for(lambda t=ticks: (off_ticks(1), off_ticks(0)) == t, 0.05):
                    break
            assert (off_ticks(1), off_ticks(0)) == ticks  # exactly what DonkeyCar wrote
    finally:
        act.close()


def test_myconfig_over_config_as_donkeycar_loads_them(templates, tmp_path):
    car = car_dir(
        templates,
        tmp_path,
        '\nDRIVE_TRAIN_TYPE = "MM1"\nMM1_STEERING_MID = 1480\nMM1_MAX_FORWARD = 1650\n'
        'CAMERA_TYPE = "WEBCAM"\nCAMERA_VFLIP = True\nCAMERA_HFLIP = True\nDRIVE_LOOP_HZ = 30\n'
        "CAMERA_FRAMERATE = DRIVE_LOOP_HZ\nAUTO_RECORD_ON_THROTTLE = False\nJOYSTICK_THROTTLE_DIR = 1.0\n",
    )
    result = convert(car / "myconfig.py", tmp_path / "mm1.toml")
    assert [Path(f).name for f in result["read"]] == ["config.py", "myconfig.py"]
    prof = load_profile(result["profile"])
    a = prof.actuator
    assert (a.kind, a.port) == ("robohat", "/dev/ttyS0")
    assert (a.steering_left_us, a.steering_center_us, a.steering_right_us) == (2000, 1480, 1000)
    assert (a.throttle_reverse_us, a.throttle_neutral_us, a.throttle_forward_us) == (1000, 1500, 1650)
    c = prof.camera
    assert (c.kind, c.source, c.fps, c.flip_h, c.flip_v) == ("v4l2", "0", 30, True, True)
    assert prof.drive.rate_hz == 30 and not prof.drive.auto_record and not prof.gamepad.invert_throttle


def test_pca9685_pins_scale_and_address_from_the_pin_strings(templates, tmp_path):
    car = car_dir(
        templates,
        tmp_path,
        '\nPWM_STEERING_THROTTLE["PWM_STEERING_PIN"] = "PCA9685.0:41.7"\n'
        'PWM_STEERING_THROTTLE["PWM_THROTTLE_PIN"] = "PCA9685.0:41.3"\n'
        'PWM_STEERING_THROTTLE["PWM_THROTTLE_SCALE"] = 0.9\n',
    )
    a = load_profile(convert(car / "myconfig.py", tmp_path / "p.toml")["profile"]).actuator
    assert (a.i2c_bus, a.i2c_address, a.steering_channel, a.throttle_channel) == (0, 0x41, 7, 3)
    assert abs(a.throttle_forward_us - 450 * TICK_US) <= 0.5  # int(500 x 0.9) ticks


def test_reading_never_runs_the_file(tmp_path):
    marker = tmp_path / "ran"
    cfg = tmp_path / "myconfig.py"
    cfg.write_text(f'open({str(marker)!r}, "w")\nDRIVE_TRAIN_TYPE = "MOCK"\nfor i in range(3):\n    pass\n')
    result = convert(cfg, tmp_path / "mock.toml")
    assert not marker.exists()
    assert [u.split(":")[1] for u in result["unsupported"]] == ["1", "3"]
    assert load_profile(result["profile"]).actuator.kind == "none"
    assert "STEERING_LEFT_PWM" in result["defaults_used"]  # no config.py next to it: DonkeyCar's defaults


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('DRIVE_TRAIN_TYPE = "VESC"\n', r"DRIVE_TRAIN_TYPE = 'VESC' is not supported .*myconfig.py:\d+"),
        (
            'PWM_STEERING_THROTTLE = {"PWM_STEERING_PIN": "RPI_GPIO.BOARD.33"}\n',
            r"PWM_STEERING_PIN = 'RPI_GPIO.BOARD.33': edgepilot drives .* PCA9685 pin",
        ),
        (
            'DRIVE_TRAIN_TYPE = "I2C_SERVO"\n',
            r"both on channel 0 \(DonkeyCar's cfg_complete.py sets STEERING_CHANNEL twice",
        ),
        (
            'PWM_STEERING_THROTTLE["PWM_THROTTLE_INVERTED"] = True\n',
            r"PWM_THROTTLE_INVERTED = True: inverted PWM",
        ),
        ("DRIVE_LOOP_HZ = (\n", r"myconfig.py:\d+: not valid Python"),
    ],
)
def test_what_cannot_drive_is_a_clear_error_and_writes_nothing(templates, tmp_path, lines, message):
    car = car_dir(templates, tmp_path, "\n" + lines)
    out = tmp_path / "bad.toml"
    with pytest.raises(EdgepilotError, match=message):
        convert(car / "myconfig.py", out)
    assert not out.exists()


def test_i2c_servo_with_its_channels_set(templates, tmp_path):
    car = car_dir(templates, tmp_path, '\nDRIVE_TRAIN_TYPE = "I2C_SERVO"\nSTEERING_CHANNEL = 1\n')
    a = load_profile(convert(car / "myconfig.py", tmp_path / "i2c.toml")["profile"]).actuator
    assert (a.kind, a.i2c_bus, a.steering_channel, a.throttle_channel) == ("pca9685", 1, 1, 0)


def test_an_existing_profile_is_not_replaced_without_force(templates, tmp_path):
    out = tmp_path / "car.toml"
    out.write_text("# mine\n")
    with pytest.raises(EdgepilotError, match="exists"):
        convert(templates / "cfg_complete.py", out)
    assert out.read_text() == "# mine\n"
    convert(templates / "cfg_complete.py", out, "--force")
    assert load_profile(str(out)).actuator.kind == "pca9685"
