"""What plays several parts at once: the demo, load generators, multi-process benchmarks.

It sits above the deployables (``vehicle``, ``edge_node``, ``cloud_trainer``) and starts
them as processes that talk over MQTT, as a real deployment would; nothing below imports
it."""
