"""The one definition of every record on disk and every message on the wire.

Everything that is written by one part of edgepilot and read by another is defined in
this package, typed and versioned, so that a reader never has to guess what a writer
meant: ``log`` for the driving log (records on disk), ``wire`` for MQTT messages.
"""

from edgepilot.schema.log import (
    LOG_SCHEMA_VERSION,
    MODES,
    DeleteRange,
    Record,
    SessionMeta,
    decode_line,
    encode_record,
    unit_command,
)
from edgepilot.schema.wire import (
    WIRE_VERSION,
    EdgeHealth,
    InferReply,
    InferRequest,
    WireError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)

__all__ = [
    "LOG_SCHEMA_VERSION",
    "MODES",
    "DeleteRange",
    "Record",
    "SessionMeta",
    "decode_line",
    "encode_record",
    "unit_command",
    "WIRE_VERSION",
    "EdgeHealth",
    "InferReply",
    "InferRequest",
    "WireError",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
]
