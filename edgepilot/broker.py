"""Start a private Eclipse Mosquitto on loopback, from the project's config template.

Used by the tests (each session gets its own broker on a free port), the demo and the
benchmarks. The same ``launch/mosquitto.conf`` that ``launch/broker`` fills in is used
here, so what is tested is what is deployed.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgepilot import EdgepilotError
from edgepilot.config import REPO_ROOT
from edgepilot.schema.fleet import UPLOAD_CHUNK_FILTER

TEMPLATE = REPO_ROOT / "launch" / "mosquitto.conf"
SECURE_TEMPLATE = REPO_ROOT / "launch" / "mosquitto-secure.conf"
PLUGIN_SRC = REPO_ROOT / "launch" / "mosquitto-plugin"
PLUGIN_OUT = REPO_ROOT / "var" / "mosquitto-plugin"
DYNSEC_PLACES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/arm-linux-gnueabihf/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        raise EdgepilotError(
            "Eclipse Mosquitto is not installed: run ./launch/setup (or apt-get install mosquitto)"
        )
    return exe


@dataclass
class Broker:
    """A running Mosquitto child process."""

    port: int
    state: Path
    proc: subprocess.Popen
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        self.stop()
        fresh = start_broker(self.state, self.port, extra=None, _conf=self.state / "mosquitto.conf", tls=self.tls)
        self.proc = fresh.proc


def start_broker(
    state: str | Path,
    port: int | None = None,
    extra: str | None = None,
    _conf: Path | None = None,
    tls: bool = False,
) -> Broker:
    """Start mosquitto in the foreground as a child; returns once it accepts connections.

    ``extra`` is appended to the config (auth, ACL)."""
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = _conf or state / "mosquitto.conf"
    if _conf is None:
        text = (
            TEMPLATE.read_text()
            .replace("@PORT@", str(port))
            .replace("@STATE@", str(state))
            .replace("@USER@", getpass.getuser())
        )
        text = "\n".join(line for line in text.splitlines() if not line.startswith("pid_file"))
        conf.write_text(text + "\n" + (extra or ""))
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if listening(port):
            return Broker(port, state, proc, tls)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    log = state / "mosquitto.log"
    tail = log.read_text()[-500:] if log.exists() else ""
    raise EdgepilotError(f"mosquitto did not start on 127.0.0.1:{port}: {tail}")


def dynsec_plugin() -> Path:
    """Mosquitto's dynamic-security plugin, where Debian (any architecture) puts it."""
    for place in DYNSEC_PLACES:
        if Path(place).exists():
            return Path(place)
    raise EdgepilotError("mosquitto_dynamic_security.so not found: install Mosquitto 2.0+ (apt-get install mosquitto)")


def _plugin(name: str) -> Path:
    """One of the broker's plugins (launch/mosquitto-plugin), built on first use and when
    its source changed (launch/setup builds them too; they need the mosquitto-dev headers)."""
    so = PLUGIN_OUT / f"{name}.so"
    if not so.exists() or so.stat().st_mtime < (PLUGIN_SRC / f"{name}.c").stat().st_mtime:
        r = subprocess.run(
            ["make", "-s", "-C", str(PLUGIN_SRC), f"OUT={PLUGIN_OUT}", str(so)], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise EdgepilotError(f"building the broker plugin {name} failed: {r.stderr.strip()[-300:]}")
    return so


def clientid_plugin() -> Path:
    """The plugin that binds client ids to logins."""
    return _plugin("edgepilot_clientid")


def ratelimit_plugin() -> Path:
    """The plugin that limits each login's publish rate (messages/s and bytes/s)."""
    return _plugin("edgepilot_ratelimit")


RATE_EXEMPT_TOPICS = (UPLOAD_CHUNK_FILTER,)
"""Never rate-limited: log uploads go at the link's speed, paced by the cloud's acks (a
window of chunks in flight, vehicle/upload.py) and bounded by its ingest limits; their
bytes reach the cloud only, never an edge node. launch/mosquitto-secure.conf says the same."""


RATE_LIMITS = {"max_msgs_per_s": 100.0, "max_bytes_per_s": 8388608.0, "burst_s": 2.0}
"""Each login's limits in launch/mosquitto-secure.conf (and the plugin's defaults): a car
sends 20-30 frames/s of a few KB, at most 256 KiB (the largest body an edge node accepts:
30 of them 7.5 MiB/s), and telemetry at 1/s."""


def ratelimit_config(
    exempt_users: tuple[str, ...] = (),
    exempt_topics: tuple[str, ...] = RATE_EXEMPT_TOPICS,
    **limits: float,
) -> str:
    """Config lines that load the per-login publish rate limit
    (launch/mosquitto-plugin/edgepilot_ratelimit.c) into a broker from ``launch/mosquitto.conf``:
    its ``extra``. The plain broker does not load it by itself (its clients are anonymous:
    the limit would be per client id, which a client picks); the tests and benchmarks of the
    limit do. ``limits``: any of RATE_LIMITS's keys (0 turns one off); the rest as there."""
    unknown = set(limits) - set(RATE_LIMITS)
    if unknown:
        raise EdgepilotError(f"unknown rate limit(s): {', '.join(sorted(unknown))}")
    lines = [f"plugin {ratelimit_plugin()}"]
    lines += [f"plugin_opt_{key} {value:.15g}" for key, value in {**RATE_LIMITS, **limits}.items()]
    if exempt_users:
        lines.append(f"plugin_opt_exempt_users {' '.join(exempt_users)}")
    if exempt_topics:
        lines.append(f"plugin_opt_exempt_topics {' '.join(exempt_topics)}")
    return "\n".join(lines) + "\n"


def secure_config(auth: str | Path, state: str | Path, port: int, bind: str = "127.0.0.1") -> str:
    """launch/mosquitto-secure.conf filled in: TLS only, dynamic-security ACLs from
    ``auth`` (launch/make-broker-auth and launch/make-test-ca wrote it), ids bound to logins,
    each login's publish rate limited (but the edge nodes' and the cloud's, listed in
    ``auth``/ratelimit-exempt by make-broker-auth)."""
    return (
        SECURE_TEMPLATE.read_text()
        .replace("@PORT@", str(port))
        .replace("@BIND@", bind)
        .replace("@STATE@", str(state))
        .replace("@AUTH@", str(Path(auth).resolve()))
        .replace("@USER@", getpass.getuser())
        .replace("@IDPLUGIN@", str(clientid_plugin()))
        .replace("@RATEPLUGIN@", str(ratelimit_plugin()))
        .replace("@DYNSEC@", str(dynsec_plugin()))
    )


def start_secure_broker(state: str | Path, auth: str | Path, port: int | None = None) -> Broker:
    """The secured broker of docs/deploy.md on loopback (tests, benchmarks); its URL is mqtts."""
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = state / "mosquitto.conf"
    conf.write_text(secure_config(auth, state, port))
    return start_broker(state, port, _conf=conf, tls=True)
