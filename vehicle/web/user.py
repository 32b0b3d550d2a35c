"""``WebUser``: the pages connected to the web controller, as the loop's one user input.

One page drives at a time: the first to connect, or the one that asks to take over, or a
page that comes back with the same client id (a phone reconnecting after its Wi-Fi
dropped). Other pages watch; any page may e-stop. When the driving page closes its
socket the car goes to neutral at the next frame; when it goes silent the deadman does
it (``vehicle.controls.HumanControl``). Nothing here knows about HTTP: the server calls
these methods with messages ``vehicle.web.protocol`` already checked.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

from edgepilot.config import WebConfig
from edgepilot.drive.parts import UserInput
from vehicle.controls import HumanControl, Trip


class Served(Protocol):
    """What the user part knows of the server that serves it (vehicle.web.server)."""

    url: str
    stats: dict[str, Any]


@dataclass
class Page:
    cid: int
    client: str  # the page's own id (kept in its sessionStorage across reconnects)
    video: bool = True
    seen_trips: int = 0


class WebUser(HumanControl):
    def __init__(self, cfg: WebConfig, *, mode: str = "user", labels: UserInput | None = None) -> None:
        super().__init__(
            mode=mode,
            deadman_s=cfg.deadman_ms / 1000,
            brake_s=cfg.estop_brake_ms / 1000,
            brake_throttle=cfg.estop_brake_throttle,
            labels=labels,
        )
        self.pages: dict[int, Page] = {}
        self.driver: int | None = None
        self._driver_client: str | None = None
        self._next = 0
        self._told = 0  # the last trip some page was told of
        self._plock = threading.Lock()
        self.server: Served | None = None  # set by start_web: its URL and counters

    # -- pages ------------------------------------------------------------------------
    def connect(self, client: str) -> Page:
        """A new page learns of a trip no page has been told of yet (the one that made
        it reconnecting), not of older ones."""
        with self._plock:
            self._next += 1
            page = Page(self._next, client, seen_trips=self._told)
            self.pages[page.cid] = page
            if self.driver is None or (client and client == self._driver_client):
                self.driver, self._driver_client = page.cid, client
            return page

    def disconnect(self, page: Page) -> None:
        with self._plock:
            self.pages.pop(page.cid, None)
            if self.driver != page.cid:
                return
            self.driver = None
        self.lost("the driving page closed")

    def takeover(self, page: Page) -> None:
        with self._plock:
            self.driver, self._driver_client = page.cid, page.client

    def role(self, page: Page) -> str:
        return "driver" if self.driver == page.cid else "viewer"

    def news(self, page: Page) -> Trip | None:
        """The trip this page has not been told of yet (then it has)."""
        trip = self.trip
        if trip is None or page.seen_trips >= trip.count:
            return None
        page.seen_trips = trip.count
        self._told = max(self._told, trip.count)
        return trip

    def summary(self) -> dict[str, Any]:
        with self._plock:
            return {"pages": len(self.pages), "driving": self.driver is not None}
