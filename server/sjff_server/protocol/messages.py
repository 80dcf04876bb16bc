"""Protocol answers of a served model: its ModelMetadataResponse and its ModelInferResponses.

:class:`ModelMessages` is built once per served model (by the inference service) and keeps
what every answer shares: the metadata, and per batch size the serialised metadata of an
answer with the default outputs, so the common answer is prepared bytes plus its rows' data
(no message is built for it). Handlers may return bytes or messages (registration.py).
"""

from __future__ import annotations

import numpy as np
from sjff_client.codec import CONTENTS_FIELD
from sjff_client.pb import grpc_service_pb2 as pb

from ..inference.batching import Answer, rows_of
from ..inference.engine import InferPlan
from ..serving.models import ServedModel

__all__ = ["ModelMessages", "stream_answer"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag_and_length(number: int, length: int) -> bytes:
    """What precedes the ``length`` bytes of a length-delimited protobuf field on the wire."""
    return _varint(number << 3 | 2) + _varint(length)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (bytes, string or message) as it appears on the wire.
    Fields may come in any order in a message, and repeated ones in the order sent."""
    return _tag_and_length(number, len(data)) + data


def _version_param(version: int) -> bytes:
    """The ``parameters`` entry ``sjff_version`` of a ModelInferResponse, serialised."""
    m = pb.ModelInferResponse()
    m.parameters["sjff_version"].int64_param = version
    return m.SerializeToString()


def stream_answer(answer: bytes | pb.ModelInferResponse) -> bytes | pb.ModelStreamInferResponse:
    """A ModelStreamInferResponse carrying ``answer`` (its field 2)."""
    if type(answer) is bytes:
        return _field(2, answer)
    return pb.ModelStreamInferResponse(infer_response=answer)


def _classification(values: np.ndarray, k: int) -> list[bytes]:
    idx = np.argsort(-values, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(values, idx, axis=1)
    return [f"{v:f}:{i}".encode() for row_v, row_i in zip(top, idx) for v, i in zip(row_v, row_i)]


class ModelMessages:
    """Messages of one :class:`ServedModel`."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        md = pb.ModelMetadataResponse(name=served.name, platform=served.engine.platform)
        md.inputs.add(name="images", datatype="FP32", shape=[-1, served.in_features])
        for o in served.engine.outputs.values():
            md.outputs.add(name=o.name, datatype=o.datatype, shape=list(o.shape))
        self._metadata = md
        # (rows, the outputs' row shapes and dtypes) -> pieces of a default answer
        self._pieces: dict[tuple, tuple[bytes, list[bytes]]] = {}
        self._batch: dict[str, np.ndarray] | None = None  # the last batch's outputs ...
        self._arrays: list[np.ndarray] = []  # ... per default output ...
        self._blobs: list[bytes] | None = None  # ... as bytes (made for the first partial answer) ...
        self._row_bytes: tuple[int, ...] = ()  # ... and the bytes of one row of each
        self._layout: tuple = ()
        self._rowwise = False  # the last batch's outputs all hold one row per image
        self._param_version: int | None = None
        self._param = b""  # the serialised sjff_version parameter of _param_version

    def metadata(self, versions: list[str]) -> pb.ModelMetadataResponse:
        """ModelMetadataResponse listing the repository ``versions`` of the model."""
        md = pb.ModelMetadataResponse()
        md.CopyFrom(self._metadata)
        md.versions.extend(versions)
        return md

    def infer_answer(
        self, request: pb.ModelInferRequest, plan: InferPlan, answer: Answer
    ) -> bytes | pb.ModelInferResponse:
        """The ModelInferResponse for ``answer`` (:data:`~sjff_server.inference.batching.Answer`):
        serialised, for the default outputs (the common answer, assembled from pieces prepared
        once per batch size, per batch and per learning version), else the message of
        :meth:`infer_response`. Both encode the same message (tests/test_server_messages.py)."""
        outs, version, start, stop = answer
        if plan is not self.served.default_plan:
            return self.infer_response(request, plan, *rows_of(answer))
        if outs is not self._batch:  # the outputs of a new batch
            self._batch = outs
            arrays = self._arrays = [outs[n] for n in plan.outputs]
            self._blobs = None
            # rows are sliced as bytes: every output must hold one row per image of the batch
            self._rowwise = len({len(a) for a in arrays}) == 1 and len(arrays[0]) > 0
            if self._rowwise:
                self._row_bytes = tuple(a.nbytes // len(a) for a in arrays)
                self._layout = (tuple(a.shape[1:] for a in arrays), tuple(a.dtype for a in arrays))
        if not self._rowwise:
            return self.infer_response(request, plan, *rows_of(answer))
        rows = stop - start
        if start == 0 and rows == len(self._arrays[0]):  # the whole batch (a lone call's): the arrays' own bytes
            try:
                return self._join(request, plan, outs, version, rows, self._arrays)
            except (BufferError, ValueError, TypeError):  # not C-contiguous (numpy raises one of these)
                pass
        if self._blobs is None:  # to bytes once for all the batch's requests
            self._blobs = [a.tobytes() for a in self._arrays]
        rows_data = [blob[start * row : stop * row] for blob, row in zip(self._blobs, self._row_bytes)]
        return self._join(request, plan, outs, version, rows, rows_data)

    def _join(
        self, request, plan: InferPlan, outs: dict[str, np.ndarray], version: int, rows: int, data: list
    ) -> bytes:
        """The serialised answer of ``rows`` rows whose raw contents are ``data`` (bytes-like,
        one per default output, in order)."""
        key = (rows, self._layout)
        pieces = self._pieces.get(key)
        if pieces is None:
            pieces = self._pieces.setdefault(key, self._answer_pieces(plan, outs, rows))
        head, prefixes = pieces
        if version != self._param_version:
            self._param_version = version
            self._param = _version_param(version)
        parts = [head, self._param]
        if request.id:
            parts.append(_field(3, request.id.encode()))
        for prefix, contents in zip(prefixes, data):
            parts.append(prefix)
            parts.append(contents)
        return b"".join(parts)  # raises on an array that is not C-contiguous

    def _answer_pieces(self, plan: InferPlan, outs: dict[str, np.ndarray], rows: int) -> tuple[bytes, list[bytes]]:
        """For a default answer of ``rows`` rows: its name, version and output tensors (no id,
        no parameters, no data) serialised, and the tag and length of each output's raw
        contents."""
        served = self.served
        t = pb.ModelInferResponse(model_name=served.name, model_version=served.version)
        for name in plan.outputs:
            shape = (rows, *outs[name].shape[1:])
            t.outputs.add(name=name, datatype=served.engine.outputs[name].datatype, shape=shape)
        prefixes = [_tag_and_length(6, rows * row) for row in self._row_bytes]
        return t.SerializeToString(), prefixes

    def infer_response(
        self, request: pb.ModelInferRequest, plan: InferPlan, outs: dict[str, np.ndarray], version: int
    ) -> pb.ModelInferResponse:
        """The ModelInferResponse for ``outs`` (learning ``version``); raw contents unless
        ``plan.typed``."""
        served = self.served
        resp = pb.ModelInferResponse(model_name=served.name, model_version=served.version, id=request.id)
        resp.parameters["sjff_version"].int64_param = version
        specs = served.engine.outputs
        for name in plan.outputs:
            arr = outs[name]
            if plan.classify and name in plan.classify:
                k = plan.classify[name]
                items = _classification(arr, k)
                o = resp.outputs.add(name=name, datatype="BYTES", shape=(arr.shape[0], k))
                if plan.typed:
                    o.contents.bytes_contents.extend(items)
                else:
                    resp.raw_output_contents.append(b"".join(len(b).to_bytes(4, "little") + b for b in items))
                continue
            dt = specs[name].datatype
            o = resp.outputs.add(name=name, datatype=dt, shape=arr.shape)
            if plan.typed:
                getattr(o.contents, CONTENTS_FIELD[dt]).extend(arr.ravel().tolist())
            else:
                resp.raw_output_contents.append(arr.tobytes())
        return resp
