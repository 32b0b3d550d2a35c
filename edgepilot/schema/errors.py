"""The schema's one error: a payload that does not follow it."""

from __future__ import annotations


class WireError(ValueError):
    """A payload that does not follow this schema; the message says what is wrong."""
