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


def clientid_plugin() -> Path:
    """The plugin that binds client ids to logins (launch/mosquitto-plugin), built on
    first use (launch/setup builds it too; it needs the mosquitto-dev headers)."""
    so = PLUGIN_OUT / "edgepilot_clientid.so"
    if not so.exists() or so.stat().st_mtime < (PLUGIN_SRC / "edgepilot_clientid.c").stat().st_mtime:
        r = subprocess.run(
            ["make", "-s", "-C", str(PLUGIN_SRC), f"OUT={PLUGIN_OUT}"], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise EdgepilotError(f"building the broker's client-id plugin failed: {r.stderr.strip()[-300:]}")
    return so


def secure_config(auth: str | Path, state: str | Path, port: int, bind: str = "127.0.0.1") -> str:
    """launch/mosquitto-secure.conf filled in: TLS only, dynamic-security ACLs from
    ``auth`` (launch/make-broker-auth and launch/make-test-ca wrote it), ids bound to logins."""
    return (
        SECURE_TEMPLATE.read_text()
        .replace("@PORT@", str(port))
        .replace("@BIND@", bind)
        .replace("@STATE@", str(state))
        .replace("@AUTH@", str(Path(auth).resolve()))
        .replace("@USER@", getpass.getuser())
        .replace("@IDPLUGIN@", str(clientid_plugin()))
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
