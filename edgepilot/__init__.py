"""edgepilot: record, train, drive — an edge-computing stack for small self-driving cars.

The shared library: the message schema, the onboard loop and its parts, the offload
client, the autopilot model, the simulator, the driving-log format, config and the
command line's root. The deployables (``vehicle``, ``edge_node``, ``cloud_trainer``) and
the ``testbed`` above them import from here; nothing here imports them, not even inside a
function (pyproject.toml's import-linter contracts, docs/architecture.md).
"""

__version__ = "0.1.0"


class EdgepilotError(Exception):
    """An error the user can act on: printed as one line by the CLI, never as a traceback."""
