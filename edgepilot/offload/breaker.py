"""The offload client's circuit breaker: a dead or slow edge costs the car nothing but a counter.

It stops offloading after a few misses in a row (edge slow, gone, or the link down).
While open it lets one probe frame through every ``probe_s`` (doubling up to
``probe_max_s``); an answer in time closes it again, so offloading resumes by itself when
the edge comes back. A probe that ends any other way (missed, refused with an error
reply, never sent) lets the next one go: the breaker must never wait for a probe that can
no longer be answered.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class CircuitBreaker:
    """closed -> (``trip_after`` failures in a row) -> open -> (probe answered) -> closed.

    While open, exactly one probe is out at a time (``allow``); it must end in ``success``,
    ``failure`` or ``release``, or no further probe is ever let through."""

    def __init__(self, trip_after: int = 3, probe_s: float = 0.25, probe_max_s: float = 2.0) -> None:
        self.trip_after = trip_after
        self.probe_s = probe_s
        self.probe_max_s = probe_max_s
        self.open = False
        self.failures = 0
        self.trips = 0
        self._wait = probe_s
        self._next_probe = 0.0
        self._probing = False

    def allow(self, now: float) -> bool:
        if not self.open:
            return True
        if self._probing or now < self._next_probe:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        if self.open:
            log.info("offload: edge answered the probe; offloading resumes")
        self.open = self._probing = False
        self.failures = 0
        self._wait = self.probe_s

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.open:
            if self._probing:  # the probe failed: back off
                self._probing = False
                self._wait = min(self._wait * 2, self.probe_max_s)
                self._next_probe = now + self._wait
        elif self.failures >= self.trip_after:
            self.open = True
            self.trips += 1
            self._probing = False
            self._wait = self.probe_s
            self._next_probe = now + self._wait
            log.warning("offload: %d misses in a row; breaker open, driving on local answers", self.failures)

    def release(self, now: float) -> None:
        """The probe ended without showing whether the edge answers in time: the edge
        refused it (an error reply, e.g. features to a node without tails, while the client
        now falls back to the JPEG) or it was never sent. It is neither an answer nor a
        miss, so the breaker stays open and probes again after the current wait (not
        doubled: a refusal means the edge is there). Before this, such a probe was popped
        from the pending frames without a success or failure, ``_probing`` stayed True and
        the breaker stayed open for good: after an edge restart the car never offloaded
        again (tests/test_fault_drive.py, 1 run in 5)."""
        if self.open and self._probing:
            self._probing = False
            self._next_probe = now + self._wait
