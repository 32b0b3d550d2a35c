"""The table of topics: every MQTT topic edgepilot uses, its payload, who speaks, how.

One row per topic (openpilot's services table): the pattern under ``edgepilot/v1/``, the
payload class that defines its bytes (``wire``, ``fleet``), QoS, whether the broker keeps
it (retained), who publishes and who subscribes. docs/protocol.md documents each row
(a test holds the two together), and the broker's ACL (launch/make-broker-auth) grants
each role exactly the rows where it appears.

Changing a message (the rule, after openpilot's cereal):

- add a field with a default; readers ignore keys they do not know, so old readers keep
  working and the payload's ``v`` stays;
- never reuse a field's name for another meaning, never change a field's type or unit;
  a field that is no longer written stays in the class, marked ``# deprecated`` in its
  comment, still read (so old writers keep working) until the payload's ``v`` is bumped;
- a change an old reader would misread (a new required meaning, a new unit) bumps the
  payload's ``v`` (``WIRE_VERSION``, ``FLEET_VERSION``); readers refuse a ``v`` newer
  than theirs with a clear error rather than guess;
- a change of the topic tree itself bumps the ``v1`` in ``ROOT``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepilot.schema import fleet, wire
from edgepilot.schema.wire import ROOT


@dataclass(frozen=True)
class Topic:
    pattern: str  # under ROOT; <car> and <node> are the speaker's own id, <version> and <i> any
    payload: str  # the class (or format) that defines its bytes
    qos: int
    retained: bool
    publishers: tuple[str, ...]  # roles: car, edge, cloud, operator, dashboard
    subscribers: tuple[str, ...]
    shared: str | None = None  # the subscribers' shared-subscription group ($share/<group>/...)
    note: str = ""

    @property
    def full(self) -> str:
        return f"{ROOT}/{self.pattern}"


def _model_rows(target: str, readers: tuple[str, ...]) -> tuple[Topic, Topic]:
    fetchers = tuple(r for r in readers if r != "dashboard")  # it shows versions, fetches nothing
    return (
        Topic(f"models/{target}", "fleet.PushAnnouncement", 1, True, ("cloud",), readers),
        Topic(f"models/{target}/chunks/<version>/<i>", "raw package bytes", 1, True, ("cloud",), fetchers),
    )


TOPICS = (
    Topic("car/<car>/infer", "wire.InferRequest", 0, False, ("car",), ("edge",), shared="edge"),
    Topic("car/<car>/reply", "wire.InferReply", 0, False, ("edge",), ("car",), note="only the car it names reads it"),
    Topic("edge/<node>/health", "wire.EdgeHealth", 1, True, ("edge",), ("car", "cloud", "dashboard"), note="also the Last Will"),
    *_model_rows("car", ("car", "dashboard")),
    *_model_rows("edge", ("edge", "dashboard")),
    *_model_rows("tails", ("edge",)),
    Topic("car/<car>/model", "fleet.CarModelStatus", 1, True, ("car",), ("cloud", "operator", "dashboard")),
    Topic("car/<car>/telemetry", "fleet.CarTelemetry", 0, True, ("car",), ("operator", "dashboard"), note="also the Last Will"),
    Topic("upload/<car>/offer", "fleet.UploadOffer", 1, False, ("car",), ("cloud",), shared="cloud"),
    Topic("upload/<car>/chunk", "fleet.ChunkHeader + bytes", 1, False, ("car",), ("cloud",), shared="cloud"),
    Topic("upload/<car>/ack", "fleet.ChunkAck", 1, False, ("cloud",), ("car",)),
    Topic("upload/<car>/status", "fleet.UploadStatus", 1, False, ("cloud",), ("car",)),
    Topic("cloud/retrain", "any (ignored)", 1, False, ("operator", "cloud"), ("cloud",)),
    Topic("cloud/runs", "fleet.RunSummary", 1, True, ("cloud",), ("operator", "dashboard")),
    Topic(
        "cloud/models",
        "fleet.ModelChange",
        1,
        False,
        ("operator", "dashboard"),
        ("cloud",),
        shared="cloud",
        note="runs only with a valid HMAC under the operator's token",
    ),
    Topic("cloud/models/result", "fleet.ModelChangeResult", 1, False, ("cloud",), ("operator", "dashboard")),
)

ROLES = ("car", "edge", "cloud", "operator", "dashboard")

PAYLOADS = {
    "wire.InferRequest": (wire.encode_request, wire.decode_request),
    "wire.InferReply": (wire.encode_reply, wire.decode_reply),
    "wire.EdgeHealth": (wire.encode_health, wire.decode_health),
    "fleet.PushAnnouncement": (fleet.encode_announcement, fleet.decode_announcement),
    "fleet.CarModelStatus": (fleet.encode_car_status, fleet.decode_car_status),
    "fleet.CarTelemetry": (fleet.encode_car_telemetry, fleet.decode_car_telemetry),
    "fleet.UploadOffer": (fleet.encode_offer, fleet.decode_offer),
    "fleet.ChunkHeader + bytes": (fleet.encode_chunk, fleet.decode_chunk),
    "fleet.ChunkAck": (fleet.encode_ack, fleet.decode_ack),
    "fleet.UploadStatus": (fleet.encode_status, fleet.decode_status),
    "fleet.RunSummary": (fleet.encode_run_summary, fleet.decode_run_summary),
    "fleet.ModelChange": (fleet.encode_model_change, fleet.decode_model_change),
    "fleet.ModelChangeResult": (fleet.encode_model_change_result, fleet.decode_model_change_result),
}
"""The one encoder and decoder of each typed payload."""
