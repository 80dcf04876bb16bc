"""``spikingjelly_ff.v1.Learning``: on-line learning and its admin calls (all need the token)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

import grpc
from sjff_client.pb import learning_pb2 as lpb
from sjff_client.pb import learning_pb2_grpc as lpb_grpc

from ..auth import Authenticator
from ..errors import InvalidInput, PreconditionFailed
from ..metrics import Metrics
from ..serving.models import ModelRegistry, ServedModel
from .registration import Malformed
from .rpc import RpcService, deadline_of
from .validation import check_request_id, decode_learn

__all__ = ["LearningService"]


class LearningService(lpb_grpc.LearningServicer, RpcService):
    """Learning calls for every model of a :class:`ModelRegistry` that has a learner."""

    log = logging.getLogger("sjff_server.learning")

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        auth: Authenticator,
        *,
        max_samples: int = 1024,
        max_eta: float = 1000.0,
        stream_window: int = 64,
    ) -> None:
        if auth is None:  # the learning calls change weights: never served without a token
            raise ValueError("LearningService needs an Authenticator (learning is never open)")
        self.registry = registry
        self.metrics = metrics
        self.auth = auth
        self.max_samples = max_samples
        self.max_eta = max_eta
        self.stream_window = stream_window
        self._open = 0  # Learn, Rollback and Snapshot calls not yet ended (their status sent)
        self._none_open = asyncio.Event()
        self._none_open.set()

    def _track(self, context: grpc.aio.ServicerContext) -> None:
        """Count a call that changes the state until gRPC has ended it (its answer sent)."""
        self._open += 1
        self._none_open.clear()
        context.add_done_callback(self._ended)

    def _ended(self, _context) -> None:
        self._open -= 1
        if not self._open:
            self._none_open.set()

    async def calls_ended(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` s) until every Learn, Rollback and Snapshot call has ended:
        at a shutdown, once the learners have answered them, so that the server's stop cuts
        none off before its answer is sent. False if some are still open then."""
        try:
            await asyncio.wait_for(self._none_open.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _learner_of(self, name: str, version: str) -> ServedModel:
        served = self.registry.get(name, version)
        if served.learner is None:
            raise PreconditionFailed(
                f"learning is disabled for {served.name}/{served.version} (start the server with --state-dir, "
                'and leave "learning" true in the model\'s config.json)',
            )
        return served

    # -- learning ----------------------------------------------------------------------------

    async def _learn(self, request: lpb.LearnRequest, deadline: float | None) -> lpb.LearnResponse:
        if type(request) is Malformed:  # in a stream (unary calls are answered before)
            raise InvalidInput(request.message)
        served = self._learner_of(request.model_name, request.model_version)
        update = decode_learn(request, served, self.max_samples, self.max_eta)
        request_id = check_request_id(request.request_id)
        version, log_odds = await served.learner.learn(update, deadline, request_id=request_id)
        return lpb.LearnResponse(
            version=version,
            log_odds=log_odds.tolist(),
            id=request.id,
            model_name=served.name,
            model_version=served.version,
        )

    async def Learn(self, request: lpb.LearnRequest, context: grpc.aio.ServicerContext) -> lpb.LearnResponse:
        self._track(context)
        return await self._unary("Learn", context, lambda: self._learn(request, deadline_of(context)))

    async def _stream_one(self, request: lpb.LearnRequest, deadline: float | None) -> lpb.LearnResponse:
        def error(status: grpc.StatusCode, message: str) -> lpb.LearnResponse:
            ok = type(request) is not Malformed
            return lpb.LearnResponse(
                id=request.id if ok else "",
                error_code=status.value[0],
                error_message=message,
                model_name=request.model_name if ok else "",
            )

        return await self._item("LearnStream.item", lambda: self._learn(request, deadline), error)

    async def LearnStream(
        self, request_iterator: AsyncIterator[lpb.LearnRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lpb.LearnResponse]:
        # grpc.aio runs only async generator functions as stream handlers on the loop
        async for response in self._answer("LearnStream", request_iterator, context):
            yield response

    # -- admin ---------------------------------------------------------------------------------

    async def Snapshot(self, request: lpb.SnapshotRequest, context: grpc.aio.ServicerContext) -> lpb.SnapshotResponse:
        self._track(context)

        async def run():
            served = self._learner_of(request.model_name, request.model_version)
            info, exported = await served.learner.snapshot(request.export_artifact)
            return lpb.SnapshotResponse(
                version=info.version, path=str(info.path), artifact_path=str(exported or ""), bytes=info.bytes
            )

        return await self._unary("Snapshot", context, run)

    async def ListVersions(
        self, request: lpb.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> lpb.ListVersionsResponse:
        async def run():
            served = self._learner_of(request.model_name, request.model_version)
            learner = served.learner
            limit = min(int(request.limit or 100), 10000)
            resp = lpb.ListVersionsResponse(
                current_version=learner.published.version, oldest_restorable=learner.oldest_restorable()
            )
            for s in learner.snapshots.list():
                resp.snapshots.add(version=s.version, created=s.created, bytes=s.bytes)
            for version, kind, created, samples, restored in list(learner.history)[-limit:]:
                resp.history.add(
                    version=version, kind=kind, created=created, samples=samples, restored_version=restored
                )
            return resp

        return await self._unary("ListVersions", context, run)

    async def Rollback(self, request: lpb.RollbackRequest, context: grpc.aio.ServicerContext) -> lpb.RollbackResponse:
        self._track(context)

        async def run():
            served = self._learner_of(request.model_name, request.model_version)
            new, restored = await served.learner.rollback(request.version)
            self.log.info(
                "rollback",
                extra={"model": served.name, "version": served.version, "restored": restored, "new_version": new},
            )
            return lpb.RollbackResponse(version=new, restored_version=restored)

        return await self._unary("Rollback", context, run)

    async def GetStats(self, request: lpb.GetStatsRequest, context: grpc.aio.ServicerContext) -> lpb.GetStatsResponse:
        async def run():
            if request.model_name:
                models = [self.registry.get(request.model_name, request.model_version)]
            else:
                models = self.registry.all()
            resp = lpb.GetStatsResponse()
            for m in models:
                s = resp.models.add(
                    model_name=m.name,
                    model_version=m.version,
                    kind=m.kind,
                    learning_version=m.published.version,
                    inferences=m.inferences,
                )
                digest_version, s.weights_sha256 = await asyncio.to_thread(m.weights_digest)
                s.learning_version = digest_version  # the version the digest belongs to
                learner = m.learner
                s.learning_enabled = learner is not None
                if learner is None:
                    continue
                st = learner.stats
                acc, n = st.online_accuracy()
                s.updates_accepted = st.accepted
                s.updates_refused = st.refused
                s.samples_learned = st.samples
                s.snapshot_version = learner.last_snapshot
                s.log_bytes = learner.log.size_bytes()
                s.last_update = st.last_update
                s.mean_group_size = st.mean_group_size()
                s.online_accuracy = 0.0 if math.isnan(acc) else acc
                s.online_samples = n
                s.learning_error = learner.failed or ""
            return resp

        return await self._unary("GetStats", context, run)
