"""Shared MQTT plumbing: one way to open a paho-mqtt 2.x MQTT v5 connection.

Every part that talks MQTT (car, edge node, cloud, benchmarks) goes through
``Connection`` so that the settings the latency depends on are set once, here:

- MQTT v5 (Response Topic, Correlation Data, shared subscriptions, Message Expiry).
- TCP_NODELAY on the client socket. paho does not set it; with Nagle on, a small
  request waits for the previous segment's ACK, which the peer delays (~40 ms): QoS 1
  round trips measured 78 ms instead of <1 ms on this machine (docs/protocol.md).
- Credentials and TLS from ``BrokerConfig`` (the password from a file, so a profile can
  be committed without its secret).
- Reconnect with exponential back-off (paho's loop thread), re-subscribing on every
  (re)connect: a broker restart must not leave the edge node deaf.
- Message dispatch looks the topic up in a cache (topic -> handlers), rebuilt when the
  subscriptions change, instead of matching every filter against every message.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_url(url: str) -> BrokerAddress:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` (TLS); a bare ``HOST:PORT`` is mqtt."""
    text = url.strip()
    if "://" not in text:
        text = "mqtt://" + text
    parts = urlsplit(text)
    if parts.scheme not in DEFAULT_PORTS:
        raise EdgepilotError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise EdgepilotError(f"broker URL {url!r}: no host")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise EdgepilotError(f"broker URL {url!r}: bad port") from None
    return BrokerAddress(parts.hostname, port, parts.scheme == "mqtts")


def broker_config(profile_broker: BrokerConfig, url: str | None) -> BrokerConfig:
    """The profile's broker settings with ``--broker URL`` applied when given."""
    from dataclasses import replace

    return replace(profile_broker, url=url) if url else profile_broker


def _password(cfg: BrokerConfig) -> str | None:
    if cfg.password_file:
        try:
            return Path(cfg.password_file).read_text().strip()
        except OSError as e:
            raise EdgepilotError(f"broker password_file {cfg.password_file}: {e.strerror}") from None
    return cfg.password


def _nodelay(client: paho.Client, userdata: object, sock: paho.SocketLike) -> None:
    with contextlib.suppress(OSError, AttributeError):  # websocket/proxy socket: nothing to tune
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def properties(
    kind: int = PacketTypes.PUBLISH,
    *,
    response_topic: str | None = None,
    correlation: bytes | None = None,
    expiry_s: int | None = None,
) -> Properties:
    props = Properties(kind)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    if expiry_s is not None:
        props.MessageExpiryInterval = max(1, int(expiry_s))
    return props


Handler = Callable[[paho.MQTTMessage], None]


def own_client_id(username: str | None, client_id: str) -> str:
    """A logged-in client's connections are named "<username>" or "<username>:<what>": the
    secured broker refuses any other id for that login (launch/mosquitto-plugin), so that no
    client can take over another's session by connecting with its id."""
    if not username or client_id == username or client_id.startswith(f"{username}:"):
        return client_id
    return f"{username}:{client_id}"


class Connection:
    """A paho MQTT v5 client with remembered subscriptions and a connected flag.

    Handlers run on paho's network thread: keep them short (queue the work)."""

    def __init__(
        self,
        cfg: BrokerConfig,
        client_id: str,
        *,
        will: tuple[str, bytes, bool] | None = None,
        on_connect: Callable[[], None] | None = None,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 2.0,
    ) -> None:
        self.cfg = cfg
        self.addr = parse_url(cfg.url)
        self.client_id = client_id = own_client_id(cfg.username, client_id)
        self.connected = threading.Event()
        self.connects = 0  # successful CONNACKs so far: a change means a reconnect happened
        self.last_error: str | None = None
        self._subs: dict[str, tuple[int, Handler]] = {}
        self._routes: dict[str, list[Handler]] = {}  # topic -> handlers (cleared on changes)
        self._user_on_connect = on_connect
        self._lock = threading.Lock()
        self._subacked = threading.Condition()
        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        c.on_socket_open = _nodelay
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]
        user = cfg.username
        if user:
            c.username_pw_set(user, _password(cfg))
        if self.addr.tls or cfg.tls_ca:
            if cfg.tls_ca and not Path(cfg.tls_ca).exists():
                raise EdgepilotError(f"broker tls_ca {cfg.tls_ca}: no such file")
            c.tls_set(ca_certs=cfg.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        if will:
            c.will_set(will[0], will[1], qos=1, retain=will[2])
        self.client = c
        self.suback: dict[str, list[int]] = {}  # topic filter -> reason codes of the last SUBACK
        self._mid_topic: dict[int, str] = {}  # SUBSCRIBE packet id -> filter, until its SUBACK
        self._early_subacks: dict[int, list[int]] = {}  # SUBACKs that came before that entry

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        if rc.is_failure:
            self.last_error = str(rc)
            log.warning("MQTT %s: connect refused by %s: %s", self.client_id, self.cfg.url, rc)
            return
        self.last_error = None
        with self._lock:
            subs = list(self._subs.items())
        for flt, (qos, _) in subs:
            self._subscribe_now(flt, qos)
        self.connects += 1
        self.connected.set()
        if self._user_on_connect:
            self._user_on_connect()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        if self.connected.is_set():
            log.info("MQTT %s: disconnected (%s); reconnecting", self.client_id, rc)
        self.connected.clear()

    def _on_subscribe(
        self, client: paho.Client, userdata: object, mid: int, rcs: list[ReasonCode], props: Properties | None
    ) -> None:
        codes = [int(getattr(r, "value", r)) for r in rcs]
        with self._subacked:
            flt = self._mid_topic.pop(mid, None)
            if flt is None:  # the SUBACK beat subscribe()'s return of its mid to the caller
                if len(self._early_subacks) > 1024:  # not ours (a raw client.subscribe): bound it
                    self._early_subacks.clear()
                self._early_subacks[mid] = codes
                return
            self.suback[flt] = codes
            self._subacked.notify_all()

    def _handlers(self, topic: str) -> list[Handler]:
        with self._lock:
            got = self._routes.get(topic)
            if got is None:
                got = []
                for flt, (_, handler) in self._subs.items():
                    match = flt.split("/", 2)[2] if flt.startswith("$share/") else flt
                    if paho.topic_matches_sub(match, topic):
                        got.append(handler)
                if len(self._routes) > 4096:  # many distinct topics: keep the cache bounded
                    self._routes.clear()
                self._routes[topic] = got
        return got

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        for handler in self._handlers(msg.topic):
            try:
                handler(msg)
            except Exception:  # a handler bug must not kill the network thread
                log.exception("MQTT %s: handler for %s failed", self.client_id, msg.topic)

    def _subscribe_now(self, flt: str, qos: int) -> None:
        rc, mid = self.client.subscribe(flt, qos=qos)
        if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
            with self._subacked:
                codes = self._early_subacks.pop(mid, None)
                if codes is None:
                    self._mid_topic[mid] = flt
                else:
                    self.suback[flt] = codes
                    self._subacked.notify_all()

    # -- API -------------------------------------------------------------------------------
    def subscribe(self, flt: str, handler: Handler, qos: int = 0) -> None:
        """Subscribe now (if connected) and on every reconnect."""
        with self._lock:
            self._subs[flt] = (qos, handler)
            self._routes.clear()
        if self.connected.is_set():
            self._subscribe_now(flt, qos)

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until the broker has answered (SUBACK) every subscription made so far.

        CONNACK is not enough for a service to call itself ready: its SUBSCRIBE may still be
        on its way, and a request published meanwhile finds no subscriber and is dropped.
        A refused subscription counts as answered (its reason code is in ``suback``)."""
        deadline = time.monotonic() + timeout_s
        with self._subacked:
            while True:
                with self._lock:
                    missing = [f for f in self._subs if f not in self.suback]
                left = deadline - time.monotonic()
                if not missing:
                    return True
                if left <= 0:
                    return False
                self._subacked.wait(left)

    def unsubscribe(self, flt: str) -> bool:
        """Forget ``flt`` (no re-subscribe on reconnect) and tell the broker now if connected.

        Returns False when ``flt`` was not subscribed. Messages already in flight may still
        arrive for a moment; their handler is no longer called."""
        with self._lock:
            known = self._subs.pop(flt, None) is not None
            self._routes.clear()
        self.suback.pop(flt, None)
        if known and self.connected.is_set():
            self.client.unsubscribe(flt)
        return known

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, props: Properties | None = None
    ) -> bool:
        if not self.connected.is_set():
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def start(self, wait_s: float = 5.0, required: bool = True) -> bool:
        """Connect in the background; wait up to ``wait_s`` for the first CONNACK.

        ``required``: raise EdgepilotError when it does not come (a service at start-up);
        otherwise keep retrying in the background (a car must drive without an edge)."""
        try:
            self.client.connect_async(self.addr.host, self.addr.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as e:
            raise EdgepilotError(f"MQTT broker {self.cfg.url}: {e}") from None
        self.client.loop_start()
        ok = self.connected.wait(wait_s)
        if not ok and required:
            self.close()
            why = self.last_error or "no answer"
            raise EdgepilotError(
                f"cannot connect to the MQTT broker at {self.cfg.url} ({why}); "
                "is it running (launch/broker start)?"
            )
        return ok

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self.connected.clear()
