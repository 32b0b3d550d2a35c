"""The cloud profile `edgepilot demo` writes: it loads, and its training settings follow
the demo's flags and the cloud's defaults (no broker, no training)."""

from __future__ import annotations

import argparse

import pytest

from edgepilot.config import RetrainConfig, load_profile
from testbed.commands import _demo
from testbed.demo import Demo


@pytest.mark.parametrize("epochs", [1, 6, 12])
def test_the_demos_warm_car_run_follows_the_cloud_and_never_outlasts_a_cold_one(tmp_path, epochs):
    p = argparse.ArgumentParser()
    _demo(p)
    args = p.parse_args(["--workdir", str(tmp_path), "--epochs", str(epochs)])
    tmp_path.joinpath("dashboard").mkdir()
    cloud = load_profile(str(Demo(args)._cloud_profile())).cloud
    assert (cloud.epochs, cloud.warm_start) == (epochs, True)
    assert cloud.warm_epochs == min(epochs, RetrainConfig.warm_epochs)
    assert RetrainConfig.warm_epochs == 5  # the measured default (docs/benchmarks.md#model)
