"""The split-point planner moved to ``edgepilot.planner``: the car runs it too (it builds
one from edge health, ``vehicle.splitplan``), and the deployables share code only through
``edgepilot``. Re-exported here for the edge's benchmarks and older imports."""

from edgepilot.planner import FRAME, Candidate, SplitPlanner, candidates_from_health, from_health

__all__ = ["FRAME", "Candidate", "SplitPlanner", "candidates_from_health", "from_health"]
