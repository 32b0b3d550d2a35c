"""Processes that must not outlive the process that started them."""

from __future__ import annotations

import contextlib
import os


def die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when the process that started it dies.

    Why: a trainer SIGKILLed mid-run (``kill -9``, the OOM killer) otherwise leaves its
    retraining child, and that child's own workers, running as orphans, which go on to
    register and promote models next to the restarted trainer's own run."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above ran
        os._exit(1)
