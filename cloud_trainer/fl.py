"""The federated server: Flower rounds over the fleet's cars, then the same gate, registry,
compression and signed push as a centrally retrained model.

One run (``edgepilot fl server``):

1. the global model starts from an fp32 car package (``--init``, else the fp32 source of
   the registry's current car model);
2. the first round waits (up to ``wait_s``) for the cars it expects, every round goes on
   with at least ``min_cars``; with client keys (``ServerLink.trust``) every connection is
   first challenged (``_admit``: it signs this round's nonce as the car it names), and only
   the connections that verify count towards that wait and take part; it sends every
   (verified) car the global weights and the round's settings (local epochs, learning rate,
   FedProx ``mu``, update compression);
3. cars that do not answer within ``round_timeout_s`` (stragglers) or whose connection
   breaks (a car that drops out mid-round) are failures: counted and logged, not waited
   for; with client keys every answer must be signed by the car its connection answered
   the challenge as (or an edge node listed for it) over the nonce its connection got this
   round (``edgepilot.fl.auth``), else it is refused unread; one update per car per round;
   every answer left is decoded and checked (``edgepilot.fl.check``), garbage refused
   with its reason; with fewer than ``min_cars`` usable updates the global model stays
   as it was for that round;
4. the sample-weighted mean update moves the global model (FedAvg; FedProx is FedAvg
   with the proximal term on the cars);
5. after the last round: calibrate exits on the server's held-out reference sessions, the
   threshold path built on its other ones (the cloud's own data, never a car's frames), as
   a central run calibrates on its held-out sessions; compress to int8, evaluate against
   the current model, gate, register, promote and push (``cloud_trainer.retrain``'s steps).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_trainer.registry import Registry
from cloud_trainer.retrain import compress_car, judge, register, split_sessions, store_logs
from edgepilot import EdgepilotError
from edgepilot.config import RetrainConfig
from edgepilot.fl.auth import AuthError, Trust, new_nonce
from edgepilot.fl.check import Update, UpdateLimits, screen, weighted_mean
from edgepilot.fl.codec import CodecConfig
from edgepilot.fl.link import ServerLink
from edgepilot.fl.options import EXIT_TOPK, TOPK
from edgepilot.fl.weights import Template, get_arrays, load_net, sanitize, save_federated, set_arrays
from edgepilot.model.nets import StagedNet
from edgepilot.model.train import TrainConfig, check_share

log = logging.getLogger(__name__)

STRATEGIES = ("fedavg", "fedprox")
# answering the challenge is one signature: a connection silent this long gets no model (and
# Flower drops it: a request past its timeout aborts the stream); it also bounds how long a
# silent connection can hold up the start of a round
HELLO_TIMEOUT_S = 10.0
CHALLENGE_WORKERS = 32  # connections challenged at once (Flower's own pool is as wide)


@dataclass
class FlConfig:
    # rounds, strategy, epochs, lr, ratio: what `edgepilot bench fl` measured (docs/benchmarks.md)
    rounds: int = 12
    cars: int = 2  # cars a round waits for (up to wait_s) ...
    min_cars: int = 2  # ... and the fewest it goes on with
    wait_s: float = 120.0
    round_timeout_s: float = 600.0  # a car that has not answered by then is a straggler
    strategy: str = "fedprox"
    mu: float = 0.01  # FedProx
    epochs: int = 2  # local epochs per round
    batch: int = 32
    lr: float = 2e-3
    compress: str = "topk-int8"
    ratio: float = TOPK
    exit_ratio: float = EXIT_TOPK  # the trained early exits' heads (edgepilot.fl.local.tensor_ratios)
    seed: int = 0
    # the cars' loss: the shares of edgepilot train (exits learn from the final head, it
    # from exit 1); the server's command takes mutual from the profile's [cloud] warm_mutual
    self_distill: float = TrainConfig.self_distill
    mutual: float = TrainConfig.mutual
    limits: UpdateLimits = field(default_factory=UpdateLimits)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise EdgepilotError(f"unknown strategy {self.strategy!r}; one of {', '.join(STRATEGIES)}")
        if not 1 <= self.min_cars <= max(self.cars, 1):
            raise EdgepilotError(f"min_cars must be between 1 and cars ({self.cars}), got {self.min_cars}")
        CodecConfig(self.compress, self.ratio, (self.exit_ratio,))  # refuse a bad mode before a car trains
        check_share("self_distill", self.self_distill)
        check_share("mutual", self.mutual)

    def fit_config(self, rnd: int, arch: str, spec: str) -> dict[str, Any]:
        """What every car is told for round ``rnd`` (Flower config: scalars only)."""
        return {
            "round": rnd,
            "epochs": self.epochs,
            "batch": self.batch,
            # cosine over the rounds, as central training decays over its epochs
            "lr": self.lr * 0.5 * (1 + math.cos(math.pi * (rnd - 1) / max(self.rounds, 1))),
            "mu": self.mu if self.strategy == "fedprox" else 0.0,
            "compress": self.compress,
            "ratio": self.ratio,
            "exit_ratio": self.exit_ratio,
            "seed": self.seed,
            "self_distill": self.self_distill,
            "mutual": self.mutual,
            "deadline_s": self.round_timeout_s,
            "arch": arch,
            "input": spec,
        }


@dataclass
class RoundLog:
    round: int
    cars: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    unauthenticated: list[str] = field(default_factory=list)  # refused for who sent them, unread
    failures: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_by_car: dict[str, int] = field(default_factory=dict)
    bytes_down: int = 0
    applied: bool = False
    seconds: float = 0.0


def _strategy_class() -> type:
    """The Flower strategy, defined on first use so that importing this module needs no flwr."""
    import json

    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import Strategy

    class FleetStrategy(Strategy):  # type: ignore[misc]
        def __init__(
            self, cfg: FlConfig, tpl: Template, start: list[np.ndarray], trust: Trust | None = None
        ) -> None:
            self.cfg, self.tpl, self.trust = cfg, tpl, trust
            self.global_arrays = [a.copy() for a in start]
            self.rounds: list[RoundLog] = []
            self.nonces: dict[str, str] = {}  # connection (Flower's cid) -> its nonce this round
            self.hellos: dict[str, str] = {}  # connection -> the car it answered the challenge as
            self._arch = json.dumps(tpl.arch.to_dict())
            self._spec = json.dumps(tpl.spec.to_dict())
            self._t0 = 0.0

        def __repr__(self) -> str:
            return f"FleetStrategy({self.cfg.strategy}, {self.cfg.compress})"

        def initialize_parameters(self, client_manager: Any) -> Any:
            return ndarrays_to_parameters(self.global_arrays)

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
            self._t0 = time.monotonic()
            # the first round waits for the whole expected fleet; later ones go on with
            # whoever is still connected (a car that dropped out is not waited for again)
            want = self.cfg.cars if server_round == 1 else self.cfg.min_cars
            rl = RoundLog(server_round)
            self.rounds.append(rl)
            if self.trust is None:
                client_manager.wait_for(want, timeout=int(self.cfg.wait_s))
                cars = list(client_manager.all().values())
            else:  # only connections that prove a trusted car count, and only they get the model
                self.trust = _keys_now(self.trust, server_round)
                cars, self.nonces, self.hellos = _admit(
                    self.trust, server_round, client_manager, want, self.cfg.wait_s, rl
                )
            if len(cars) < self.cfg.min_cars:
                log.warning(
                    "round %d: %d car(s) connected, %d needed: skipped",
                    server_round,
                    len(cars),
                    self.cfg.min_cars,
                )
                return []
            base = self.cfg.fit_config(server_round, self._arch, self._spec)
            base["signed"] = self.trust is not None
            if self.trust is None:  # (with trust, the nonce of the challenge: signs the update too)
                # a nonce per connection and round: a signed update is good for that one answer
                self.nonces = {c.cid: new_nonce() for c in cars}
            rl.bytes_down = len(cars) * sum(len(t) for t in parameters.tensors)
            return [(c, FitIns(parameters, {**base, "nonce": self.nonces[c.cid]})) for c in cars]

        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
            rl = self.rounds[-1]
            updates = [_update(proxy, res, parameters_to_ndarrays) for proxy, res in results]
            rl.unauthenticated += _identify(
                updates, results, self.trust, server_round, (self.nonces, self.hellos), set(rl.refused)
            )
            ok = _screen_round(rl, updates, results, failures, self.tpl, self.cfg.limits)
            rl.seconds = round(time.monotonic() - self._t0, 2)
            metrics = {"accepted": len(ok), "refused": len(rl.refused), "failures": len(failures)}
            if len(ok) < self.cfg.min_cars:
                log.warning(
                    "round %d: %d usable update(s), %d needed: the global model stays",
                    server_round,
                    len(ok),
                    self.cfg.min_cars,
                )
                return None, metrics
            step = weighted_mean(ok)
            self.global_arrays = sanitize(
                self.tpl, [g + s for g, s in zip(self.global_arrays, step, strict=True)]
            )
            rl.applied = True
            log.info("round %d: %d updates averaged (%d bytes up)", server_round, len(ok), rl.bytes_up)
            return ndarrays_to_parameters(self.global_arrays), metrics

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list:
            return []  # the gate evaluates, on the server's own data, after the last round

        def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
            return None, {}

        def evaluate(self, server_round: int, parameters: Any) -> None:
            return None

    return FleetStrategy


def _screen_round(
    rl: RoundLog, updates: list[Update], results: list, failures: list, tpl: Template, limits: UpdateLimits
) -> list[Update]:
    """Book a round's answers in its log (who answered, bytes up per car, failures), screen
    the updates and log every refusal and failure; the updates fit to average."""
    rl.cars = [u.car for u in updates]
    for u, (_, res) in zip(updates, results, strict=True):
        rl.bytes_by_car[u.car] = sum(len(t) for t in res.parameters.tensors)
    rl.bytes_up = sum(rl.bytes_by_car.values())
    rl.failures = [_failure(f) for f in failures]
    ok = screen([u for u in updates if u.error is None], tpl.shapes, limits)
    rl.accepted = [u.car for u in ok]
    refused = {u.car: str(u.error) for u in updates if u.error}
    rl.refused.update(refused)  # beside the connections refused at the challenge
    for car, why in refused.items():
        log.warning("round %d: refused the update of %s: %s", rl.round, car, why)
    for why in rl.failures:
        log.warning("round %d: a car failed: %s", rl.round, why)
    return ok


def _identify(
    updates: list[Update],
    results: list,
    trust: Trust | None,
    rnd: int,
    given: tuple[dict[str, str], dict[str, str]],
    taken: set[str],
) -> list[str]:
    """Who sent each update: with ``trust``, an update whose signature does not check out
    (unsigned, another key, an unknown car or node, another round's nonce, another car than
    its connection answered the challenge as; ``given``: the nonce and car of each
    connection) is refused before a byte of it is decoded; a car's second update in a round
    is refused either way. Then every update gets a name unique in the round (the car's;
    ``car#2`` for a second claim, the verified update keeping the bare name; none of
    ``taken``) for the round log. The refused names."""
    nonces, hellos = given
    for u, (proxy, res) in zip(updates, results, strict=True):
        if trust is not None:
            try:
                car = trust.verify(res.metrics or {}, rnd, nonces.get(proxy.cid), u.payload, u.samples)
                if car != hellos.get(proxy.cid):
                    raise AuthError(f"an update for {car} on the connection of {hellos.get(proxy.cid)}")
            except AuthError as e:
                u.error = f"not authenticated: {e}"
    seen: set[str] = set()
    for u in updates:  # arrival order: the first verified update of a car counts
        if u.error is None and u.car in seen:
            u.error = f"duplicate: {u.car} already sent an update this round"
        elif u.error is None:
            seen.add(u.car)
    taken = set(taken)
    for u in sorted(updates, key=lambda u: u.error is not None):  # stable: arrival order otherwise
        u.car = _unique(u.car, taken)
    return [u.car for u in updates if u.error]


def _unique(car: str, taken: set[str]) -> str:
    """``car``, or ``car#2``, ``car#3``... if taken in the round's log; now taken."""
    name, n = car, 1
    while name in taken:
        n += 1
        name = f"{car}#{n}"
    taken.add(name)
    return name


def _keys_now(trust: Trust, rnd: int) -> Trust:
    """The client keys read again for round ``rnd``: a car whose key was removed is
    refused from this round on (a round under way keeps the keys it started with)."""
    now = trust.reloaded()
    who = [(t.broken, sorted(t.cars), sorted(t.nodes), sorted(t.acts_for.items())) for t in (trust, now)]
    if who[0] != who[1]:
        (log.error if now.broken else log.warning)("round %d: client keys changed: %s", rnd, now.describe())
    return now


def _admit(
    trust: Trust, rnd: int, client_manager: Any, want: int, wait_s: float, rl: RoundLog
) -> tuple[list, dict[str, str], dict[str, str]]:
    """Challenge every connection (as it comes) until ``want`` of them verified as distinct
    trusted cars, or ``wait_s``: a connection that cannot sign for a car, or names a car
    another connection already proved this round, is refused (booked in ``rl``) and gets
    no model. (the admitted connections, their nonces, their cars)"""
    deadline = time.monotonic() + wait_s
    nonces: dict[str, str] = {}  # every connection challenged this round -> its nonce
    cars: dict[str, str] = {}  # the admitted ones -> their car
    proxies: dict[str, Any] = {}
    refused: list[tuple[str, str]] = []  # (the name it claimed, why)
    while True:
        fresh = [p for cid, p in list(client_manager.all().items()) if cid not in nonces]
        nonces.update({p.cid: new_nonce() for p in fresh})
        for proxy, car, why in _challenge(trust, rnd, fresh, nonces):
            if why is None and car in cars.values():
                why = f"duplicate: {car} already answered the challenge on another connection"
            if why is None:
                cars[proxy.cid], proxies[proxy.cid] = car, proxy
            else:
                refused.append((car, why))
        left = deadline - time.monotonic()
        if len(cars) >= want or left <= 0:
            break
        # the wait counts verified cars, not connections: look again at each new connection
        client_manager.wait_for(len(client_manager.all()) + 1, timeout=min(left, 1.0))
    _book_refusals(rl, refused, set(cars.values()))
    return list(proxies.values()), {cid: nonces[cid] for cid in cars}, cars


def _challenge(
    trust: Trust, rnd: int, proxies: list, nonces: dict[str, str]
) -> list[tuple[Any, str, str | None]]:
    """Challenge ``proxies`` side by side (a silent one holds up nobody), in their order:
    (proxy, the car it claims, why it is refused or None)."""
    if not proxies:
        return []
    with ThreadPoolExecutor(max_workers=min(len(proxies), CHALLENGE_WORKERS)) as pool:
        return list(pool.map(lambda p: _hello(trust, rnd, p, nonces[p.cid]), proxies))


def _hello(trust: Trust, rnd: int, proxy: Any, nonce: str) -> tuple[Any, str, str | None]:
    """One connection's answer to the challenge: (proxy, the car it claims, why refused)."""
    from flwr.common import Code, GetPropertiesIns

    ins = GetPropertiesIns({"challenge": nonce, "round": rnd, "signed": True})
    try:
        res = proxy.get_properties(ins, timeout=HELLO_TIMEOUT_S, group_id=rnd)
    except Exception as e:  # noqa: BLE001 - the connection broke or went silent: it gets nothing
        return proxy, proxy.cid, f"no answer to the challenge ({type(e).__name__})"
    props = dict(res.properties or {})
    claimed = str(props.get("car") or proxy.cid)[:64]  # only a name in the log: bounded
    if res.status.code != Code.OK:
        return proxy, claimed, f"the client failed the challenge: {res.status.message}"[:200]
    try:
        return proxy, trust.verify_hello(props, rnd, nonce), None
    except AuthError as e:
        return proxy, claimed, str(e)


def _book_refusals(rl: RoundLog, refused: list[tuple[str, str]], admitted: set[str]) -> None:
    """Log the connections refused at the challenge: unauthenticated, no model sent; the
    admitted cars keep their bare names."""
    taken = set(admitted)
    for car, why in refused:
        name = _unique(car, taken)
        rl.refused[name] = f"not authenticated, sent no model: {why}"
        rl.unauthenticated.append(name)
        log.warning("round %d: refused %s at the challenge (no model sent): %s", rl.round, name, why)


def _update(proxy: Any, res: Any, to_arrays: Any) -> Update:
    car = str((res.metrics or {}).get("car") or proxy.cid)
    try:
        arrays = to_arrays(res.parameters)
        payload = arrays[0].tobytes() if len(arrays) == 1 and arrays[0].dtype == np.uint8 else b""
    except Exception as e:  # noqa: BLE001 - whatever a car sent that does not even deserialise
        log.warning("update of %s does not deserialise: %s", car, e)
        payload = b""
    samples = res.num_examples
    return Update(car, payload, int(samples) if isinstance(samples, int | np.integer) else -1)


def _failure(f: Any) -> str:
    if isinstance(f, BaseException):
        return f"{type(f).__name__}: {f}"[:200]
    proxy, res = f
    return f"{proxy.cid}: {getattr(res.status, 'message', res.status)}"[:200]


def run_rounds(
    cfg: FlConfig, tpl: Template, start: list[np.ndarray], link: ServerLink
) -> tuple[list[np.ndarray], list[RoundLog]]:
    """Serve the rounds on ``link`` (its address, TLS, client keys); the final global arrays
    and the round log."""
    from edgepilot.fl.client import flower_env

    flower_env()
    from flwr.server import Server, SimpleClientManager
    from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

    cm = SimpleClientManager()
    strategy = _strategy_class()(cfg, tpl, start, link.trust)
    server = Server(client_manager=cm, strategy=strategy)
    grpc_server = start_grpc_server(
        client_manager=cm, server_address=link.address, certificates=link.certificates
    )
    log.info(
        "federated server on %s (%s, %s): %d rounds, %s, %s updates",
        link.address,
        "TLS" if link.certificates else "plaintext",
        "challenged cars, signed updates only" if link.trust else "cars not authenticated",
        cfg.rounds,
        cfg.strategy,
        cfg.compress,
    )
    try:
        server.fit(num_rounds=cfg.rounds, timeout=cfg.round_timeout_s)
        server.disconnect_all_clients(timeout=10.0)
    finally:
        grpc_server.stop(grace=1)
    return strategy.global_arrays, strategy.rounds


# -- a federated run: rounds, then the gate ------------------------------------------------


def start_package(registry: Registry, init: str | None) -> Path:
    """The fp32 package the rounds start from: ``init``, else the current car model's
    (its fp32 source when it is int8)."""
    if init:
        return Path(init)
    cur = registry.current("car")
    if cur is None:
        raise EdgepilotError("no current car model to fine-tune: pass --init PKG (an fp32 car package)")
    if (registry.get("car", cur).get("quant") or "fp32") == "fp32":
        return registry.package_path("car", cur)
    src = registry.source_path(cur)
    if src is None:
        raise EdgepilotError(
            f"the current car model {cur} is int8 and the registry kept no fp32 source for it: "
            "pass --init PKG (the fp32 package it was compressed from)"
        )
    return src


def reference_sets(registry: Registry, reference: list[str] | None) -> tuple[list[str], list[str]]:
    """(other logs, held-out logs) from the server's own data: ``reference`` or every log in
    the store; whole sessions held out as the central run does. Exits are calibrated on the
    held-out ones (as a central run's with ``car_val_heldout``); the others build the threshold
    path and int8's ranges."""
    from edgepilot.drivelog import find_logs

    if reference:
        dirs = [str(p) for p in find_logs(reference)]
    else:
        dirs = [str(registry.store.local_dir(k)) for k in store_logs(registry)]
    if not dirs:
        raise EdgepilotError(
            "the server needs reference logs of its own (--reference LOG, or logs in the store)"
        )
    if len(dirs) < 2:
        log.warning("one reference log: exits are calibrated and gated on the same frames")
        return dirs, dirs
    return split_sessions(sorted(dirs), RetrainConfig.heldout_every)


def federated_run(
    registry: Registry,
    workdir: str | Path,
    cfg: FlConfig,
    rcfg: RetrainConfig,
    *,
    link: ServerLink,
    init: str | None = None,
    reference: list[str] | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Rounds on ``link``, then calibrate, compress, judge, register, promote. The summary
    (``promoted`` lists what the caller should push)."""
    t0 = time.time()
    run_id = time.strftime("fl-%Y%m%d-%H%M%S")
    work = Path(workdir) / run_id
    work.mkdir(parents=True, exist_ok=True)
    start = start_package(registry, init)
    net, tpl, manifest = load_net(start, registry.trusted_keys)
    others, held = reference_sets(registry, reference)
    final, rounds = run_rounds(cfg, tpl, get_arrays(net, tpl), link)
    cars = sorted({c for r in rounds for c in r.accepted})
    results: dict[str, Any] = {
        "run": run_id,
        "train": [f"car:{c}" for c in cars],
        "heldout": held,
        "targets": {},
        "federated": _summary(cfg, rounds, manifest.get("version"), link),
        "rounds": [asdict(r) for r in rounds],
        "promoted": [],
    }
    if not any(r.applied for r in rounds):
        results.update(
            error="no round had enough usable updates: nothing to gate", elapsed_s=round(time.time() - t0, 1)
        )
        log.error("federated run %s: %s", run_id, results["error"])
        return results
    set_arrays(net, tpl, final)
    fp = _save_global(net, tpl, work, (held, others), key, manifest.get("version"), cars, cfg, rcfg.offload_tol)
    car_pkg, report = _gate(registry, results, work, fp["package"], others, held, rcfg, key)
    results.update(
        report=report, package=str(car_pkg), fp32=fp["package"], elapsed_s=round(time.time() - t0, 1)
    )
    return results


def _save_global(
    net: StagedNet,
    tpl: Template,
    work: Path,
    logs: tuple[list[str], list[str]],
    key: str | None,
    parent: str | None,
    cars: list[str],
    cfg: FlConfig,
    ok_tol: float,
) -> dict[str, Any]:
    """The final global model as a signed fp32 car package in ``work``, its exits
    calibrated on the server's ``logs`` (held-out, others: ``reference_sets``; the others
    build the threshold path) for the offload tolerance
    ``ok_tol`` (the profile's ``offload_tol``, as a central run's); its training record
    names the parent, the cars whose updates were averaged and the run's settings (the
    limits are the server's own policy, not how the model was trained)."""
    training = {
        "parent": parent,
        "cars": cars,
        "fl": {k: v for k, v in asdict(cfg).items() if k != "limits"},
    }
    held, others = logs
    return save_federated(
        net,
        tpl.spec,
        work / "car-fp32.eppkg",
        held,
        key=key,
        parent=parent,
        training=training,
        ok_tol=ok_tol,
        path_logs=others,
    )


def _gate(
    registry: Registry,
    results: dict[str, Any],
    work: Path,
    fp32: str,
    calib: list[str],
    held: list[str],
    rcfg: RetrainConfig,
    key: str | None,
) -> tuple[Path, str]:
    """The central retrain's steps for the fp32 package ``fp32``: compress to int8, judge on
    the held-out logs, write the report, register (promoting when the gate passes). Fills
    ``results`` (``compress``, ``targets``, ``promoted``); the int8 package and the report."""
    from cloud_trainer.report import write_report
    from edgepilot.model.evaluate import load_frames

    car_pkg, results["compress"] = compress_car(fp32, work / "car.eppkg", calib, key, registry)
    frames, labels = load_frames(held, rcfg.eval_frames)
    plots: dict[str, Path] = {}
    results["targets"]["car"] = judge(registry, "car", car_pkg, frames, labels, rcfg, plots, work)
    report = write_report(registry.store, results["run"], results, work, plots)
    if register(
        registry,
        "car",
        car_pkg,
        results["targets"]["car"],
        results["train"],
        report,
        source=Path(fp32),
    ):
        results["promoted"] = ["car"]
    return car_pkg, report


def _summary(cfg: FlConfig, rounds: list[RoundLog], parent: str | None, link: ServerLink) -> dict[str, Any]:
    """The run in one flat dict (the report's ``federated`` line)."""
    return {
        "strategy": cfg.strategy,
        "compress": cfg.compress
        if not cfg.compress.startswith("topk")
        else f"{cfg.compress}@{cfg.ratio:g}/{cfg.exit_ratio:g}",
        "rounds": len(rounds),
        "rounds_applied": sum(r.applied for r in rounds),
        "cars": len({c for r in rounds for c in r.cars}),
        "updates_accepted": sum(len(r.accepted) for r in rounds),
        "updates_refused": sum(len(r.refused) for r in rounds),
        "updates_unauthenticated": sum(len(r.unauthenticated) for r in rounds),
        "failures": sum(len(r.failures) for r in rounds),
        "bytes_up": sum(r.bytes_up for r in rounds),
        "bytes_down": sum(r.bytes_down for r in rounds),
        "parent": parent,
        "tls": link.certificates is not None,
        "authenticated": link.trust is not None,
    }


def cli(args: Any) -> dict[str, Any]:
    """``edgepilot fl server``: one federated run, then push what passed the gate."""
    from cloud_trainer.registry import _open, _push
    from edgepilot.config import override
    from edgepilot.fl.link import server_link

    registry, prof = _open(args)
    link = server_link(
        override(
            prof.fl,
            listen=args.listen,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            client_keys=args.client_keys,
            insecure=True if args.insecure else None,
        )
    )
    rcfg = prof.cloud.retrain()
    cfg = FlConfig(
        rounds=args.rounds,
        cars=args.cars,
        min_cars=args.min_cars or args.cars,
        wait_s=args.wait,
        round_timeout_s=args.round_timeout,
        strategy=args.strategy,
        mu=args.mu,
        epochs=args.local_epochs,
        lr=args.lr,
        compress=args.compress,
        ratio=args.topk,
        exit_ratio=args.exit_topk,
        mutual=rcfg.warm_mutual,  # the cars fine-tune the current model: a warm run
        limits=UpdateLimits(max_norm=args.max_norm),
    )
    if args.eval_tracks is not None:
        rcfg.eval_tracks = [t for t in args.eval_tracks.split(",") if t]
    res = federated_run(
        registry,
        args.workdir,
        cfg,
        rcfg,
        link=link,
        init=args.init,
        reference=args.reference,
        key=args.key,
    )
    res["pushed"] = (
        bool(res["promoted"])
        and not args.no_push
        and _push(args, prof, registry, "car", rollback=False)
    )
    return res
