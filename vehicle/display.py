"""Is there a screen? Decides whether the car's and the simulator's window can open."""

from __future__ import annotations

import os


def has_display() -> bool:
    """A window can be seen: an X/Wayland display, or a real SDL video driver chosen."""
    sdl = os.environ.get("SDL_VIDEODRIVER", "")
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or (sdl and sdl != "dummy"))


def dummy_video() -> bool:
    """SDL's offscreen driver: the window works but nobody sees it (tests, CI)."""
    return os.environ.get("SDL_VIDEODRIVER") == "dummy"
