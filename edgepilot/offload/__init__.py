"""The offload protocol's client side: hard frames to the edge nodes, within a deadline.

``OffloadClient`` is what a car runs (and what load generators drive); ``CircuitBreaker``
stops offloading while the edge is slow or gone; ``HealthPlanner``/``SplitPlanner``
choose, from the edge nodes' health and measured link times, whether to send a stage's
features (split mode) or the JPEG.
"""
