"""``edgepilot profile from-donkey MYCONFIG.py --out PROFILE.toml``: a DonkeyCar config as a profile.

Reading. DonkeyCar executes its ``config.py``/``myconfig.py`` as Python; this command does not
(a car's config is not a program we want to run). It parses the file with ``ast`` and takes
literal assignments: numbers, strings, booleans, None, tuples/lists/dicts of those, a sign, simple
arithmetic on numbers, a name assigned earlier (``CAMERA_FRAMERATE = DRIVE_LOOP_HZ``),
``A = B = value`` and ``NAME["key"] = value``. Any other assignment (``int(os.getenv(...))``) or
statement (``if``, ``for``, ``def``) is reported with its line and skipped; imports and comments
are ignored. As DonkeyCar's ``load_config`` does, a ``myconfig.py`` is read over the
``config.py`` next to it (or ``--base FILE``); keys neither file sets take DonkeyCar 5.1's
defaults (the values of its ``cfg_complete.py``), listed in the result as ``defaults_used``.

Converting. The drivetrain decides the actuator:

* ``PWM_STEERING_THROTTLE`` with ``PCA9685.<bus>:<hex address>.<channel>`` pins, and the
  deprecated ``I2C_SERVO`` -> ``kind = "pca9685"``. DonkeyCar's values are PCA9685 ticks at
  60 Hz (its pins' default frequency): 12-bit counts of a frame the chip runs with PRE_SCALE =
  round(25 MHz / (4096 x 60)) - 1 = 101, so one tick = 102 / 25 MHz = 4.08 us and
  ``us = ticks x 4.08`` (``PWM_*_SCALE`` multiplies the ticks first, as DonkeyCar does).
  Written as whole microseconds, they turn back into the same ticks on the same chip
  (4.08 us per tick, at most 0.5 us rounding), whatever the chip's real oscillator does.
  Steering centre = DonkeyCar's midpoint of the left and right ticks.
* ``MM1`` -> ``kind = "robohat"`` with the MM1_* pulse widths as they are (microseconds);
  DonkeyCar's RoboHATDriver sends 2000 us for full left and 1000 us for full right.
* ``MOCK`` -> ``kind = "none"``. Any other drivetrain is an error that names it.

The camera (CAMERA_TYPE, IMAGE_W/H, CAMERA_FRAMERATE, CAMERA_HFLIP/VFLIP), the loop rate
(DRIVE_LOOP_HZ), auto-record (AUTO_RECORD_ON_THROTTLE), the start mode (WEB_INIT_MODE) and the
joystick's throttle limit, dead zone and direction are carried; what has no counterpart here is
listed in ``not_carried``. The profile is checked (the same checks the car runs at start-up)
before it is written, and read back with ``load_profile`` after.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import operator
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig, CameraConfig, DriveConfig, GamepadConfig, Profile, load_profile
from vehicle.actuators import validate
from vehicle.cameras import validate_camera
from vehicle.pca9685 import prescale_for, ticks_to_us, validate_pca9685

DONKEY_PWM_HZ = 60  # DonkeyCar's PCA9685 frequency (pins.pwm_pin_by_id, actuator.PCA9685)
DRIVETRAINS = ("PWM_STEERING_THROTTLE", "I2C_SERVO", "MM1", "MOCK")

# DonkeyCar 5.1's cfg_complete.py values of the keys read here (its last assignment wins: that
# file sets STEERING_CHANNEL twice, 1 and then 0)
DONKEY_DEFAULTS: dict[str, Any] = {
    "DRIVE_LOOP_HZ": 20,
    "CAMERA_TYPE": "PICAM",
    "IMAGE_W": 160,
    "IMAGE_H": 120,
    "IMAGE_DEPTH": 3,
    "CAMERA_FRAMERATE": 20,
    "CAMERA_VFLIP": False,
    "CAMERA_HFLIP": False,
    "CAMERA_INDEX": 0,
    "CSIC_CAM_GSTREAMER_FLIP_PARM": 0,
    "PCA9685_I2C_ADDR": 0x40,
    "PCA9685_I2C_BUSNUM": None,
    "DRIVE_TRAIN_TYPE": "PWM_STEERING_THROTTLE",
    "PWM_STEERING_THROTTLE": {
        "PWM_STEERING_PIN": "PCA9685.1:40.1",
        "PWM_STEERING_SCALE": 1.0,
        "PWM_STEERING_INVERTED": False,
        "PWM_THROTTLE_PIN": "PCA9685.1:40.0",
        "PWM_THROTTLE_SCALE": 1.0,
        "PWM_THROTTLE_INVERTED": False,
        "STEERING_LEFT_PWM": 460,
        "STEERING_RIGHT_PWM": 290,
        "THROTTLE_FORWARD_PWM": 500,
        "THROTTLE_STOPPED_PWM": 370,
        "THROTTLE_REVERSE_PWM": 220,
    },
    "STEERING_CHANNEL": 0,
    "THROTTLE_CHANNEL": 0,
    "STEERING_LEFT_PWM": 460,
    "STEERING_RIGHT_PWM": 290,
    "THROTTLE_FORWARD_PWM": 500,
    "THROTTLE_STOPPED_PWM": 370,
    "THROTTLE_REVERSE_PWM": 220,
    "MM1_STEERING_MID": 1500,
    "MM1_MAX_FORWARD": 2000,
    "MM1_STOPPED_PWM": 1500,
    "MM1_MAX_REVERSE": 1000,
    "MM1_SERIAL_PORT": "/dev/ttyS0",
    "AUTO_RECORD_ON_THROTTLE": True,
    "WEB_INIT_MODE": "user",
    "JOYSTICK_MAX_THROTTLE": 0.5,
    "JOYSTICK_DEADZONE": 0.01,
    "JOYSTICK_THROTTLE_DIR": -1.0,
    "JOYSTICK_STEERING_SCALE": 1.0,
    "CONTROLLER_TYPE": "xbox",
}
USED = set(DONKEY_DEFAULTS)
NOT_CARRIED = {
    "CONTROLLER_TYPE": "edgepilot reads any pygame gamepad by axis number ([gamepad] section)",
    "JOYSTICK_STEERING_SCALE": "no steering scale on the gamepad here",
    "IMAGE_DEPTH": "edgepilot's models take colour images",
    "JOYSTICK_MAX_THROTTLE": "DonkeyCar scales the stick by it; edgepilot caps the throttle at it",
}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_BINOPS[ast.FloorDiv] = operator.floordiv


# -- reading the config without running it --------------------------------------------------


class Unsupported(Exception):
    pass


@dataclass
class DonkeyConfig:
    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # key -> "file:line"
    unsupported: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def get(self, key: str) -> Any:
        return self.values[key] if key in self.values else DONKEY_DEFAULTS[key]


def _eval(node: ast.expr, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _eval(node.operand, names)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise Unsupported("a sign on something that is not a number")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left, names), _eval(node.right, names)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b)):
            raise Unsupported("arithmetic on something that is not a number")
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.Tuple | ast.List):
        items = [_eval(e, names) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise Unsupported("a ** in a dict")
        return {_eval(k, names): _eval(v, names) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise Unsupported(f"{node.id} is not assigned before this line")
    raise Unsupported("not a literal (the file is read, not run)")


def _assign(cfg: DonkeyConfig, target: ast.expr, value: Any, where: str) -> None:
    if isinstance(target, ast.Name):
        cfg.values[target.id] = value
        cfg.where[target.id] = where
        return
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        table = cfg.values.get(target.value.id)
        if isinstance(table, dict):
            table[_eval(target.slice, cfg.values)] = value
            return
    raise Unsupported("an assignment target other than NAME or NAME[key]")


def read_config(path: Path, cfg: DonkeyConfig) -> DonkeyConfig:
    """Add the literal assignments of ``path`` to ``cfg`` (later files override earlier ones)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EdgepilotError(f"{path}: cannot read the DonkeyCar config ({e.strerror})") from None
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise EdgepilotError(f"{path}:{e.lineno}: not valid Python ({e.msg})") from None
    lines = text.splitlines()
    cfg.files.append(str(path))
    for stmt in tree.body:
        where = f"{path.name}:{stmt.lineno}"
        if isinstance(stmt, ast.Import | ast.ImportFrom) or (
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        ):
            continue  # imports and docstrings define no settings
        try:
            if isinstance(stmt, ast.Assign):
                value = _eval(stmt.value, cfg.values)
                for target in stmt.targets:
                    _assign(cfg, target, value, where)
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                _assign(cfg, stmt.target, _eval(stmt.value, cfg.values), where)
            else:
                raise Unsupported(f"a {type(stmt).__name__.lower()} statement")
        except Unsupported as e:
            cfg.unsupported.append(f"{where}: {lines[stmt.lineno - 1].strip()[:80]} -- {e}")
    return cfg


# -- converting ----------------------------------------------------------------------------


def _us(ticks: float) -> int:
    return int(round(ticks_to_us(ticks, DONKEY_PWM_HZ)))


def parse_pca9685_pin(pin: Any, key: str) -> tuple[int, int, int]:
    """``"PCA9685.1:40.13"`` -> (bus 1, address 0x40, channel 13)."""
    m = re.fullmatch(r"PCA9685\.(\d+):([0-9a-fA-F]{1,2})\.(\d+)", str(pin))
    if m is None:
        raise EdgepilotError(
            f"{key} = {pin!r}: edgepilot drives the servo and ESC through a PCA9685 pin "
            '("PCA9685.<bus>:<hex address>.<channel>"), a Robo HAT MM1 or its own firmware, '
            "not through RPI_GPIO/PIGPIO pins"
        )
    return int(m.group(1)), int(m.group(2), 16), int(m.group(3))


def _pwm_ticks(dt: dict[str, Any], steer_scale: float, thr_scale: float) -> dict[str, int]:
    """DonkeyCar's ticks as its PulseController sends them: int(ticks x scale)."""
    left, right = int(dt["STEERING_LEFT_PWM"] * steer_scale), int(dt["STEERING_RIGHT_PWM"] * steer_scale)
    return {
        "steering_left_us": _us(left),
        "steering_center_us": _us(math.floor(left + (right - left) / 2)),  # DonkeyCar's angle 0
        "steering_right_us": _us(right),
        "throttle_reverse_us": _us(int(dt["THROTTLE_REVERSE_PWM"] * thr_scale)),
        "throttle_neutral_us": _us(int(dt["THROTTLE_STOPPED_PWM"] * thr_scale)),
        "throttle_forward_us": _us(int(dt["THROTTLE_FORWARD_PWM"] * thr_scale)),
    }


def _pwm_steering_throttle(cfg: DonkeyConfig) -> dict[str, Any]:
    dt = {**DONKEY_DEFAULTS["PWM_STEERING_THROTTLE"], **(cfg.get("PWM_STEERING_THROTTLE") or {})}
    sbus, saddr, sch = parse_pca9685_pin(dt["PWM_STEERING_PIN"], "PWM_STEERING_PIN")
    tbus, taddr, tch = parse_pca9685_pin(dt["PWM_THROTTLE_PIN"], "PWM_THROTTLE_PIN")
    if (sbus, saddr) != (tbus, taddr):
        raise EdgepilotError(
            f"PWM_STEERING_PIN and PWM_THROTTLE_PIN are on two PCA9685 boards ({sbus}:{saddr:x}, "
            f"{tbus}:{taddr:x}); edgepilot drives both channels on one board"
        )
    for key in ("PWM_STEERING_INVERTED", "PWM_THROTTLE_INVERTED"):
        if dt[key]:
            raise EdgepilotError(f"{key} = True: inverted PWM outputs are not supported by edgepilot")
    out = {"kind": "pca9685", "i2c_bus": sbus, "i2c_address": saddr, "steering_channel": sch}
    out |= {"throttle_channel": tch, "pwm_freq_hz": DONKEY_PWM_HZ}
    return out | _pwm_ticks(dt, float(dt["PWM_STEERING_SCALE"]), float(dt["PWM_THROTTLE_SCALE"]))


def _i2c_servo(cfg: DonkeyConfig) -> dict[str, Any]:
    keys = ("STEERING_LEFT_PWM", "STEERING_RIGHT_PWM", "THROTTLE_FORWARD_PWM", "THROTTLE_STOPPED_PWM")
    ticks = {k: cfg.get(k) for k in (*keys, "THROTTLE_REVERSE_PWM")}
    bus = cfg.get("PCA9685_I2C_BUSNUM")
    out = {
        "kind": "pca9685",
        "i2c_bus": 1 if bus is None else bus,
        "i2c_address": cfg.get("PCA9685_I2C_ADDR"),
    }
    out |= {"steering_channel": cfg.get("STEERING_CHANNEL"), "throttle_channel": cfg.get("THROTTLE_CHANNEL")}
    return out | {"pwm_freq_hz": DONKEY_PWM_HZ} | _pwm_ticks(ticks, 1.0, 1.0)


def _mm1(cfg: DonkeyConfig) -> dict[str, Any]:
    return {
        "kind": "robohat",
        "port": cfg.get("MM1_SERIAL_PORT"),
        "steering_left_us": 2000,  # RoboHATDriver: steering -1 -> 2000 us, +1 -> 1000 us
        "steering_center_us": cfg.get("MM1_STEERING_MID"),
        "steering_right_us": 1000,
        "throttle_reverse_us": cfg.get("MM1_MAX_REVERSE"),
        "throttle_neutral_us": cfg.get("MM1_STOPPED_PWM"),
        "throttle_forward_us": cfg.get("MM1_MAX_FORWARD"),
    }


def convert_actuator(cfg: DonkeyConfig) -> dict[str, Any]:
    kind = cfg.get("DRIVE_TRAIN_TYPE")
    if kind == "PWM_STEERING_THROTTLE":
        return _pwm_steering_throttle(cfg)
    if kind == "I2C_SERVO":
        return _i2c_servo(cfg)
    if kind == "MM1":
        return _mm1(cfg)
    if kind == "MOCK":
        return {"kind": "none"}
    raise EdgepilotError(
        f"DRIVE_TRAIN_TYPE = {kind!r} is not supported by edgepilot: it drives a steering servo and an ESC "
        f"through a PCA9685 (PWM_STEERING_THROTTLE with PCA9685 pins, or I2C_SERVO), a Robo HAT MM1 (MM1), "
        f"or nothing (MOCK); {cfg.where.get('DRIVE_TRAIN_TYPE', 'DonkeyCar default')}"
    )


def convert_camera(cfg: DonkeyConfig, notes: list[str]) -> dict[str, Any]:
    w, h, fps = cfg.get("IMAGE_W"), cfg.get("IMAGE_H"), cfg.get("CAMERA_FRAMERATE")
    out: dict[str, Any] = {"width": w, "height": h, "fps": fps}
    out |= {"flip_h": bool(cfg.get("CAMERA_HFLIP")), "flip_v": bool(cfg.get("CAMERA_VFLIP"))}
    cam = cfg.get("CAMERA_TYPE")
    if cam == "PICAM":
        return {"kind": "picamera2", "source": "0"} | out
    if cam in ("WEBCAM", "CVCAM"):
        return {"kind": "v4l2", "source": str(cfg.get("CAMERA_INDEX"))} | out
    if cam == "V4L":
        return {"kind": "v4l2", "source": "/dev/video0"} | out
    if cam == "CSIC":  # a Jetson's CSI camera: flips go into nvvidconv's flip-method
        flip = cfg.get("CSIC_CAM_GSTREAMER_FLIP_PARM")
        pipeline = (
            f"nvarguscamerasrc ! video/x-raw(memory:NVMM), width={w}, height={h}, framerate={fps}/1 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, width={w}, height={h}, format=BGRx ! "
            "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1"
        )
        return {"kind": "gstreamer", "source": pipeline} | out
    notes.append(f'CAMERA_TYPE = {cam!r} has no counterpart: camera.kind = "auto" (set it for your camera)')
    return {"kind": "auto"} | out


def convert(cfg: DonkeyConfig) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Profile sections from the DonkeyCar values, and what could not be carried over."""
    notes = [f"{k}: {why}" for k, why in NOT_CARRIED.items() if k in cfg.values]
    if cfg.get("IMAGE_DEPTH") != 3:
        notes.append(f"IMAGE_DEPTH = {cfg.get('IMAGE_DEPTH')}: recorded and driven in colour here")
    mode = cfg.get("WEB_INIT_MODE")
    drive = {
        "rate_hz": float(cfg.get("DRIVE_LOOP_HZ")),
        "auto_record": bool(cfg.get("AUTO_RECORD_ON_THROTTLE")),
    }
    drive |= {"mode": mode if mode in ("user", "local_angle", "local") else "user"}
    drive["throttle_cap"] = float(min(1.0, abs(cfg.get("JOYSTICK_MAX_THROTTLE"))))
    gamepad = {
        "deadzone": float(cfg.get("JOYSTICK_DEADZONE")),
        "invert_throttle": cfg.get("JOYSTICK_THROTTLE_DIR") < 0,
    }
    sections = {"camera": convert_camera(cfg, notes), "actuator": convert_actuator(cfg)}
    if sections["actuator"].get("port") == "/dev/ttyS0":
        notes.append(
            "MM1_SERIAL_PORT /dev/ttyS0 is the GPIO UART on a Pi 3/4 only; /dev/serial0 names it on every Pi"
        )
    return sections | {"drive": drive, "gamepad": gamepad}, notes


def build_profile(sections: dict[str, dict[str, Any]], name: str, drivetrain: str) -> Profile:
    """The typed profile, checked as the car checks it at start-up."""
    prof = Profile(name=name)
    for key, cls in (("camera", CameraConfig), ("actuator", ActuatorConfig), ("drive", DriveConfig)):
        setattr(prof, key, cls(**sections[key]))
    prof.gamepad = GamepadConfig(**sections["gamepad"])
    validate_camera(prof.camera)
    try:
        validate(prof.actuator)
        if prof.actuator.kind == "pca9685":
            validate_pca9685(prof.actuator)
    except EdgepilotError as e:
        hint = ""
        if drivetrain == "I2C_SERVO" and prof.actuator.steering_channel == prof.actuator.throttle_channel:
            hint = " (DonkeyCar's cfg_complete.py sets STEERING_CHANNEL twice, the last to 0: set it in myconfig.py)"
        raise EdgepilotError(f"the converted calibration is not usable: {e}{hint}") from None
    return prof


# -- writing the TOML -----------------------------------------------------------------------


def _toml(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if key == "i2c_address":
        return f"{value:#04x}"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def render_toml(sections: dict[str, dict[str, Any]], cfg: DonkeyConfig, name: str, drivetrain: str) -> str:
    tick = ticks_to_us(1, DONKEY_PWM_HZ)
    lines = [
        f"# Made by `edgepilot profile from-donkey` from {', '.join(cfg.files)}.",
        f"# DRIVE_TRAIN_TYPE {drivetrain}. PCA9685 ticks became microseconds at {DONKEY_PWM_HZ} Hz: PRE_SCALE "
        f"{prescale_for(DONKEY_PWM_HZ)}, one tick = {tick:.2f} us.",
        "# Add [broker] and [model] for the edge node and the fleet (launch/profiles/car.toml shows them).",
        f'name = "{name}"',
    ]
    sources = {
        "steering_left_us": "STEERING_LEFT_PWM",
        "steering_right_us": "STEERING_RIGHT_PWM",
        "throttle_forward_us": "THROTTLE_FORWARD_PWM",
        "throttle_neutral_us": "THROTTLE_STOPPED_PWM",
        "throttle_reverse_us": "THROTTLE_REVERSE_PWM",
    }
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            note = ""
            if section == "actuator" and key in sources and values["kind"] == "pca9685":
                note = f"  # {sources[key]}: {value / tick:.0f} ticks"
            lines.append(f"{key} = {_toml(value, key)}{note}")
    return "\n".join(lines) + "\n"


def _resolve_files(config: Path, base: str | None) -> list[Path]:
    if base is not None:
        return [Path(base), config]
    sibling = config.with_name("config.py")
    return [sibling, config] if config.name == "myconfig.py" and sibling.is_file() else [config]


def from_donkey(args: argparse.Namespace) -> dict[str, Any]:
    """``profile from-donkey``: read, convert, check, write, read back."""
    out = Path(args.out)
    if out.exists() and not getattr(args, "force", False):
        raise EdgepilotError(f"{out} exists (--force to replace it)")
    cfg = DonkeyConfig()
    for path in _resolve_files(Path(args.config), getattr(args, "base", None)):
        read_config(path, cfg)
    drivetrain = cfg.get("DRIVE_TRAIN_TYPE")
    sections, notes = convert(cfg)
    name = getattr(args, "name", None) or out.stem
    built = build_profile(sections, name, drivetrain)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_toml(sections, cfg, name, drivetrain))
    loaded = load_profile(str(out))
    for section in ("camera", "actuator", "drive", "gamepad"):
        if asdict(getattr(loaded, section)) != asdict(getattr(built, section)):
            raise EdgepilotError(f"{out}: [{section}] did not read back as written (a bug: please report it)")
    return {
        "profile": str(out),
        "read": cfg.files,
        "drivetrain": drivetrain,
        "actuator": loaded.actuator.kind,
        "camera": loaded.camera.kind,
        "ticks_to_us": f"{ticks_to_us(1, DONKEY_PWM_HZ):.2f} us per tick at {DONKEY_PWM_HZ} Hz",
        "defaults_used": sorted(k for k in USED if k not in cfg.values),
        "not_carried": notes,
        "unsupported": cfg.unsupported,
    }
