"""Clients of the spikingjelly-ff server: :class:`Client` (blocking) and :class:`AsyncClient`
(asyncio). Needs numpy, grpcio and protobuf only.

    from sjff_client import Client
    with Client("localhost:8001", token_file="token.txt") as c:
        r = c.infer(images)                 # images: [N, 784] float32 in [0, 1] or uint8 0..255
        r.label, r.scores, r.version        # [N] int64, [N, C] float32, learning version
        c.learn(images, labels)             # one on-line update -> LearnResult(version, log_odds)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from .codec import infer_parameter, parameter_value, response_arrays
from .pb import grpc_service_pb2 as pb
from .pb import grpc_service_pb2_grpc as pb_grpc
from .pb import learning_pb2 as lpb
from .pb import learning_pb2_grpc as lpb_grpc

__all__ = [
    "AsyncClient",
    "Client",
    "InferResult",
    "LearnResult",
    "RequestFailed",
    "build_infer_request",
    "build_learn_request",
    "make_channel",
    "outcome_unknown",
    "parse_infer_response",
]

DEFAULT_TARGET = "localhost:8001"
DEFAULT_MODEL = "mnist"
_MAX_MESSAGE = 64 * 1024 * 1024
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


class RequestFailed(Exception):
    """A request refused inside a stream (``code`` is the gRPC status name)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def outcome_unknown(self) -> bool:
        """See :func:`outcome_unknown`."""
        return self.code == "UNKNOWN"


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed ``learn`` may nevertheless have been applied: the server answers UNKNOWN
    only when a storage error struck and it could not undo the write. Check
    ``list_versions().current_version`` before retrying, or retry with ``expected_version``.
    Every other failure of a learn (UNAVAILABLE "not applied" included) applied nothing."""
    if isinstance(exc, RequestFailed):
        return exc.outcome_unknown
    code = getattr(exc, "code", None)
    return callable(code) and getattr(code(), "name", "") == "UNKNOWN"


@dataclass
class InferResult:
    """Outputs of one inference: ``outputs`` name -> array (``scores`` [N, C], ``label`` [N],
    ``probability`` [N, C], ...); ``version`` is the learning version that produced them."""

    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str
    version: int
    id: str = ""

    @property
    def scores(self) -> np.ndarray:
        return self.outputs["scores"]

    @property
    def label(self) -> np.ndarray:
        return self.outputs["label"]

    @property
    def probability(self) -> np.ndarray:
        return self.outputs["probability"]


@dataclass
class LearnResult:
    """An acknowledged (durable) update: the new learning ``version`` and the log-odds [N] of
    the samples before it."""

    version: int
    log_odds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    id: str = ""
    model_name: str = ""
    model_version: str = ""


# -- messages ---------------------------------------------------------------------------------


def _as_images(images: np.ndarray) -> np.ndarray:
    """``[N, D]`` (one image ``[D]`` becomes ``[1, D]``; ``[N, H, W]`` is flattened to ``[N, H*W]``)."""
    x = np.asarray(images)
    if x.ndim == 1:
        x = x[None]
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    return x


def build_infer_request(
    images: np.ndarray,
    model: str = DEFAULT_MODEL,
    version: str = "",
    *,
    outputs: Sequence[str] | None = None,
    parameters: dict | None = None,
    raw: bool = True,
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest for images ``[N, D]`` (uint8 0..255 is sent as UINT8, anything else as
    FP32 in [0, 1]); ``raw`` puts the data in raw_input_contents, else in typed contents."""
    x = _as_images(images)
    if x.dtype == np.uint8:
        datatype, data = "UINT8", np.ascontiguousarray(x)
    else:
        datatype, data = "FP32", np.ascontiguousarray(x, dtype="<f4")
    req = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    t = req.inputs.add(name="images", datatype=datatype, shape=data.shape)
    if raw:
        req.raw_input_contents.append(data.tobytes())
    elif datatype == "UINT8":
        t.contents.uint_contents.extend(data.ravel().tolist())
    else:
        t.contents.fp32_contents.extend(data.ravel().tolist())
    for name in outputs or ():
        req.outputs.add(name=name)
    for k, v in (parameters or {}).items():
        if v is not None:
            req.parameters[k].CopyFrom(infer_parameter(v))
    return req


def parse_infer_response(resp: pb.ModelInferResponse) -> InferResult:
    version = resp.parameters["sjff_version"] if "sjff_version" in resp.parameters else None
    return InferResult(
        response_arrays(resp),
        resp.model_name,
        resp.model_version,
        int(parameter_value(version) or 0) if version else 0,
        resp.id,
    )


def build_learn_request(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    positive: Sequence[bool] | np.ndarray | None = None,
    model: str = DEFAULT_MODEL,
    version: str = "",
    *,
    seed: int | None = None,
    eta: float | None = None,
    expected_version: int | None = None,
    request_id: str = "",
) -> lpb.LearnRequest:
    """A LearnRequest: images ``[N, D]`` (uint8 or float in [0, 1]), labels ``[N]``, and whether
    each label is the true one (default: all true)."""
    x = _as_images(images)
    labels = np.atleast_1d(np.asarray(labels, dtype=np.int64))
    if x.dtype == np.uint8:
        enc, data = lpb.IMAGE_ENCODING_UINT8, np.ascontiguousarray(x).tobytes()
    else:
        enc, data = lpb.IMAGE_ENCODING_FP32, np.ascontiguousarray(x, dtype="<f4").tobytes()
    req = lpb.LearnRequest(
        model_name=model, model_version=version, images=data, encoding=enc, labels=labels.tolist(), id=request_id
    )
    if positive is not None:
        req.positive.extend(np.atleast_1d(np.asarray(positive, dtype=bool)).tolist())
    if seed is not None:
        req.seed = int(seed)
    if eta is not None:
        req.eta = float(eta)
    if expected_version is not None:
        req.expected_version = int(expected_version)
    return req


def _learn_result(resp: lpb.LearnResponse) -> LearnResult:
    if resp.error_code:
        raise RequestFailed(_CODE_NAMES.get(resp.error_code, str(resp.error_code)), resp.error_message)
    return LearnResult(
        resp.version, np.asarray(resp.log_odds, dtype=np.float32), resp.id, resp.model_name, resp.model_version
    )


def _stream_infer_result(resp: pb.ModelStreamInferResponse) -> InferResult:
    if resp.error_message:
        code, _, message = resp.error_message.partition(": ")
        raise RequestFailed(code, message)
    return parse_infer_response(resp.infer_response)


# -- channels ---------------------------------------------------------------------------------


def _read(path: str | os.PathLike | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def _token(token: str | None, token_file: str | os.PathLike | None) -> str | None:
    if token:
        return token
    if token_file:
        lines = [
            ln.strip() for ln in Path(token_file).read_text().splitlines() if ln.strip() and not ln.startswith("#")
        ]
        return lines[0] if lines else None
    return os.environ.get("SJFF_TOKEN") or None


def make_channel(
    target: str = DEFAULT_TARGET,
    *,
    tls: bool = False,
    root_ca: str | os.PathLike | None = None,
    client_cert: str | os.PathLike | None = None,
    client_key: str | os.PathLike | None = None,
    server_name: str | None = None,
    asyncio: bool = False,
):
    """A gRPC channel (``grpc.aio`` if ``asyncio``); TLS if ``tls`` or any certificate is given
    (``client_cert`` + ``client_key`` for mutual TLS)."""
    options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    mod = grpc.aio if asyncio else grpc
    if tls or root_ca or client_cert:
        creds = grpc.ssl_channel_credentials(_read(root_ca), _read(client_key), _read(client_cert))
        return mod.secure_channel(target, creds, options=options)
    return mod.insecure_channel(target, options=options)


class _Base:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        model: str = DEFAULT_MODEL,
        token: str | None = None,
        token_file: str | os.PathLike | None = None,
        timeout: float | None = 30.0,
        token_for_inference: bool = False,
        channel=None,
        **tls,
    ) -> None:
        self.target = target
        self.model = model
        self.timeout = timeout
        tok = _token(token, token_file)
        self._metadata = (("authorization", f"Bearer {tok}"),) if tok else ()
        # the token goes only where it is needed: a server shares it with nobody else
        self._inference_metadata = self._metadata if token_for_inference else ()
        self.channel = channel if channel is not None else make_channel(target, asyncio=self._aio, **tls)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.learning = lpb_grpc.LearningStub(self.channel)

    _aio = False

    def _kw(self, timeout: float | None, *, token: bool = False) -> dict:
        """Call options: the token only for learning calls (``token``), or for every call if
        the client was made with ``token_for_inference``."""
        md = self._metadata if token else self._inference_metadata
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": md}

    def _infer_req(self, images, model, version, outputs, seed, steps, return_latent, typed, raw, request_id):
        params = {"seed": seed, "steps": steps, "return_latent": return_latent or None, "typed_output": typed or None}
        return build_infer_request(
            images, model or self.model, version, outputs=outputs, parameters=params, raw=raw, request_id=request_id
        )


class Client(_Base):
    """Blocking client. ``token``/``token_file`` (else ``$SJFF_TOKEN``) is sent with the Learning
    service's calls, and with inference calls too only if ``token_for_inference`` (for a server
    started with ``--protect-inference``); TLS keywords: ``tls``, ``root_ca``, ``client_cert``,
    ``client_key``, ``server_name``."""

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # inference
    def server_live(self, timeout: float | None = None) -> bool:
        return self.inference.ServerLive(pb.ServerLiveRequest(), **self._kw(timeout)).live

    def server_ready(self, timeout: float | None = None) -> bool:
        return self.inference.ServerReady(pb.ServerReadyRequest(), **self._kw(timeout)).ready

    def model_ready(self, model: str | None = None, version: str = "", timeout: float | None = None) -> bool:
        return self.inference.ModelReady(
            pb.ModelReadyRequest(name=model or self.model, version=version), **self._kw(timeout)
        ).ready

    def server_metadata(self, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return self.inference.ServerMetadata(pb.ServerMetadataRequest(), **self._kw(timeout))

    def model_metadata(
        self, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        return self.inference.ModelMetadata(
            pb.ModelMetadataRequest(name=model or self.model, version=version), **self._kw(timeout)
        )

    def infer(
        self,
        images: np.ndarray,
        *,
        model: str | None = None,
        version: str = "",
        outputs: Sequence[str] | None = None,
        seed: int | None = None,
        steps: int | None = None,
        return_latent: bool = False,
        typed: bool = False,
        raw: bool = True,
        request_id: str = "",
        timeout: float | None = None,
    ) -> InferResult:
        """Infer images ``[N, D]``; ``typed`` asks for typed output contents, ``raw=False``
        sends typed input contents."""
        req = self._infer_req(images, model, version, outputs, seed, steps, return_latent, typed, raw, request_id)
        return parse_infer_response(self.inference.ModelInfer(req, **self._kw(timeout)))

    def infer_stream(
        self,
        batches: Iterable[np.ndarray],
        *,
        model: str | None = None,
        version: str = "",
        timeout: float | None = None,
    ) -> Iterator[InferResult]:
        """ModelStreamInfer: one result per batch, in order (a refused one raises RequestFailed)."""
        reqs = (build_infer_request(b, model or self.model, version, request_id=str(i)) for i, b in enumerate(batches))
        for resp in self.inference.ModelStreamInfer(reqs, **self._kw(timeout)):
            yield _stream_infer_result(resp)

    # learning
    def learn(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        positive: Sequence[bool] | np.ndarray | None = None,
        *,
        model: str | None = None,
        version: str = "",
        seed: int | None = None,
        eta: float | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> LearnResult:
        """One durable on-line update from images ``[N, D]`` with ``labels`` ``[N]``."""
        req = build_learn_request(
            images,
            labels,
            positive,
            model or self.model,
            version,
            seed=seed,
            eta=eta,
            expected_version=expected_version,
        )
        return _learn_result(self.learning.Learn(req, **self._kw(timeout, token=True)))

    def learn_stream(
        self, samples: Iterable[tuple], *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> Iterator[LearnResult | RequestFailed]:
        """LearnStream over ``(images, labels[, positive])`` tuples; yields a LearnResult per
        sample or the RequestFailed of a refused one (the stream goes on)."""
        reqs = (
            build_learn_request(*s, model=model or self.model, version=version, request_id=str(i))
            for i, s in enumerate(samples)
        )
        for resp in self.learning.LearnStream(reqs, **self._kw(timeout, token=True)):
            try:
                yield _learn_result(resp)
            except RequestFailed as exc:
                yield exc

    def snapshot(
        self, *, model: str | None = None, version: str = "", export: bool = False, timeout: float | None = None
    ) -> lpb.SnapshotResponse:
        req = lpb.SnapshotRequest(model_name=model or self.model, model_version=version, export_artifact=export)
        return self.learning.Snapshot(req, **self._kw(timeout, token=True))

    def list_versions(
        self, *, model: str | None = None, version: str = "", limit: int = 100, timeout: float | None = None
    ) -> lpb.ListVersionsResponse:
        req = lpb.ListVersionsRequest(model_name=model or self.model, model_version=version, limit=limit)
        return self.learning.ListVersions(req, **self._kw(timeout, token=True))

    def rollback(
        self, to_version: int, *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> lpb.RollbackResponse:
        req = lpb.RollbackRequest(model_name=model or self.model, model_version=version, version=to_version)
        return self.learning.Rollback(req, **self._kw(timeout, token=True))

    def stats(self, *, model: str = "", version: str = "", timeout: float | None = None) -> lpb.GetStatsResponse:
        req = lpb.GetStatsRequest(model_name=model, model_version=version)
        return self.learning.GetStats(req, **self._kw(timeout, token=True))


class AsyncClient(_Base):
    """asyncio client (``grpc.aio``); same methods as :class:`Client`, as coroutines."""

    _aio = True

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def server_live(self, timeout: float | None = None) -> bool:
        return (await self.inference.ServerLive(pb.ServerLiveRequest(), **self._kw(timeout))).live

    async def server_ready(self, timeout: float | None = None) -> bool:
        return (await self.inference.ServerReady(pb.ServerReadyRequest(), **self._kw(timeout))).ready

    async def model_ready(self, model: str | None = None, version: str = "", timeout: float | None = None) -> bool:
        return (
            await self.inference.ModelReady(
                pb.ModelReadyRequest(name=model or self.model, version=version), **self._kw(timeout)
            )
        ).ready

    async def model_metadata(
        self, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        return await self.inference.ModelMetadata(
            pb.ModelMetadataRequest(name=model or self.model, version=version), **self._kw(timeout)
        )

    async def infer(
        self,
        images: np.ndarray,
        *,
        model: str | None = None,
        version: str = "",
        outputs: Sequence[str] | None = None,
        seed: int | None = None,
        steps: int | None = None,
        return_latent: bool = False,
        typed: bool = False,
        raw: bool = True,
        request_id: str = "",
        timeout: float | None = None,
    ) -> InferResult:
        req = self._infer_req(images, model, version, outputs, seed, steps, return_latent, typed, raw, request_id)
        return parse_infer_response(await self.inference.ModelInfer(req, **self._kw(timeout)))

    async def infer_stream(
        self,
        batches: AsyncIterable[np.ndarray] | Iterable[np.ndarray],
        *,
        model: str | None = None,
        version: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[InferResult]:
        async def reqs():
            i = 0
            if hasattr(batches, "__aiter__"):
                async for b in batches:
                    yield build_infer_request(b, model or self.model, version, request_id=str(i))
                    i += 1
            else:
                for b in batches:
                    yield build_infer_request(b, model or self.model, version, request_id=str(i))
                    i += 1

        async for resp in self.inference.ModelStreamInfer(reqs(), **self._kw(timeout)):
            yield _stream_infer_result(resp)

    async def learn(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        positive: Sequence[bool] | np.ndarray | None = None,
        *,
        model: str | None = None,
        version: str = "",
        seed: int | None = None,
        eta: float | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> LearnResult:
        req = build_learn_request(
            images,
            labels,
            positive,
            model or self.model,
            version,
            seed=seed,
            eta=eta,
            expected_version=expected_version,
        )
        return _learn_result(await self.learning.Learn(req, **self._kw(timeout, token=True)))

    async def learn_stream(
        self, samples: Iterable[tuple], *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> AsyncIterator[LearnResult | RequestFailed]:
        reqs = [
            build_learn_request(*s, model=model or self.model, version=version, request_id=str(i))
            for i, s in enumerate(samples)
        ]
        async for resp in self.learning.LearnStream(iter(reqs), **self._kw(timeout, token=True)):
            try:
                yield _learn_result(resp)
            except RequestFailed as exc:
                yield exc

    async def snapshot(
        self, *, model: str | None = None, version: str = "", export: bool = False, timeout: float | None = None
    ):
        req = lpb.SnapshotRequest(model_name=model or self.model, model_version=version, export_artifact=export)
        return await self.learning.Snapshot(req, **self._kw(timeout, token=True))

    async def list_versions(
        self, *, model: str | None = None, version: str = "", limit: int = 100, timeout: float | None = None
    ):
        req = lpb.ListVersionsRequest(model_name=model or self.model, model_version=version, limit=limit)
        return await self.learning.ListVersions(req, **self._kw(timeout, token=True))

    async def rollback(
        self, to_version: int, *, model: str | None = None, version: str = "", timeout: float | None = None
    ):
        req = lpb.RollbackRequest(model_name=model or self.model, model_version=version, version=to_version)
        return await self.learning.Rollback(req, **self._kw(timeout, token=True))

    async def stats(self, *, model: str = "", version: str = "", timeout: float | None = None):
        return await self.learning.GetStats(
            lpb.GetStatsRequest(model_name=model, model_version=version), **self._kw(timeout, token=True)
        )
