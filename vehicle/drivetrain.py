"""The car's drivetrain from its profile: which actuator drives the servo and the ESC.

One factory over every driver (serial motor controllers, the PCA9685 on I2C, the
simulator's car), kept apart from the drivers so that none of them imports another."""

from __future__ import annotations

from typing import Any

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig
from vehicle.actuators import FramedActuator, LogActuator, RoboHatActuator


def make_actuator(cfg: ActuatorConfig, sim_world: Any = None, *, i2c_bus_factory: Any = None) -> Any:
    """The profile's actuator: "robohat" | "framed" | "pca9685" | "none" | "sim" (needs
    ``sim_world``); ``i2c_bus_factory(bus_number)`` replaces smbus2.SMBus (tests: a chip model)."""
    if cfg.kind == "pca9685":
        from vehicle.pca9685 import PCA9685Actuator

        return PCA9685Actuator(cfg, bus_factory=i2c_bus_factory)
    if cfg.kind == "robohat":
        return RoboHatActuator(cfg)
    if cfg.kind == "framed":
        return FramedActuator(cfg)
    if cfg.kind == "none":
        return LogActuator(cfg)
    if cfg.kind == "sim":
        if sim_world is None:
            raise EdgepilotError("actuator.kind 'sim' needs the simulator (use `edgepilot sim drive`)")
        from edgepilot.sim.parts import SimActuator

        return SimActuator(sim_world)
    raise EdgepilotError(f"actuator.kind: unknown kind {cfg.kind!r} (robohat, framed, pca9685, none, sim)")
