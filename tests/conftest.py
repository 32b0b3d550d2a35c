"""Shared fixtures: a real Mosquitto per test session, temporary log directories."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import clear_retained

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

# Property tests draw as many examples as the profile says, never a count of their own:
# "dev" (a developer's run) a quick look, "ci" (.ci/run) the search that gates a merge,
# "deep" before a release or after touching a decoder. HYPOTHESIS_PROFILE picks one;
# without it EDGEPILOT_SLOW=1 means "ci". No per-example deadline and no "too slow" health
# check: both are wall-clock limits, and a busy machine must make the run slower, not red.
_UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=50, **_UNTIMED)
settings.register_profile("ci", max_examples=500, **_UNTIMED)
settings.register_profile("deep", max_examples=5000, **_UNTIMED)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("EDGEPILOT_SLOW") == "1" else "dev")
)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real Eclipse Mosquitto on 127.0.0.1 with the project's config, on a free port."""
    from edgepilot.broker import start_broker

    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.stop()


@pytest.fixture(autouse=True)
def _no_retained_pushes_leak(request):
    """Tests share one broker; a retained model push one test leaves must not reach the edge
    nodes and cars of the next (a stale edge announcement raced a hot-swap test's own)."""
    yield
    if "broker" in request.fixturenames:
        clear_retained(request.getfixturevalue("broker").url)


SAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "datasets" / "samples"


@pytest.fixture(scope="session")
def sample_logs():
    """The tiny simulator logs shipped for tests (expert driving, randomised look)."""
    return sorted(str(p) for p in SAMPLES.glob("sim-*") if (p / "records.jsonl").exists())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, sample_logs):
    """A real early-exit package trained for two epochs on the sample logs (seconds), with
    exit 1 on: recalibrated at a 1.2x error budget, because tests of early exit, split
    points and tails need an exit that answers frames, and whether the default 1.03x budget
    keeps exit 1 on after two epochs on these few frames depends on the architecture's widths."""
    from edgepilot.cli import main
    from edgepilot.model.package import read_manifest

    out = tmp_path_factory.mktemp("model") / "tiny.eppkg"
    trained = out.with_name("tiny-trained.eppkg")
    assert main(["train", *sample_logs, "--out", str(trained), "--epochs", "2"]) == 0
    assert main(["calibrate", str(trained), *sample_logs, "--out", str(out), "--budget", "1.2"]) == 0
    assert read_manifest(out)["thresholds"]["exits"][1] is not None
    return str(out)


def pytest_collection_modifyitems(config, items):
    """Markers from what a test uses: ``broker`` (a real Mosquitto), ``processes`` (the
    deployables as processes: everything under tests/system/); select with ``-m``.
    ``@pytest.mark.slow`` tests (the long load run, long fault runs) only with EDGEPILOT_SLOW=1."""
    run_slow = os.environ.get("EDGEPILOT_SLOW") == "1"
    skip = pytest.mark.skip(reason="slow: set EDGEPILOT_SLOW=1 to run")
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
        if "/tests/system/" in str(item.path):
            item.add_marker(pytest.mark.processes)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_int8(tmp_path_factory, tiny_model, sample_logs):
    """``tiny_model`` compressed to int8 (TorchScript stages inside)."""
    from edgepilot.cli import main

    out = tmp_path_factory.mktemp("model8") / "tiny-int8.eppkg"
    assert main(["compress", tiny_model, "--out", str(out), "--calib", *sample_logs]) == 0
    return str(out)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory):
    """Two throw-away CAs from ``launch/make-test-ca`` (the one docs/deploy.md uses), each with
    a server certificate for localhost and 127.0.0.1: ``(ours, another)``, directories holding
    ca.crt, server.crt, server.key."""
    import subprocess

    make = SAMPLES.parent.parent / "launch" / "make-test-ca"
    dirs = [tmp_path_factory.mktemp("tls") / name for name in ("ca", "other")]
    for d in dirs:
        subprocess.run([str(make), str(d)], check=True, capture_output=True)
    return tuple(dirs)


STANDINS = os.path.join(os.path.dirname(__file__), "standins")


@pytest.fixture
def picam(monkeypatch):
    """The picamera2/libcamera stand-in (tests/standins) on sys.path, imported afresh and
    forgotten after the test (its module state is the camera); yields the picamera2 module."""
    import sys

    monkeypatch.syspath_prepend(STANDINS)
    for name in ("picamera2", "libcamera"):
        sys.modules.pop(name, None)
    import picamera2

    yield picamera2
    for cam in picamera2.INSTANCES:
        cam.close()
    for name in ("picamera2", "libcamera"):
        sys.modules.pop(name, None)
