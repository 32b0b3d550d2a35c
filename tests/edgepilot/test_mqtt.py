"""edgepilot.mqtt.Connection against a real Mosquitto: subscribe, unsubscribe."""

from __future__ import annotations

import time

from edgepilot.config import BrokerConfig
from edgepilot.mqtt import Connection


def wait(pred, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_unsubscribe_stops_delivery_and_survives_reconnect(broker):
    got: list[tuple[str, bytes]] = []
    sub = Connection(BrokerConfig(url=broker.url), "unsub-t")
    sub.subscribe("edgepilot/test/unsub/a", lambda m: got.append((m.topic, m.payload)), qos=1)
    sub.subscribe("edgepilot/test/unsub/b", lambda m: got.append((m.topic, m.payload)), qos=1)
    raw: list[str] = []  # what the broker delivered, before any handler lookup
    inner = sub.client.on_message
    sub.client.on_message = lambda c, u, m: (raw.append(m.topic), inner(c, u, m))
    unsubacks: list[int] = []
    sub.client.on_unsubscribe = lambda c, u, mid, rcs, props: unsubacks.append(mid)
    sub.start()
    pub = Connection(BrokerConfig(url=broker.url), "unsub-pub")
    pub.start()
    try:
        assert wait(lambda: len(sub.suback) == 2)
        pub.publish("edgepilot/test/unsub/a", b"1", qos=1)
        assert wait(lambda: ("edgepilot/test/unsub/a", b"1") in got)
        assert sub.unsubscribe("edgepilot/test/unsub/a")
        assert not sub.unsubscribe("edgepilot/test/unsub/a")  # already gone
        assert not sub.unsubscribe("edgepilot/test/never")
        assert wait(lambda: len(unsubacks) == 1)  # the broker has dropped the subscription
        pub.publish("edgepilot/test/unsub/a", b"2", qos=1)
        pub.publish("edgepilot/test/unsub/b", b"sentinel", qos=1)
        assert wait(lambda: ("edgepilot/test/unsub/b", b"sentinel") in got)
        assert ("edgepilot/test/unsub/a", b"2") not in got
        assert raw.count("edgepilot/test/unsub/a") == 1  # the broker stopped sending it
        # a reconnect re-subscribes only what is still subscribed: a second client with the
        # same id takes the session over (the broker drops ours), then leaves; ours comes back
        sub.suback.clear()
        thief = Connection(BrokerConfig(url=broker.url), "unsub-t")
        thief.start()
        thief.close()
        assert wait(lambda: "edgepilot/test/unsub/b" in sub.suback and sub.connected.is_set())
        assert "edgepilot/test/unsub/a" not in sub.suback
        pub.publish("edgepilot/test/unsub/a", b"3", qos=1)
        pub.publish("edgepilot/test/unsub/b", b"sentinel-2", qos=1)
        assert wait(lambda: ("edgepilot/test/unsub/b", b"sentinel-2") in got)
        assert all(t != "edgepilot/test/unsub/a" or p == b"1" for t, p in got)
        assert raw.count("edgepilot/test/unsub/a") == 1
    finally:
        pub.close()
        sub.close()


def test_wait_subscribed_waits_for_every_suback(broker):
    conn = Connection(BrokerConfig(url=broker.url), "wait-sub")
    conn.subscribe("edgepilot/test/ws/a", lambda m: None, qos=1)
    assert not conn.wait_subscribed(0.05)  # not connected: nothing is acknowledged
    conn.start()
    try:
        assert conn.wait_subscribed(5) and set(conn.suback) == {"edgepilot/test/ws/a"}
        conn.subscribe("edgepilot/test/ws/b", lambda m: None)  # made while connected
        assert conn.wait_subscribed(5) and "edgepilot/test/ws/b" in conn.suback
    finally:
        conn.close()


def test_a_started_edge_node_is_subscribed_to_requests(broker):
    """``EdgeService.start`` (and so ``edgepilot edge``'s "ready" line) returns once the
    broker routes requests to it: a car's first request is never dropped for want of a
    subscriber (a loaded suite run saw a round-trip test lose a frame this way)."""
    from edge_node.model import load_edge_model
    from edge_node.service import EdgeService
    from edgepilot.schema import wire

    svc = EdgeService(BrokerConfig(url=broker.url), load_edge_model("builtin:pilotnet"), node_id="edge-ws")
    svc.start()
    try:
        assert wire.shared_infer_filter(svc.group) in svc.conn.suback
    finally:
        svc.stop()


def test_a_suback_that_beats_subscribes_return_still_counts(broker):
    """paho can read the SUBACK on its network thread before ``client.subscribe`` has
    returned the packet id to the caller; that SUBACK was dropped, so ``suback`` never
    named the filter and ``wait_subscribed`` timed out (seen once in a loaded suite run).
    Here the caller is held back until the SUBACK has surely come."""
    conn = Connection(BrokerConfig(url=broker.url), "early-suback")
    conn.start()
    real = conn.client.subscribe

    def late_return(*args, **kwargs):
        out = real(*args, **kwargs)
        time.sleep(0.3)  # loopback SUBACK: well under this
        return out

    conn.client.subscribe = late_return
    try:
        conn.subscribe("edgepilot/test/early", lambda m: None, qos=1)
        assert conn.wait_subscribed(2) and conn.suback["edgepilot/test/early"] == [1]
    finally:
        conn.close()
