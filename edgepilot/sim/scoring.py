"""Scoring a drive exactly as the contract defines it.

* CTE: distance of the car's centre to the centerline.
* Intervention: |CTE| > width/2; the world then puts the car back (``SimWorld``).
* ``autonomy = 1 - interventions * 6 s / elapsed_s`` (NVIDIA PilotNet), simulated
  seconds. Not clamped: more than one intervention per 6 s gives a negative number,
  which is what the definition says and is more honest than a floor at 0.
* A lap counts when the car has passed every part of the centerline in order: the loop
  is cut into sectors that must be entered one after the other; skipping one (a
  shortcut, driving backwards) means the lap does not count.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERVENTION_PENALTY_S = 6.0


@dataclass
class Score:
    laps: int = 0
    interventions: int = 0
    elapsed_s: float = 0.0
    frames: int = 0
    sum_abs_cte: float = 0.0

    @property
    def mean_abs_cte_m(self) -> float:
        return self.sum_abs_cte / self.frames if self.frames else 0.0

    @property
    def autonomy(self) -> float:
        if self.elapsed_s <= 0:
            return 1.0
        return 1.0 - self.interventions * INTERVENTION_PENALTY_S / self.elapsed_s

    def as_dict(self) -> dict[str, float | int]:
        return {
            "laps": self.laps,
            "autonomy": round(self.autonomy, 4),
            "interventions": self.interventions,
            "mean_abs_cte_m": round(self.mean_abs_cte_m, 4),
            "elapsed_s": round(self.elapsed_s, 3),
            "frames": self.frames,
        }


class LapCounter:
    """Counts laps from the nearest-point index: sectors must be entered in order."""

    def __init__(self, n_points: int, sectors: int = 24, start_index: int = 0) -> None:
        self.n = n_points
        self.k = max(3, min(sectors, n_points // 4))
        self.start = start_index
        self.expected = 1  # sector 0 is where the car starts
        self.laps = 0

    def sector(self, index: int) -> int:
        return ((index - self.start) % self.n) * self.k // self.n

    def update(self, index: int) -> bool:
        """Feed the nearest centerline index; True when this step completed a lap."""
        if self.sector(index) != self.expected:
            return False
        if self.expected == 0:
            self.laps += 1
        self.expected = (self.expected + 1) % self.k
        return self.expected == 1

    def progress(self, index: int) -> float:
        """Laps driven as a float: completed laps plus the fraction of the current one."""
        frac = ((index - self.start) % self.n) / self.n
        done_sectors = (self.expected - 1) % self.k
        if done_sectors == 0 and frac > 0.5:  # not yet passed sector 1 after the line
            frac = 0.0
        return self.laps + frac
