"""Model changes asked for over the bus (``fleet.ModelChange`` on ``cloud/models``).

The dashboard's promote and rollback buttons end here, in the cloud trainer, which runs
them with ``registry.change_model`` (what ``edgepilot models promote|rollback`` run) and
pushes with its own announcement key. Why a control message and not the dashboard
publishing announcements itself: the dashboard's broker login then needs no right to
``models/<target>`` and no key that cars trust; what it can publish is a request.

A request alone changes nothing: it must carry an HMAC under the operator's token (the
file in the profile's ``[dashboard] token_file``, read at each request so a new token
takes effect at once), be recent (``MODEL_CHANGE_MAX_AGE_S``), and have an id not seen
before. The id's result is kept in the store (``control/<id>.json``): a redelivered or
replayed request is answered with the first result and never run twice (a rollback run
twice would walk back two versions). Each request gets exactly one answer on
``cloud/models/result``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho

from cloud_trainer.registry import Registry, change_model
from edgepilot import EdgepilotError
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)

Push = Callable[[str, bool], bool]


def read_token(path: str | Path | None) -> str | None:
    """The operator's token from its file, or None when there is none."""
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return text or None


class ModelControl:
    """Runs the ``ModelChange`` requests of ``cloud/models`` one at a time on its own thread
    (a push waits for the broker's acknowledgements, which the network thread delivers)."""

    def __init__(
        self,
        registry: Registry,
        conn: Connection,
        push: Push,
        token_file: str | Path | None,
        *,
        lock: threading.RLock | None = None,
        group: str = "cloud",
    ) -> None:
        self.registry = registry
        self.conn = conn
        self.push = push
        self.token_file = token_file
        self.lock = lock or threading.RLock()
        self.group = group
        self.done: list[fleet.ModelChangeResult] = []
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        self._thread: threading.Thread | None = None

    def attach(self) -> None:
        self.conn.subscribe(fleet.shared(self.group, fleet.CLOUD_MODELS_TOPIC), self._on_message, qos=1)
        self._thread = threading.Thread(target=self._run, name="model-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(30)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        try:
            self._q.put_nowait(bytes(msg.payload))
        except queue.Full:  # a flood: what was asked before goes first, the rest is refused
            log.warning("model control: queue full, dropping a request")

    def _run(self) -> None:
        while (payload := self._q.get()) is not None:
            res = self.handle(payload)
            if res is not None:
                self.conn.publish(
                    fleet.CLOUD_MODELS_RESULT_TOPIC, fleet.encode_model_change_result(res), qos=1
                )

    # -- one request -------------------------------------------------------------------------
    def handle(self, payload: bytes, now: float | None = None) -> fleet.ModelChangeResult | None:
        """Check and run one request; its result (None for one too broken to answer)."""
        try:
            change = fleet.decode_model_change(payload)
        except WireError as e:
            log.warning("model control: ignoring a bad request: %s", e)
            return None
        why = self._refusal(change, time.time() if now is None else now)
        if why:
            log.warning(
                "model control: refused %s %s from %r: %s", change.action, change.target, change.by, why
            )
            return self._result(change, ok=False, error=why)
        key = f"control/{change.id}.json"
        with self.lock:
            if self.registry.store.exists(key):  # redelivered or replayed: the first answer again
                return fleet.decode_model_change_result(self.registry.store.get(key))
            res = self._run_change(change)
            self.registry.store.put(key, fleet.encode_model_change_result(res))
        return res

    def _refusal(self, c: fleet.ModelChange, now: float) -> str | None:
        token = read_token(self.token_file)
        if token is None:
            return (
                f"the cloud trainer has no operator token ({self.token_file or '[dashboard] token_file unset'}): "
                "model changes over the bus are off"
            )
        if not fleet.change_mac_ok(c, token):
            return (
                "not authorised: the request's HMAC does not match the operator's token "
                f"(the cloud trainer's is in {self.token_file})"
            )
        if abs(now - c.at) > fleet.MODEL_CHANGE_MAX_AGE_S:
            return f"stale request: asked at {c.at:.0f}, {now - c.at:+.0f} s from the cloud's clock"
        return None

    def _run_change(self, c: fleet.ModelChange) -> fleet.ModelChangeResult:
        before = self.registry.current(c.target)
        try:
            out = change_model(self.registry, c.action, c.target, c.version, self.push)
        except EdgepilotError as e:
            return self._result(
                c, ok=False, error=str(e), current=self.registry.current(c.target), previous=before
            )
        log.warning(
            "model control: %s %s by %r: %s -> %s (pushed %s)",
            c.action,
            c.target,
            c.by,
            before,
            out["current"],
            out["pushed"],
        )
        return self._result(c, ok=True, current=out["current"], previous=before, pushed=out["pushed"])

    @staticmethod
    def _result(
        c: fleet.ModelChange,
        *,
        ok: bool,
        error: str | None = None,
        current: str | None = None,
        previous: str | None = None,
        pushed: bool = False,
    ) -> fleet.ModelChangeResult:
        return fleet.ModelChangeResult(
            c.id, ok, c.action, c.target, current, previous, pushed, error, time.time()
        )
