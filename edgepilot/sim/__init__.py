"""The built-in simulator: tracks, a ground-plane camera renderer, a bicycle-model car,
an expert pilot and contract scoring — numpy and OpenCV only, reproducible, and fast
enough (thousands of steps per second on one core) to make training data and score
autopilots without a car. See docs/simulator.md.

The onboard loop uses ``tracks.load_track``, ``world.SimWorld`` and ``expert.Expert``.
"""
