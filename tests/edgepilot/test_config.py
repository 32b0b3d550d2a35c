"""Profiles: every shipped profile loads; errors name the file, the key and what was expected."""

from __future__ import annotations

import pytest

from edgepilot import EdgepilotError
from edgepilot.config import PROFILE_DIR, load_profile, override


@pytest.mark.parametrize("name", ["sim", "car", "edge", "cloud", "kit-picam-pca9685", "kit-picam-mm1"])
def test_shipped_profiles_load(name):
    p = load_profile(name)
    assert p.name == name
    assert p.broker.url.startswith("mqtt://")


def test_car_profile_values():
    p = load_profile("car")
    assert p.actuator.kind == "framed" and p.actuator.steering_center_us == 1500
    assert p.drive.throttle_cap == 0.5


def test_all_profile_files_are_tested():
    # kit-usb-arduino-rc: tests/vehicle/test_rc_input.py and tests/vehicle/test_firmware_rc.py
    shipped = ["car", "cloud", "edge", "kit-picam-mm1", "kit-picam-pca9685", "kit-usb-arduino-rc", "sim"]
    assert sorted(f.stem for f in PROFILE_DIR.glob("*.toml")) == shipped


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("[actuator]\nbaud = '115200'\n", "actuator.baud", "expected an integer"),
        ("[drive]\nthrottle_cap = 'fast'\n", "drive.throttle_cap", "expected a number"),
        ("[drive]\nauto_record = 1\n", "drive.auto_record", "expected true or false"),
        ("[actuatr]\nbaud = 1\n", "actuatr", "unknown key"),
        ("[actuator]\nbuad = 1\n", "actuator.buad", "unknown key"),
        ("[model]\ntrusted_keys = 'k.pub'\n", "model.trusted_keys", "expected a list"),
        ("[cloud]\noffload_tol = 0\n", "cloud.offload_tol", "must be > 0"),
        ("[cloud]\nmutual = 2\n", "cloud.mutual", "must be a share in [0, 1]"),
        ("[cloud]\nwarm_mutual = -0.1\n", "cloud.warm_mutual", "must be a share in [0, 1]"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path, text, key, expected):
    f = tmp_path / "mycar.toml"
    f.write_text(text)
    with pytest.raises(EdgepilotError) as e:
        load_profile(str(f))
    msg = str(e.value)
    assert msg.startswith(f"{f}: {key}")
    assert expected in msg


def test_bad_toml_and_missing_file(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("[broker\n")
    with pytest.raises(EdgepilotError, match="not valid TOML"):
        load_profile(str(f))
    with pytest.raises(EdgepilotError, match="no such profile"):
        load_profile(str(tmp_path / "nope.toml"))


def test_ints_accepted_for_floats_and_cli_override(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[sim]\nlatency_ms = 100\n")
    p = load_profile(str(f))
    assert p.sim.latency_ms == 100.0 and isinstance(p.sim.latency_ms, float)
    q = override(p.sim, latency_ms=None, scene_seed=3)
    assert q.latency_ms == 100.0 and q.scene_seed == 3
