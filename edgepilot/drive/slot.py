"""Model hot-swap: load, verify and warm a new package off the loop, swap between frames.

The loop only ever sees a fully loaded, verified, warmed-up model: the new one is built
on a background thread and handed over through one attribute under a lock, which the
loop checks at the top of each frame (the edge node, between batches). A package that
fails verification never replaces the running model; ``last_error`` says why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from edgepilot import EdgepilotError
from edgepilot.drive.parts import Pilot

log = logging.getLogger(__name__)


class Model(Protocol):
    """What a slot holds: a loaded, verified model (the car's ``Pilot``, the edge's model)."""

    @property
    def version(self) -> str: ...

    def warmup(self) -> None: ...


M = TypeVar("M", bound=Model)
Loader = Callable[..., M]  # (path, trusted_keys=...) -> a loaded, verified model


def load_autopilot(path: str | Path, trusted_keys: list[str] | None = None, threads: int | None = 1) -> Pilot:
    """The car's model runtime for a package (imported only when a package is loaded)."""
    from edgepilot.model.runtime import Autopilot

    return Autopilot.load(path, trusted_keys=trusted_keys, threads=threads)


class ModelSlot(Generic[M]):
    """The running model plus, at most, one pending replacement (the car's: ``ModelSlot[Pilot]``)."""

    def __init__(
        self,
        model: M | None = None,
        trusted_keys: list[str] | None = None,
        loader: Loader[M] = load_autopilot,  # type: ignore[assignment]  # the car's, by default
    ) -> None:
        self.current = model
        self.trusted_keys = trusted_keys
        self._loader = loader
        self._pending: M | None = None
        self._lock = threading.Lock()
        self.swaps = 0
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str | None:
        return getattr(self.current, "version", None)

    def load(self, path: str | Path) -> M:
        """Load, verify and warm ``path`` now (on the caller's thread); EdgepilotError if bad."""
        model = self._loader(path, trusted_keys=self.trusted_keys)
        model.warmup()
        return model

    def load_async(
        self, path: str | Path, on_done: Callable[[bool, str], None] | None = None
    ) -> threading.Thread:
        """Start loading ``path``; ``on_done(ok, version_or_error)`` runs on the loader thread."""

        def work() -> None:
            try:
                model = self.load(path)
            except EdgepilotError as e:
                self.last_error = str(e)
                log.error("model %s refused, keeping %s: %s", path, self.version, e)
                if on_done:
                    on_done(False, str(e))
                return
            self.offer(model)
            log.info("model %s loaded and warmed up; swapping at the next frame", model.version)
            if on_done:
                on_done(True, model.version)

        self._thread = threading.Thread(target=work, name="model-loader", daemon=True)
        self._thread.start()
        return self._thread

    def offer(self, model: M) -> None:
        """Hand over an already loaded and warmed model (swapped at the next frame)."""
        with self._lock:
            self._pending = model

    def maybe_swap(self) -> bool:
        """Called by the loop between frames. Cheap when nothing is pending."""
        if self._pending is None:
            return False
        with self._lock:
            model, self._pending = self._pending, None
        if model is None:
            return False
        old = self.version
        self.current = model
        self.swaps += 1
        log.info("model swapped: %s -> %s", old, self.version)
        return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
