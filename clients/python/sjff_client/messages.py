"""Messages of the spikingjelly-ff protocols and their results, with numpy only: requests built
from arrays (:func:`build_infer_request`, :func:`build_learn_request`) and the request of every
other client method (``*_request``: the model already named), responses turned into
:class:`InferResult` / :class:`LearnResult`, and :class:`RequestFailed` for a refused request
inside a stream. Both clients (``client.py``) use these; so can any other gRPC stack.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio
import numpy as np

from .codec import infer_parameter, parameter_value, response_arrays
from .pb import grpc_service_pb2 as pb
from .pb import learning_pb2 as lpb

__all__ = [
    "DEFAULT_MODEL",
    "InferResult",
    "LearnResult",
    "RequestFailed",
    "build_infer_request",
    "build_learn_request",
    "infer_parameters",
    "learn_result",
    "list_versions_request",
    "model_metadata_request",
    "model_ready_request",
    "outcome_unknown",
    "parse_infer_response",
    "rollback_request",
    "snapshot_request",
    "stats_request",
    "stream_infer_request",
    "stream_infer_result",
    "stream_learn_request",
]

DEFAULT_MODEL = "mnist"
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


class RequestFailed(Exception):
    """A request refused inside a stream (``code`` is the gRPC status name; ``request_id``: the
    idempotency key of a refused learn, to retry one whose outcome is unknown with it)."""

    def __init__(self, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    @property
    def outcome_unknown(self) -> bool:
        """See :func:`outcome_unknown`."""
        return self.code == "UNKNOWN"


def outcome_unknown(exc: BaseException) -> bool:
    """Whether the server said a failed ``learn`` may nevertheless have been applied: it answers
    UNKNOWN only when a storage error struck and it could not undo the write. Retry with the
    same ``request_id`` once the server is back (its restart reads what reached the log), or
    check ``list_versions().current_version`` first.
    Every other failure the server answered (UNAVAILABLE "not applied" included) applied
    nothing. A call cut off before the server's answer (the client's own deadline, a broken
    connection: DEADLINE_EXCEEDED or UNAVAILABLE raised by gRPC itself) may have been applied
    too, and is not told apart here: retry it with its ``request_id``, which the server applies
    once while it remembers the id (``--idempotency-window-s``)."""
    if isinstance(exc, RequestFailed):
        return exc.outcome_unknown
    # a failed call raises an error that is also its grpc.Call (sync) or an AioRpcError (asyncio)
    return isinstance(exc, grpc.Call | grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNKNOWN


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
    the samples before it; ``request_id``: the idempotency key it was sent with."""

    version: int
    log_odds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    id: str = ""
    model_name: str = ""
    model_version: str = ""
    request_id: str = ""


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
    """A ModelInferResponse as arrays, with the learning version that produced them."""
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
    id: str = "",
    request_id: str = "",
) -> lpb.LearnRequest:
    """A LearnRequest: images ``[N, D]`` (uint8 or float in [0, 1]), labels ``[N]``, and whether
    each label is the true one (default: all true). ``id`` is echoed in the answer;
    ``request_id`` is the idempotency key (the server applies a key once)."""
    x = _as_images(images)
    labels = np.atleast_1d(np.asarray(labels, dtype=np.int64))
    if x.dtype == np.uint8:
        enc, data = lpb.IMAGE_ENCODING_UINT8, np.ascontiguousarray(x).tobytes()
    else:
        enc, data = lpb.IMAGE_ENCODING_FP32, np.ascontiguousarray(x, dtype="<f4").tobytes()
    req = lpb.LearnRequest(
        model_name=model,
        model_version=version,
        images=data,
        encoding=enc,
        labels=labels.tolist(),
        id=id,
        request_id=request_id,
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


def infer_parameters(
    seed: int | None = None,
    steps: int | None = None,
    return_latent: bool = False,
    typed: bool = False,
    min_version: int | None = None,
) -> dict[str, int | bool | None]:
    """The request parameters of the inference options (None is left out: the server's default);
    ``min_version`` (int64): the lowest learning version the answer may come from."""
    if min_version is not None and not 0 <= int(min_version) < 2**63:
        raise ValueError(f"min_version must be in [0, 2**63), got {min_version}")
    return {
        "seed": seed,
        "steps": steps,
        "return_latent": return_latent or None,
        "typed_output": typed or None,
        "min_version": None if min_version is None else int(min_version),
    }


def stream_infer_request(i: int, images: np.ndarray, model: str, version: str) -> pb.ModelInferRequest:
    """Request ``i`` of a ModelStreamInfer stream (its id is ``i``, to match answers to batches)."""
    return build_infer_request(images, model, version, request_id=str(i))


def stream_learn_request(i: int, sample: tuple, model: str, version: str) -> lpb.LearnRequest:
    """Request ``i`` of a LearnStream (its id is ``i``); ``sample``: ``(images, labels[, positive[,
    request_id]])``, without a request_id (or an empty one) a fresh uuid4."""
    if not 2 <= len(sample) <= 4:
        raise ValueError(f"a sample is (images, labels[, positive[, request_id]]), got {len(sample)} items")
    images, labels, positive, request_id = (*sample, None, None)[:4]
    return build_learn_request(
        images, labels, positive, model, version, id=str(i), request_id=request_id or str(uuid.uuid4())
    )


def model_ready_request(model: str, version: str) -> pb.ModelReadyRequest:
    return pb.ModelReadyRequest(name=model, version=version)


def model_metadata_request(model: str, version: str) -> pb.ModelMetadataRequest:
    return pb.ModelMetadataRequest(name=model, version=version)


def snapshot_request(model: str, version: str, export: bool) -> lpb.SnapshotRequest:
    return lpb.SnapshotRequest(model_name=model, model_version=version, export_artifact=export)


def list_versions_request(model: str, version: str, limit: int) -> lpb.ListVersionsRequest:
    return lpb.ListVersionsRequest(model_name=model, model_version=version, limit=limit)


def rollback_request(to_version: int, model: str, version: str) -> lpb.RollbackRequest:
    return lpb.RollbackRequest(model_name=model, model_version=version, version=to_version)


def stats_request(model: str, version: str) -> lpb.GetStatsRequest:
    """``model=""``: the statistics of every model."""
    return lpb.GetStatsRequest(model_name=model, model_version=version)


def learn_result(resp: lpb.LearnResponse, request_id: str = "") -> LearnResult:
    """The result of a Learn / LearnStream answer to the request of idempotency key
    ``request_id`` (the answer does not carry it); a refused one raises :class:`RequestFailed`."""
    if resp.error_code:
        code = _CODE_NAMES.get(resp.error_code, str(resp.error_code))
        raise RequestFailed(code, resp.error_message, request_id)
    return LearnResult(
        resp.version,
        np.asarray(resp.log_odds, dtype=np.float32),
        resp.id,
        resp.model_name,
        resp.model_version,
        request_id,
    )



def stream_infer_result(resp: pb.ModelStreamInferResponse) -> InferResult:
    """The result of one ModelStreamInfer answer; a refused one raises :class:`RequestFailed`."""
    if resp.error_message:
        code, _, message = resp.error_message.partition(": ")
        raise RequestFailed(code, message)
    return parse_infer_response(resp.infer_response)
