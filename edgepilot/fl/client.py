"""The Flower client of a car: fine-tune the global model on this car's frames, send back
a compressed update, never a frame.

The same client runs on the car (``edgepilot fl client``, a car whose install has torch)
and on an edge node acting for a car that cannot train (``edgepilot fl proxy``): only
where the frames come from differs. The server sends the architecture with the weights
(``FitIns.config``), so a client needs no model file of its own.

The link (``edgepilot.fl.link``): TLS when the client has the CA that signed the server's
certificate, checked with one handshake before Flower connects; plaintext only to a server
on this machine unless ``insecure``. Every update is signed (``edgepilot.fl.auth``) with
the car's key, or for ``fl proxy`` the edge node's, over the nonce the server gave this
connection for the round; a server with client keys refuses anything else, and a client
without a key is told so before it trains. Such a server also challenges the connection
before it sends the model (``get_properties`` with ``challenge``): the client answers with
its car and a signature over the nonce (``Identity.hello``), and gets the model only if
that verifies.

Faults (``fault``) are a testing aid for the benchmark and the tests, never set in a
fleet: ``nan`` (a NaN in the update), ``huge`` (the update times 1e6), ``shape`` (one
tensor missing), ``drop`` (the process dies mid-round, after training), ``slow`` (answers
after the round's deadline), ``unsigned`` (no signature), ``replay`` (the previous round's
signed answer again); in round ``fault_round``, or in every round when it is 0.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.fl.auth import Identity, load_identity
from edgepilot.fl.codec import CodecConfig, Encoder
from edgepilot.fl.link import client_root_certificates, probe
from edgepilot.fl.local import LocalConfig, car_samples, local_train, tensor_ratios
from edgepilot.fl.options import FAULTS, ClientOptions
from edgepilot.fl.weights import Template, get_arrays, set_arrays, template_of
from edgepilot.model.data import Sample
from edgepilot.model.nets import ArchSpec, StagedNet, build_net
from edgepilot.model.preprocess import InputSpec

log = logging.getLogger(__name__)


@dataclass
class ClientStats:
    rounds: int = 0
    challenges: int = 0  # challenges answered (a server with client keys: one a round)
    models_received: int = 0  # fit calls: the rounds the server sent this client the global model
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

    def __init__(self, opts: ClientOptions, samples: list[Sample], identity: Identity | None = None) -> None:
        if opts.fault is not None and opts.fault not in FAULTS:
            raise EdgepilotError(f"unknown fault {opts.fault!r}; one of {', '.join(FAULTS)}")
        self.opts = opts
        self.samples = samples
        self.identity = identity
        self._last: tuple[bytes, int, dict[str, Any]] | None = None  # the previous answer (fault "replay")
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
        self.stats.models_received += 1
        rnd = int(config.get("round", self.stats.rounds + 1))
        fault = self._fault(rnd)
        if config.get("signed") and self.identity is None and fault != "unsigned":
            raise self._no_key()
        if fault == "replay" and self._last is not None:
            log.warning("fault: replaying round %d's answer in round %d", self._last[2]["round"], rnd)
            return self._last
        net, tpl = self._model(config)
        set_arrays(net, tpl, parameters)
        ratio = float(config.get("ratio", 0.05))
        exit_ratio = float(config.get("exit_ratio", ratio))  # a server older than the key: one share
        self.encoder.cfg = CodecConfig(
            str(config.get("compress", "topk-int8")),
            ratio,
            tensor_ratios(tpl.keys, len(net.stages), ratio, exit_ratio),
        )
        res = local_train(net, tpl.spec, self.samples, LocalConfig.from_config(config), rnd)
        update = [a - g for a, g in zip(get_arrays(net, tpl), parameters, strict=True)]
        blob = self._faulty(update, rnd, fault, float(config.get("deadline_s", 0)))
        self.stats.rounds += 1
        self.stats.bytes_sent += len(blob)
        self.stats.bytes_received += int(sum(p.nbytes for p in parameters))
        self.stats.train_s += res.seconds
        metrics: dict[str, Any] = {
            "car": self.opts.car,
            "role": self.opts.role,
            "train_s": round(res.seconds, 3),
            "loss": round(res.loss, 5),
            "bytes": len(blob),
            "round": rnd,
        }
        nonce = config.get("nonce")
        if isinstance(nonce, str) and self.identity is not None and fault != "unsigned":
            metrics["nonce"] = nonce  # echoed: the server tells a replay from a bad signature
            metrics.update(self.identity.sign(self.opts.car, rnd, nonce, blob, res.samples))
        self.stats.per_round.append({k: v for k, v in metrics.items() if k not in ("sig", "nonce")})
        self._last = (blob, res.samples, metrics)
        log.info(
            "round %d: %d frames, loss %.4f, %.1f s, %d bytes",
            rnd,
            res.samples,
            res.loss,
            res.seconds,
            len(blob),
        )
        return blob, res.samples, metrics

    def hello(self, config: dict[str, Any]) -> dict[str, Any]:
        """Answer the server's challenge (its nonce for this connection and round) with this
        car's name, signed: the server sends the model only to a connection that verifies."""
        self.stats.challenges += 1
        rnd, nonce = int(config.get("round", 0)), str(config["challenge"])
        fault = self._fault(rnd)
        if self.identity is None and fault != "unsigned":
            raise self._no_key()  # one clear line here, rather than a silent wait for a model
        props: dict[str, Any] = {"car": self.opts.car, "role": self.opts.role, "round": rnd, "nonce": nonce}
        if self.identity is not None and fault != "unsigned":
            props.update(self.identity.hello(self.opts.car, rnd, nonce))
        return props

    def _no_key(self) -> EdgepilotError:
        kind, name = self.opts.signer
        return EdgepilotError(
            f"the federated server takes signed updates only and this {kind} has no key: make one "
            f"with `edgepilot keys --{kind} {name}` (or pass --key) and give the server its .pub"
        )

    def _fault(self, rnd: int) -> str | None:
        return self.opts.fault if self.opts.fault_round in (0, rnd) else None

    def _faulty(self, update: list[np.ndarray], rnd: int, fault: str | None, deadline_s: float) -> bytes:
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
        if fault == "shape":  # one share for all: per-tensor shares name the whole update
            return Encoder(replace(self.encoder.cfg, ratios=())).encode(update[:-1])
        return self.encoder.encode(update)

    def summary(self) -> dict[str, Any]:
        return {
            "car": self.opts.car,
            "role": self.opts.role,
            "signer": self.identity.signer if self.identity else None,
            "frames": len(self.samples),
            "rounds": self.stats.rounds,
            "challenges": self.stats.challenges,
            "models_received": self.stats.models_received,
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
    """Check the link's settings, load this car's frames, join the server's rounds until it
    says stop; the summary."""
    flower_env()
    try:
        from flwr.client import NumPyClient
        from flwr.compat.client.app import start_client
    except ImportError:
        raise EdgepilotError("federated learning needs Flower: pip install 'edgepilot[fl]'") from None

    # the settings first: a missing CA or key is one line before any frame is loaded
    root = client_root_certificates(opts.server, opts.tls_ca, opts.insecure)
    identity = load_identity(*opts.signer, opts.key)
    trainer = CarTrainer(opts, car_samples(opts.logs, opts.max_frames), identity)

    class _Client(NumPyClient):  # type: ignore[misc]
        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            raise EdgepilotError("the server holds the global model; a car never seeds it")

        def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
            # the server's challenge before it sends the model; nothing else is asked here
            return trainer.hello(config) if "challenge" in config else {}

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict]:
            blob, n, metrics = trainer.fit(parameters, config)
            return [np.frombuffer(blob, np.uint8)], n, metrics

    wait_port(opts.server, opts.connect_timeout_s)
    probe(opts.server, root, opts.tls_ca)
    t0 = time.time()
    try:
        start_client(
            server_address=opts.server,
            client=_Client().to_client(),
            insecure=root is None,
            root_certificates=root,
            max_retries=3,
            max_wait_time=opts.connect_timeout_s,
        )
    except EdgepilotError:
        raise
    except Exception as e:  # noqa: BLE001 - gRPC's errors: the server went away mid-run
        raise EdgepilotError(f"lost the federated server at {opts.server}: {type(e).__name__}: {e}") from None
    return {**trainer.summary(), "elapsed_s": round(time.time() - t0, 1)}
