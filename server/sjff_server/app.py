"""Assemble and run the server: repository, services, health, reflection, TLS, metrics, shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from sjff_client.pb import grpc_service_pb2, learning_pb2

from . import GRPC_EXPERIMENTS_IN_FORCE
from .auth import Authenticator
from .interrupt import WorkerPool
from .learning.options import LearnOptions
from .learning.replica_options import ReplicationOptions
from .metrics import Metrics
from .protocol.inference_service import InferenceService, ServerState
from .protocol.learning_service import LearningService
from .protocol.registration import add_service
from .serving.models import ModelRegistry, load_served_model
from .serving.repository import scan_repository
from .storage.scan import LogCorruption
from .storage.snapshots import StateInUse
from .storage.state import ReplayMismatch, StateMismatch, StateUnreadable, file_sha256
from .tuning import yield_grpc_poller

__all__ = ["ServerConfig", "ServerApp", "check_port_sharing"]

#: seconds the server's stop waits at least for calls in flight after the learners have
#: answered theirs (a LearnStream's last in-band answers; --shutdown-grace 0 included)
ANSWER_GRACE_S = 1.0
#: the bound of the wait for the Learn, Rollback and Snapshot calls the learners answered to
#: end (their answers sent), against a peer that never reads its answer
ANSWERED_WAIT_S = 30.0

log = logging.getLogger("sjff_server")

_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
LEARNING_SERVICE = learning_pb2.DESCRIPTOR.services_by_name["Learning"].full_name


@dataclass
class ServerConfig:
    """Everything ``sjff serve`` can set (see ``sjff serve --help`` for meanings)."""

    model_repository: Path
    host: str = "0.0.0.0"  # noqa: S104 - a server listens on all interfaces unless told otherwise
    port: int = 8001
    metrics_port: int | None = 8002
    metrics_host: str = "0.0.0.0"  # noqa: S104
    health_port: int | None = None
    reuse_port: bool = False  # SO_REUSEPORT on the gRPC port (several processes on one port)
    state_dir: Path | None = None
    token_file: Path | None = None
    token_env: str | None = "SJFF_TOKEN"  # noqa: S105 - the name of a variable, not a token
    protect_inference: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int | None = 1024
    max_request_rows: int = 4096
    max_inflight_mb: int = 256
    max_inline_mmacs: int = 16
    max_learn_samples: int = 1024
    max_eta: float = 1000.0
    ort_threads: int = 1
    batch_window_us: int = 4000
    workers: int = 1
    learn: LearnOptions = field(default_factory=LearnOptions)
    #: ``redis://HOST:PORT/DB`` (or ``rediss://``): learning replicated through Redis streams
    replication: str | None = None
    replication_password_file: Path | None = None
    replication_ca: Path | None = None
    replication_cert: Path | None = None
    replication_key: Path | None = None
    replica: ReplicationOptions | None = None  # set with ``replication``
    shutdown_grace_s: float = 10.0
    skip_bad_models: bool = False
    ready_file: Path | None = None
    version: str = ""


def check_port_sharing(cfg: ServerConfig) -> None:
    """Processes may share a port (``reuse_port``) only where that cannot split the learning
    state: ValueError otherwise."""
    if not cfg.reuse_port:
        return
    if cfg.port == 0:
        raise ValueError("--reuse-port needs a fixed --port (the processes sharing it must all name it)")
    if cfg.state_dir is not None and not cfg.replication:
        raise ValueError(
            "--reuse-port with --state-dir needs --replication: processes sharing a port must learn through "
            "one log (the Redis stream); each with its own local log would learn apart from the others"
        )


class ServerApp:
    """One running server. ``await start()``, then ``await stop()`` (drains, snapshots)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.state = ServerState()
        self.metrics = Metrics(config.version)
        self.registry = ModelRegistry()
        self.pool = WorkerPool(config.workers, "sjff-infer")
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.learning: LearningService | None = None
        self.health = health.aio.HealthServicer()
        self.port: int = 0
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        self.auth = Authenticator(config.token_file, config.token_env)
        self.redis = None  # the replication client (--replication)
        self._durability: asyncio.Task | None = None
        self._stopped = asyncio.Event()

    # -- startup ---------------------------------------------------------------------------------

    async def _load_models(self) -> None:
        cfg = self.config
        specs, problems = scan_repository(cfg.model_repository)
        for p in problems:
            log.warning("repository entry skipped", extra={"problem": p})
        if not specs:
            raise RuntimeError(
                f"no servable model in {cfg.model_repository} (expected <model>/<version>/model.onnx|model.nir)"
            )
        for spec in specs:
            t0 = time.perf_counter()
            try:
                served, notes = await asyncio.to_thread(
                    load_served_model,
                    spec,
                    state_dir=None if self.redis is not None else cfg.state_dir,
                    ort_threads=cfg.ort_threads,
                    learn_options=cfg.learn,
                    pool=self.pool,
                    metrics=self.metrics,
                    busy_delay_s=cfg.batch_window_us / 1e6,
                    max_inline_macs=cfg.max_inline_mmacs * 1_000_000,
                    max_inflight_bytes=cfg.max_inflight_mb << 20,
                )
            except (LogCorruption, ReplayMismatch, StateMismatch, StateInUse, StateUnreadable) as exc:
                # damaged or foreign learning state: this model refuses to load, the rest is served
                log.error(
                    "model not loaded: its learning state needs an operator",
                    extra={"model": spec.name, "version": spec.version, "error": str(exc)},
                )
                self.registry.mark_unavailable(spec.name, spec.version, str(exc))
                self.metrics.state_damaged.labels(spec.name, spec.version).set(1)
                continue
            except Exception as exc:
                if not cfg.skip_bad_models:
                    raise RuntimeError(f"cannot load {spec.name}/{spec.version} from {spec.path}: {exc}") from exc
                log.error("model not loaded", extra={"model": spec.name, "version": spec.version, "error": str(exc)})
                continue
            for note in notes:
                log.info(note, extra={"model": spec.name, "version": spec.version})
            if (warning := served.budget_note()) is not None:
                log.warning(warning, extra={"model": spec.name, "version": spec.version})
            if self.redis is not None and spec.config.learning:
                served.learner = replicated_learner(served, self.redis, cfg.replica, self.metrics)
            self.registry.add(served)
            self.metrics.inflight_bytes.labels(spec.name, spec.version).set_function(
                lambda b=served.batcher: b.held_bytes
            )
            self.metrics.ready.labels(spec.name, spec.version).set(1)
            log.info(
                "model loaded",
                extra={
                    "model": spec.name,
                    "version": spec.version,
                    "kind": served.kind,
                    "learning": served.learner is not None,
                    "learning_version": served.published.version,
                    "max_batch": served.batcher.max_batch,
                    "inline_rows": served.batcher.inline_rows,  # larger batches run off the event loop
                    "seconds": round(time.perf_counter() - t0, 3),
                },
            )
        if not self.registry.all():
            damaged = "; ".join(f"{n}/{v}: {why}" for (n, v), why in self.registry.unavailable.items())
            raise RuntimeError("no model could be loaded" + (f" ({damaged})" if damaged else ""))

    def _credentials(self) -> grpc.ServerCredentials | None:
        cfg = self.config
        if not cfg.tls_cert and not cfg.tls_key:
            if cfg.tls_client_ca:
                raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if not (cfg.tls_cert and cfg.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        key, cert = Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes()
        ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)

    def _options(self) -> list[tuple[str, object]]:
        n = self.config.max_message_bytes
        return [
            ("grpc.max_receive_message_length", n),
            ("grpc.max_send_message_length", n),
            ("grpc.so_reuseport", 1 if self.config.reuse_port else 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10000),
            # BDP probing grows each stream's flow-control window with the measured bandwidth:
            # a client flooding streams then parks gigabytes in gRPC's buffers, out of reach of
            # --max-inflight-mb (docs/server.md, Errors and limits)
            ("grpc.http2.bdp_probe", 0),
        ]

    async def start(self) -> None:
        cfg = self.config
        check_port_sharing(self.config)
        creds = self._credentials()
        if cfg.replication:
            self.redis = await connect_replication(cfg)
            self._durability = asyncio.create_task(log_durability(self.redis, cfg.replication))
        learns = cfg.state_dir is not None or self.redis is not None
        if learns and not self.auth.enabled:
            log.warning(
                "learning is enabled but no token is configured: every Learning call will be refused "
                "(set --token-file or $SJFF_TOKEN)"
            )
        if self.auth.enabled and creds is None:
            log.warning(
                "tokens are configured without TLS: they travel in clear text "
                "(set --tls-cert and --tls-key, or terminate TLS in front of the server)",
                extra={"host": cfg.host},
            )
        if cfg.protect_inference and not self.auth.enabled:
            raise ValueError("--protect-inference needs a token (--token-file or the --token-env variable)")
        await self._load_models()

        self.server = grpc.aio.server(options=self._options(), maximum_concurrent_rpcs=cfg.max_concurrent_rpcs)
        inference = InferenceService(
            self.registry,
            self.state,
            self.metrics,
            auth=self.auth if cfg.protect_inference else None,
            max_rows=cfg.max_request_rows,
            version=cfg.version,
            max_answer_bytes=cfg.max_message_bytes,
        )
        learning = self.learning = LearningService(
            self.registry, self.metrics, self.auth, max_samples=cfg.max_learn_samples, max_eta=cfg.max_eta
        )
        self.metrics.waiting.set_function(lambda: inference.active)
        add_service(self.server, inference, grpc_service_pb2, "GRPCInferenceService")
        add_service(self.server, learning, learning_pb2, "Learning")
        add_service(self.server, self.health, health_pb2, "Health", in_band=False)
        names = (
            INFERENCE_SERVICE,
            LEARNING_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflector = reflection.aio.ReflectionServicer(names)
        add_service(self.server, reflector, reflection_pb2, "ServerReflection", in_band=False)
        if cfg.metrics_port is not None:  # before the gRPC port, which a process sharing it must not join in vain
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
            except OSError as exc:
                raise OSError(
                    f"cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: {exc.strerror or exc} "
                    "(processes sharing a port each need their own --metrics-port, or 0 for any free one)"
                ) from exc
        address = f"{cfg.host}:{cfg.port}"
        try:
            self.port = self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        except RuntimeError as exc:  # gRPC's "Failed to bind" gives no reason
            causes = "the address is not local, the port is privileged or taken"
            if creds is not None:
                causes += ", or the TLS certificate or key is not valid"
            raise RuntimeError(
                f"cannot listen on {address}: {causes} (processes may share a port only when every one of them "
                f"runs with --reuse-port, as the same user). gRPC: {exc}"
            ) from exc
        if not self.port:
            raise RuntimeError(f"cannot listen on {address}")
        if cfg.health_port is not None:
            # plaintext health only, for probes that cannot speak (m)TLS
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            add_service(self.health_server, self.health, health_pb2, "Health", in_band=False)
            self.health_port = self.health_server.add_insecure_port(f"{cfg.host}:{cfg.health_port}")
            await self.health_server.start()
        for m in self.registry.all():  # before the first call can arrive
            if m.learner is not None:
                m.learner.on_failed = self._learning_failed
                if hasattr(m.learner, "on_serving"):  # replicated: NOT_SERVING until caught up
                    await self.health.set(f"{m.name}/{m.version}", _NOT_SERVING)
                    m.learner.on_serving = self._model_serving
                await m.learner.start()
        await self.server.start()
        batch_poller = yield_grpc_poller()  # one CPU: the poller waits for the event loop (tuning.py)
        learning_ok = all(m.learner is None or m.learner.failed is None for m in self.registry.all())
        for service in ("", INFERENCE_SERVICE, LEARNING_SERVICE):
            ok = learning_ok or service != LEARNING_SERVICE
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING if ok else _NOT_SERVING)
        self.state.ready = True
        info = {
            "port": self.port,
            "metrics_port": self.metrics_port,
            "health_port": self.health_port,
            "tls": creds is not None,
            "mtls": bool(cfg.tls_client_ca),
            "models": [f"{m.name}/{m.version}" for m in self.registry.all()],
            "learning": learns,
            "replication": self.redis is not None,
            "pid": os.getpid(),
            "grpc_experiments": GRPC_EXPERIMENTS_IN_FORCE,  # "": gRPC's defaults (tuning.grpc_experiments)
            "grpc_poller_batch": batch_poller,  # thread ids put under SCHED_BATCH (none: all as they were)
        }
        log.info("server ready", extra=info)
        if cfg.ready_file is not None:
            tmp = Path(f"{cfg.ready_file}.part")
            tmp.write_text(json.dumps(info))
            tmp.replace(cfg.ready_file)

    def _learning_failed(self, learner) -> None:
        """A learner stopped (storage or internal error): health says so for the Learning service."""
        if not self._stopped.is_set():
            asyncio.ensure_future(self.health.set(LEARNING_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING))

    def _model_serving(self, learner, ok: bool) -> None:
        """A replicated model started or stopped serving here (caught up, or lagging/diverged):
        health of the service ``<model>/<version>`` says so."""
        if not self._stopped.is_set():
            status = health_pb2.HealthCheckResponse.SERVING if ok else _NOT_SERVING
            asyncio.ensure_future(self.health.set(f"{learner.name}/{learner.repo_version}", status))

    # -- shutdown --------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Answer the learners' queued calls, stop accepting calls, drain those in flight (all
        within the grace period), let the learners write final snapshots."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        t0 = time.perf_counter()
        log.info("shutting down", extra={"grace_s": self.config.shutdown_grace_s})
        self.state.ready = False
        await self.health.enter_graceful_shutdown()
        # the learners first, while every call is still open: new Learn, Rollback and Snapshot
        # calls are refused and the queued ones answered. The server's stop cancels the calls
        # still open when the grace ends, and a call cancelled while its update was being
        # written would be applied though its caller was told it failed.
        grace = self.config.shutdown_grace_s
        learners = [m.learner for m in self.registry.all() if m.learner is not None]
        await asyncio.gather(*(learner.quiesce(grace) for learner in learners))
        if self.learning is not None and not await self.learning.calls_ended(ANSWERED_WAIT_S):
            log.warning("learning calls still open after their answers", extra={"waited_s": ANSWERED_WAIT_S})
        if self.server is not None:
            await self.server.stop(max(ANSWER_GRACE_S, grace - (time.perf_counter() - t0)))
        for m in self.registry.all():
            if m.learner is not None:
                await m.learner.close(final_snapshot=True)
                log.info(
                    "learning state saved",
                    extra={"model": m.name, "version": m.version, "learning_version": m.published.version},
                )
        if self._durability is not None:
            self._durability.cancel()
        if self.redis is not None:
            await self.redis.aclose()
        if self.health_server is not None:
            await self.health_server.stop(0)
        self.pool.close()
        self.metrics.close()
        log.info("stopped", extra={"seconds": round(time.perf_counter() - t0, 3)})

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def connect_replication(cfg: ServerConfig):
    """The Redis client of ``--replication``. Redis not answering does not stop the start: the
    replicated models report NOT_SERVING and their apply tasks retry until it answers (what a
    rolling update wants); bad URLs, files or credentials do. Durability warnings are logged
    once Redis answers."""
    from .errors import Unavailable
    from .replication.redis_conn import CredentialsRefused, connect, redact

    if cfg.replica is None:
        raise ValueError("--replication needs replication options (ServerConfig.replica)")
    kw = {"ca": cfg.replication_ca, "cert": cfg.replication_cert, "key": cfg.replication_key}
    where = {"redis": redact(cfg.replication), "replica": cfg.replica.replica_id}
    try:
        client = await connect(cfg.replication, cfg.replication_password_file, **kw)
    except CredentialsRefused as exc:
        raise RuntimeError(str(exc)) from None
    except Unavailable as exc:
        msg = "Redis unreachable at startup: replicated models NOT_SERVING until it answers"
        log.error(msg, extra={**where, "error": str(exc)})
        client = await connect(cfg.replication, cfg.replication_password_file, ping=False, **kw)
    else:
        log.info("replication connected", extra=where)
    return client


async def log_durability(client, url: str) -> None:
    """Log the Redis durability warnings once Redis answers (retrying while it does not)."""
    from .errors import Unavailable
    from .replication.redis_conn import check_durability, redact

    delay = 0.5
    while True:
        try:
            warnings = await check_durability(client)
            break
        except Unavailable:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    for warning in warnings:
        log.warning(warning, extra={"redis": redact(url)})


def replicated_learner(served, redis, options: ReplicationOptions, metrics):
    """The learner of ``served`` following its Redis stream from the artefact's weights (the
    stream refuses a replica whose model file differs from the one it started from)."""
    from .learning.replicated import ReplicatedLearner

    model = served.published.model  # the artefact (version 0): the stream starts from it
    # the bytes the served model was parsed from (the file may have been replaced since)
    sha = model.source_sha256 or artifact_sha256(Path(served.spec.path))
    return ReplicatedLearner(
        served.name, served.version, served.engine, model, redis, options, metrics, artifact_sha256=sha
    )


def artifact_sha256(path: Path) -> str:
    """sha256 of a model file (of a directory: of its files' names and contents, sorted)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()
