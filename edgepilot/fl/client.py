"""The Flower client of a car: fine-tune the global model on this car's frames, send back
a compressed update, never a frame.

The same client runs on the car (``edgepilot fl client``, a car whose install has torch)
and on an edge node acting for a car that cannot train (``edgepilot fl proxy``): only
where the frames come from differs. The server sends the architecture with the weights
(``FitIns.config``), so a client needs no model file of its own.

Faults (``fault``) are a testing aid for the benchmark and the tests, never set in a
fleet: ``nan`` (a NaN in the update), ``huge`` (the update times 1e6), ``shape`` (one
tensor missing), ``drop`` (the process dies mid-round, after training), ``slow`` (answers
after the round's deadline); in round ``fault_round``, or in every round when it is 0.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.fl.codec import CodecConfig, Encoder
from edgepilot.fl.local import LocalConfig, car_samples, local_train
from edgepilot.fl.options import FAULTS, ClientOptions
from edgepilot.fl.weights import Template, get_arrays, set_arrays, template_of
from edgepilot.model.data import Sample
from edgepilot.model.nets import ArchSpec, StagedNet, build_net
from edgepilot.model.preprocess import InputSpec

log = logging.getLogger(__name__)


@dataclass
class ClientStats:
    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    train_s: float = 0.0
    per_round: list[dict[str, Any]] = field(default_factory=list)


def flower_env() -> None:
    """Flower must not try to phone home (telemetry) from a car or a test, nor log every
    message it passes at INFO unless asked (``-v``)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("flwr").setLevel(logging.WARNING)


class CarTrainer:
    """The federated logic of one car, without Flower: what ``fit`` does."""

    def __init__(self, opts: ClientOptions, samples: list[Sample]) -> None:
        if opts.fault is not None and opts.fault not in FAULTS:
            raise EdgepilotError(f"unknown fault {opts.fault!r}; one of {', '.join(FAULTS)}")
        self.opts = opts
        self.samples = samples
        self.net: StagedNet | None = None
        self.tpl: Template | None = None
        self.encoder = Encoder()
        self.stats = ClientStats()

    def _model(self, config: dict[str, Any]) -> tuple[StagedNet, Template]:
        try:
            arch = ArchSpec.from_dict(json.loads(str(config["arch"])))
            spec = InputSpec.from_dict(json.loads(str(config.get("input", "{}"))))
        except (KeyError, ValueError, TypeError) as e:
            raise EdgepilotError(f"the server sent no usable architecture ({e})") from None
        if (
            self.net is None
            or self.net.arch.to_dict() != arch.to_dict()
            or self.tpl is None
            or self.tpl.spec != spec
        ):
            self.net = build_net(arch, spec)
            self.tpl = template_of(self.net, spec)
        return self.net, self.tpl

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[bytes, int, dict[str, Any]]:
        """One round: (encoded update, samples, metrics)."""
        import torch

        torch.set_num_threads(self.opts.threads)
        rnd = int(config.get("round", self.stats.rounds + 1))
        net, tpl = self._model(config)
        set_arrays(net, tpl, parameters)
        self.encoder.cfg = CodecConfig(
            str(config.get("compress", "topk-int8")), float(config.get("ratio", 0.05))
        )
        res = local_train(net, tpl.spec, self.samples, LocalConfig.from_config(config), rnd)
        update = [a - g for a, g in zip(get_arrays(net, tpl), parameters, strict=True)]
        blob = self._faulty(update, rnd, float(config.get("deadline_s", 0)))
        self.stats.rounds += 1
        self.stats.bytes_sent += len(blob)
        self.stats.bytes_received += int(sum(p.nbytes for p in parameters))
        self.stats.train_s += res.seconds
        metrics = {
            "car": self.opts.car,
            "role": self.opts.role,
            "train_s": round(res.seconds, 3),
            "loss": round(res.loss, 5),
            "bytes": len(blob),
        }
        self.stats.per_round.append({"round": rnd, **metrics})
        log.info(
            "round %d: %d frames, loss %.4f, %.1f s, %d bytes",
            rnd,
            res.samples,
            res.loss,
            res.seconds,
            len(blob),
        )
        return blob, res.samples, metrics

    def _faulty(self, update: list[np.ndarray], rnd: int, deadline_s: float) -> bytes:
        fault = self.opts.fault if self.opts.fault_round in (0, rnd) else None
        if fault == "drop":
            log.warning("fault: dying mid-round %d", rnd)
            os._exit(3)
        if fault == "slow":
            time.sleep(max(deadline_s, 1.0) * 1.5)
        if fault == "nan":
            update[0].flat[0] = np.nan
            return Encoder(CodecConfig("none")).encode(update)
        if fault == "huge":  # a fresh encoder: the garbage must not linger in the residual
            return Encoder(self.encoder.cfg).encode([u * 1e6 for u in update])
        if fault == "shape":
            return Encoder(self.encoder.cfg).encode(update[:-1])
        return self.encoder.encode(update)

    def summary(self) -> dict[str, Any]:
        return {
            "car": self.opts.car,
            "role": self.opts.role,
            "frames": len(self.samples),
            "rounds": self.stats.rounds,
            "bytes_sent": self.stats.bytes_sent,
            "bytes_received": self.stats.bytes_received,
            "train_s": round(self.stats.train_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "per_round": self.stats.per_round,
        }


def wait_port(address: str, timeout_s: float) -> None:
    """Wait for the server to listen (the legacy client gives up at once otherwise)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise EdgepilotError(f"no federated server at {address} within {timeout_s:g} s") from None
            time.sleep(0.2)


def run_client(opts: ClientOptions) -> dict[str, Any]:
    """Load this car's frames, join the server's rounds until it says stop; the summary."""
    flower_env()
    try:
        from flwr.client import NumPyClient
        from flwr.compat.client.app import start_client
    except ImportError:
        raise EdgepilotError("federated learning needs Flower: pip install 'edgepilot[fl]'") from None

    trainer = CarTrainer(opts, car_samples(opts.logs, opts.max_frames))

    class _Client(NumPyClient):  # type: ignore[misc]
        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            raise EdgepilotError("the server holds the global model; a car never seeds it")

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict]:
            blob, n, metrics = trainer.fit(parameters, config)
            return [np.frombuffer(blob, np.uint8)], n, metrics

    wait_port(opts.server, opts.connect_timeout_s)
    t0 = time.time()
    try:
        start_client(
            server_address=opts.server,
            client=_Client().to_client(),
            insecure=True,
            max_retries=3,
            max_wait_time=opts.connect_timeout_s,
        )
    except EdgepilotError:
        raise
    except Exception as e:  # noqa: BLE001 - gRPC's errors: the server went away mid-run
        raise EdgepilotError(f"lost the federated server at {opts.server}: {type(e).__name__}: {e}") from None
    return {**trainer.summary(), "elapsed_s": round(time.time() - t0, 1)}
