"""edgepilot: record, train, drive — an edge-computing stack for small self-driving cars.

The shared library: the driving-log format, the wire protocol, config, the autopilot
model and the CLI. The deployables (``vehicle``, ``edge_node``, ``cloud_trainer``) import
from here; only command wiring here (the CLI handlers, ``sim drive`` which runs the
vehicle's loop, the demo) imports from them, and lazily, inside the function.
"""

__version__ = "0.1.0"


class EdgepilotError(Exception):
    """An error the user can act on: printed as one line by the CLI, never as a traceback."""
