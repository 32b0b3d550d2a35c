"""The onboard runtime: sources (camera, simulator, replay), the autopilot loop, actuators, recorder, UI."""
