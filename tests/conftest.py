"""Shared fixtures: a real Mosquitto per test session, temporary log directories."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real Eclipse Mosquitto on 127.0.0.1 with the project's config, on a free port."""
    from edgepilot.broker import start_broker

    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.stop()
