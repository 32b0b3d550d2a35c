"""TOML profiles read into typed dataclasses.

A profile (``launch/profiles/<name>.toml``) holds the settings of one deployable: the
car, the simulator, the edge node or the cloud trainer. Every section is optional and
falls back to the defaults below, so a profile says only what differs. Unknown keys
and wrong types are errors that name the file, the key and what was expected — a typo
in a calibration value must not silently drive the car on defaults.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = Path(os.environ.get("EDGEPILOT_PROFILES", REPO_ROOT / "launch" / "profiles"))


@dataclass
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    password_file: str | None = None  # read at start-up; keeps secrets out of the profile
    tls_ca: str | None = None  # a CA file turns TLS on (mqtts)
    keepalive_s: int = 10


@dataclass
class CameraConfig:
    """The car's camera (``vehicle.cameras.make_camera``); the loop gets ``width`` x ``height``
    BGR frames turned by ``flip_h``/``flip_v`` first, then ``rotate`` degrees clockwise."""

    kind: str = "auto"  # auto | picamera2 | v4l2 | gstreamer | file (docs/hardware.md#cameras)
    source: str = "0"  # V4L2 index or /dev/videoN, a video file, a pipeline; picamera2: camera number
    width: int = 160
    height: int = 120
    fps: int = 20
    flip_h: bool = False  # mirror left-right
    flip_v: bool = False  # mirror top-bottom
    rotate: int = 0  # 0 | 90 | 180 | 270, clockwise


@dataclass
class ActuatorConfig:
    """Pulse widths in microseconds, as the servo and ESC see them."""

    kind: str = "sim"  # sim | robohat | framed | pca9685 | none
    # None: the kind's usual port -- framed: /dev/ttyACM0 (an Uno on USB); robohat:
    # /dev/serial0 (the Pi's GPIO UART, the only port the MM1's code.py reads commands from)
    port: str | None = None
    baud: int = 115200
    steering_left_us: int = 1000
    steering_center_us: int = 1500
    steering_right_us: int = 2000
    throttle_reverse_us: int = 1000
    throttle_neutral_us: int = 1500
    throttle_forward_us: int = 2000
    steering_reverse: bool = False
    throttle_reverse: bool = False
    heartbeat_ms: int = 50
    reconnect_max_s: float = 2.0
    # kind = "pca9685": the servo board on I2C (docs/hardware.md#pca9685)
    i2c_bus: int = 1  # /dev/i2c-N
    i2c_address: int = 0x40
    pwm_freq_hz: int = 60  # DonkeyCar's frequency; 50 suits most analogue servos too
    steering_channel: int = 1
    throttle_channel: int = 0
    # framed firmware only: receiver channel 2 (pin A2) as a kill switch that holds both
    # outputs at neutral in the firmware, whatever the host sends. "high": a pulse above
    # kill_threshold_us kills, "low": below; either way no signal on it kills too.
    kill_switch: str = "off"  # off | high | low
    kill_threshold_us: int = 1500


@dataclass
class RcConfig:
    """The RC transmitter as the user's input (DonkeyCar's RC mode), read back by the
    motor controller: the framed firmware's receiver pins or the Robo HAT MM1's RC inputs.

    The calibration keys left at None take the actuator's: a transmitter pulse then drives
    the servo/ESC with the very pulse the receiver would have sent it directly."""

    enabled: bool = False
    aux: str = "none"  # none | mode | record: receiver channel 2 when it is not the kill switch
    aux_threshold_us: int = 1500  # above: mode "local" / recording on; below (or no signal): user / off
    deadband_us: int = 20  # this close to centre/neutral reads as exactly 0
    timeout_ms: int = 200  # an older reading means no transmitter: user command 0, 0
    steering_left_us: int | None = None
    steering_center_us: int | None = None
    steering_right_us: int | None = None
    throttle_reverse_us: int | None = None
    throttle_neutral_us: int | None = None
    throttle_forward_us: int | None = None


@dataclass
class DriveConfig:
    mode: str = "user"  # user | local_angle | local
    rate_hz: float = 20.0
    throttle_cap: float = 0.6
    auto_record: bool = True  # record while throttle > 0 (DonkeyCar's auto_record_on_throttle)
    record_dir: str = "datasets/recordings"
    delete_seconds: float = 5.0  # the delete key removes this many seconds of log
    upload_when_idle: bool = True  # send finished logs to the cloud while parked and connected
    idle_after_s: float = 3.0  # parked = no throttle for this long


@dataclass
class GamepadConfig:
    steering_axis: int = 0
    throttle_axis: int = 1
    invert_throttle: bool = True
    deadzone: float = 0.05
    record_button: int = 0
    mode_button: int = 1
    estop_button: int = 2
    delete_button: int = 3


@dataclass
class WebConfig:
    """The car's web controller (``vehicle.web``): where it listens and who may drive.

    ``token`` unset: the token is read from ``token_file``, or made and written there
    (mode 0600) on the first start, which prints it once. A browser on the car itself
    (loopback) needs none while ``loopback_open`` is true."""

    bind: str = "0.0.0.0"
    port: int = 8887
    token: str | None = None
    token_file: str = "var/web-token"
    loopback_open: bool = True
    deadman_ms: int = 250  # user/local_angle: neutral when the page is silent this long
    send_hz: float = 20.0  # how often the page repeats its command (the deadman's heartbeat)
    view_max_hz: float = 30.0  # the most camera frames/HUD updates a page gets per second
    jpeg_quality: int = 80
    estop_brake_ms: int = 200  # e-stop while driving forward: reverse this long, then neutral
    estop_brake_throttle: float = 0.5
    max_msgs_per_s: float = 100.0  # per page; more is a flood: dropped with an error
    max_msg_bytes: int = 512
    tls_cert: str | None = None  # both set: https/wss (browsers give the Gamepad API only there)
    tls_key: str | None = None


@dataclass
class SimConfig:
    track: str = "oval"
    rate: str = "max"  # max | realtime
    scene_seed: int = 0
    latency_ms: float = 0.0
    dt_s: float = 0.05
    laps: int = 1


@dataclass
class ModelConfig:
    package: str | None = None  # the car's model package (.eppkg)
    trusted_keys: list[str] = field(default_factory=list)  # public keys that may sign packages
    announce_keys: list[str] = field(default_factory=list)  # ... and announcements (default keys/announce.pub)
    threads: int = 1


@dataclass
class EdgeConfig:
    model: str | None = None
    max_batch: int = 16
    batch_wait_ms: float = 1.0
    batch_threads: int = 0  # intra-op threads for batches of 2+ (0: every core); batch 1 uses 1
    group: str = "edge"
    node_id: str = "edge-1"
    # what one car can make the node do (docs/reliability.md, "Security"): a car sending
    # faster than its fair share has its excess answered "throttled", never queued
    queue_per_car: int = 16  # requests one car may have waiting
    queue_max: int = 256  # requests waiting across cars; when full, the longest lane gives way
    # refused from the JPEG header, before decoding: 320x240 is 4x what a car's camera sends
    # (160x120 in every profile), and the edge model sees 200x66 of it anyway
    max_frame_pixels: int = 320 * 240
    max_frame_bytes: int = 256 * 1024  # a request's body (JPEG or features), checked on arrival
    # a request's own deadline and budget are believed up to this far ahead (none: this)
    max_budget_ms: float = 1000.0
    # a car that overflows its queue_per_car floods; for a second after, it is served at most
    # this many camera frames' (160x120) worth of pixels a second, even by an idle node
    flood_rate_hz: float = 30.0

    def __post_init__(self) -> None:
        keys = (
            "queue_per_car",
            "queue_max",
            "max_frame_pixels",
            "max_frame_bytes",
            "max_budget_ms",
            "flood_rate_hz",
        )
        for key in keys:
            if getattr(self, key) <= 0:
                raise EdgepilotError(f"edge.{key}: must be positive, got {getattr(self, key)!r}")


@dataclass
class RetrainConfig:
    """One retraining run of the cloud trainer (``cloud_trainer.retrain``) and its gate."""

    # the car model's cold runs: on bench fl's five sessions, seeds 0-2 side by side, 20
    # epochs cut the held-out steering MAE 16% against 8 (12: 7%) for 2.4x the training
    # time (docs/benchmarks.md#model, twelfth round)
    epochs: int = 20
    edge_epochs: int | None = 8  # None: epochs
    edge_max_frames: int | None = None  # default: max_frames
    max_frames: int | None = None  # cap training frames (tests, quick runs)
    heldout_every: int = 5  # about every 5th session (at least one) is held out, stably
    # the car model calibrates its exits on the held-out sessions and trains on every other
    # one; false: it picks its own validation sessions among the training ones (a third
    # split: fewer sessions to learn from, a quicker run on a small store)
    car_val_heldout: bool = True
    # the same for the edge model, which then also keeps its last epoch (none is picked by
    # the frames the gate judges it on); false: its own pick, which left switchback, the
    # demo's one hairpin track, out of some demo edge models' training (docs/cloud.md)
    edge_val_heldout: bool = True
    eval_frames: int = 2000
    eval_tracks: list[str] = field(default_factory=lambda: ["oval"])
    eval_seconds: float = 30.0  # simulated seconds per track
    eval_scene_seed: int = 0
    eval_latency_ms: float = 0.0
    # gate margins: how much worse than the current model a candidate may be
    margin_mae: float = 0.01
    margin_autonomy: float = 0.0
    margin_cte_m: float = 0.02
    latency_budget_ms: float = 10.0  # car model, p50 per frame, batch 1, one thread
    # the edge candidate on the held-out frames the car would offload: its MAE at most this
    # times the car's own answers' there, judged from at least this many frames. Coarse: every
    # demo edge model measured 0.84-3.1x, the test's steers-left one 10x (docs/cloud.md)
    edge_offload_ratio: float = 4.0
    edge_offload_min_frames: int = 30
    train_edge: bool = True
    # distil the car model from the edge model trained first; off: both train side by side
    # (the early-exit recipe needs no teacher: docs/benchmarks.md#model)
    distill: bool = False
    seed: int = 0
    threads: int = 1
    # warm start: both models start from the current ones' fp32 weights (when there are
    # current ones) and train this many epochs instead of ``epochs`` / ``edge_epochs``.
    # Five car epochs, not three: the retrained car model is 6.5% more accurate on unseen
    # tracks and certifies >= 50% of frames early in every seed measured (docs/benchmarks.md#model)
    warm_start: bool = False
    warm_epochs: int = 5
    warm_edge_epochs: int = 1
    # a car's own answer is good enough within this of the label; calibration sends the
    # frames where it is not (at most 15% of an exit's) to the edge (CalibrationTarget.ok_tol):
    # smaller keeps a strong edge node busier
    offload_tol: float = 0.05
    # the car model's final head learns this share from exit 1 (TrainConfig.mutual): the
    # heads otherwise drift apart and calibration certifies few frames early. Cold runs learn
    # more from it than `edgepilot train` (0.5): on a small fleet's first 4500 frames 0.5 left
    # exit 1 under half of unseen tracks' frames in 3-5 of 12 seeds, 0.7 in none of twelve
    # (docs/benchmarks.md#model); warm runs start from heads already close
    mutual: float = 0.7
    warm_mutual: float = 0.5  # edgepilot train's (TrainConfig.mutual)
    # split-mode tails of a promoted car model (edgepilot.model.tail): small and quick
    tails: bool = True
    tail_epochs: int = 3
    tail_width: int = 96
    tail_max_frames: int | None = None  # default: max_frames

    def __post_init__(self) -> None:
        # refused when the profile is read, not when a retraining run fails hours later
        if not self.offload_tol > 0:
            raise EdgepilotError(f"offload_tol: must be > 0, got {self.offload_tol!r}")
        for name in ("mutual", "warm_mutual"):
            if not 0 <= getattr(self, name) <= 1:
                raise EdgepilotError(f"{name}: must be a share in [0, 1], got {getattr(self, name)!r}")


@dataclass
class UploadLimits:
    """What the cloud accepts from one car's uploads (``cloud_trainer.ingest``, docs/cloud.md
    "Limits"). Every limit is checked before a byte of an upload is stored or extracted."""

    upload_max_bytes: int = 4 << 30  # one upload (a packed log), as declared in its offer
    upload_max_chunks: int = 16384  # chunks of one upload (4 GiB at the car's 256 KiB)
    upload_max_member_bytes: int = 512 << 20  # one file of a log (records.jsonl, an image)
    upload_max_members: int = 500_000  # files in one log (7 hours of frames at 20 Hz)
    upload_ttl_s: float = 86400.0  # a partial upload not offered again for this long is dropped
    car_inflight_uploads: int = 8  # partial uploads one car may hold at once
    car_inflight_bytes: int = 8 << 30  # their declared bytes together
    car_quota_bytes: int = 256 << 30  # a car's received logs plus its partial uploads
    ingest_queue_bytes: int = 16 << 20  # received upload messages waiting for the ingest worker

    def __post_init__(self) -> None:
        for f in fields(UploadLimits):
            if getattr(self, f.name) <= 0:
                raise EdgepilotError(f"{f.name}: must be > 0, got {getattr(self, f.name)!r}")


@dataclass
class CloudConfig(RetrainConfig, UploadLimits):
    """The cloud trainer: its store, when it retrains by itself, every retraining knob and
    the limits on what cars may upload."""

    store: str = "var/cloud"
    retrain_min_frames: int = 2000
    announce_ttl_s: float = 7 * 24 * 3600.0  # model announcements expire; re-announced every quarter

    def __post_init__(self) -> None:
        RetrainConfig.__post_init__(self)
        UploadLimits.__post_init__(self)

    def retrain(self) -> RetrainConfig:
        """The retraining knobs alone (what a run, or its isolated child, is given)."""
        return RetrainConfig(**{f.name: getattr(self, f.name) for f in fields(RetrainConfig)})

    def upload_limits(self) -> UploadLimits:
        """The upload limits alone (what ``Ingest`` is given)."""
        return UploadLimits(**{f.name: getattr(self, f.name) for f in fields(UploadLimits)})


@dataclass
class DashboardConfig:
    """The fleet dashboard (``edgepilot dashboard``, ``edgepilot cloud --dashboard``).

    On a loopback ``bind`` anyone on this machine may look; a change (promote, rollback)
    always needs the operator's token. On any other address every page needs it. The token
    lives in ``token_file`` (0600; made, and printed once, on the first start); the cloud
    trainer reads the same file to check the changes the dashboard asks for."""

    bind: str = "127.0.0.1"
    port: int = 8080
    token_file: str = "var/dashboard/operator.token"
    session_s: float = 8 * 3600.0  # a login lasts this long
    # the dashboard's own broker login (role "dashboard": reads the fleet, asks for changes);
    # None: the [broker] one (fine on the open loopback broker, not on a secured one)
    broker_username: str | None = None
    broker_password_file: str | None = None
    tls_cert: str | None = None  # serve HTTPS with this certificate chain (PEM) ...
    tls_key: str | None = None  # ... and key
    change_timeout_s: float = 30.0  # how long a change waits for the cloud's answer


@dataclass
class FlLinkConfig:
    """The federated-learning link (``edgepilot fl``, docs/federated.md "The link"): TLS and
    who may send updates. One section for both ends; each reads its own keys. Off loopback
    the server refuses to serve without TLS and client keys, and a client refuses to connect
    without a CA, unless ``insecure``."""

    listen: str = "127.0.0.1:9092"  # server: where cars connect (HOST:PORT)
    server: str = "127.0.0.1:9092"  # client: the federated server
    tls_cert: str | None = None  # server: its certificate chain (PEM) ...
    tls_key: str | None = None  # ... and its key: both set turn TLS on
    # client: the CA that signed the server's certificate (turns TLS on); server: handed to
    # Flower beside the certificate (it asks for one; cars present no certificates)
    tls_ca: str | None = None
    # server: directory of the public keys it takes updates from: cars/<car>.pub, and
    # nodes/<node>.pub with nodes/<node>.cars (the cars that edge node may train for)
    client_keys: str | None = None
    # client: the Ed25519 key it signs its updates with (default keys/cars/<car>.key; for
    # `fl proxy`, the node's keys/nodes/<node>.key)
    key: str | None = None
    insecure: bool = False  # allow plaintext / unauthenticated cars off loopback (a lab)


@dataclass
class Profile:
    name: str = "default"
    car_id: str = "car-1"
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    actuator: ActuatorConfig = field(default_factory=ActuatorConfig)
    rc: RcConfig = field(default_factory=RcConfig)
    drive: DriveConfig = field(default_factory=DriveConfig)
    gamepad: GamepadConfig = field(default_factory=GamepadConfig)
    web: WebConfig = field(default_factory=WebConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    fl: FlLinkConfig = field(default_factory=FlLinkConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except EdgepilotError:
                pass
        raise EdgepilotError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise EdgepilotError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise EdgepilotError(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise EdgepilotError(f"{where}: expected an integer, got {value!r}")
    if tp in (str, float) and not isinstance(value, tp):
        raise EdgepilotError(f"{where}: expected {'a string' if tp is str else 'a number'}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise EdgepilotError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kw: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise EdgepilotError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        tp = hints[key]
        if is_dataclass(tp):
            kw[key] = from_dict(tp, value, f"{where}.{key}")
        else:
            kw[key] = _coerce(value, tp, f"{where}.{key}")
    try:
        return cls(**kw)
    except EdgepilotError as e:  # a section's own check (``__post_init__``) names the key
        raise EdgepilotError(f"{where}.{e}") from None


def profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    return PROFILE_DIR / f"{name_or_path}.toml"


def load_profile(name_or_path: str | None, default: str = "sim") -> Profile:
    """Read a profile by name (``launch/profiles/NAME.toml``) or path.

    Errors name the file and the offending key: ``car.toml: actuator.baud: expected an
    integer, got '115200'``. ``EDGEPILOT_CAR_ID`` overrides ``car_id`` (a fleet of
    simulated cars shares one profile)."""
    prof = _load_profile(name_or_path, default)
    if os.environ.get("EDGEPILOT_CAR_ID"):
        prof.car_id = os.environ["EDGEPILOT_CAR_ID"]
    return prof


def _load_profile(name_or_path: str | None, default: str) -> Profile:
    path = profile_path(name_or_path or default)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if name_or_path is None:
            return Profile(name=default)  # an installed package without launch/: defaults
        raise EdgepilotError(f"{path}: no such profile") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EdgepilotError(f"{path}: not valid TOML: {e}") from None
    data.setdefault("name", path.stem)
    try:
        return from_dict(Profile, data, str(path))
    except EdgepilotError as e:
        # from_dict names "<path>.<key>"; show it as "<path>: <key>"
        msg = str(e)
        prefix = f"{path}."
        raise EdgepilotError(f"{path}: {msg[len(prefix) :]}" if msg.startswith(prefix) else msg) from None


def override(section: Any, **values: Any) -> Any:
    """A copy of ``section`` with the CLI flags that were given (not None) applied."""
    return replace(section, **{k: v for k, v in values.items() if v is not None})
