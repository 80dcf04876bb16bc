"""Protocol answers of a served model: its ModelMetadataResponse and its ModelInferResponses.

:class:`ModelMessages` is built once per served model (by the inference service) and keeps
what every answer shares: the metadata, and per batch size the metadata of an answer with
the default outputs, so the common answer is a copy of a prepared message plus the data.
"""

from __future__ import annotations

import numpy as np
from sjff_client.codec import CONTENTS_FIELD
from sjff_client.pb import grpc_service_pb2 as pb

from ..inference.engine import InferPlan
from ..serving.models import ServedModel

__all__ = ["ModelMessages"]


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
        self._templates: dict[int, pb.ModelInferResponse] = {}  # rows -> default-output metadata

    def metadata(self, versions: list[str]) -> pb.ModelMetadataResponse:
        """ModelMetadataResponse listing the repository ``versions`` of the model."""
        md = pb.ModelMetadataResponse()
        md.CopyFrom(self._metadata)
        md.versions.extend(versions)
        return md

    def _template(self, plan: InferPlan, outs: dict[str, np.ndarray]) -> pb.ModelInferResponse:
        """Response metadata of the default outputs for one batch size (no data, no id)."""
        served = self.served
        t = pb.ModelInferResponse(model_name=served.name, model_version=served.version)
        t.parameters["sjff_version"].int64_param = 0
        for name in plan.outputs:
            t.outputs.add(name=name, datatype=served.engine.outputs[name].datatype, shape=outs[name].shape)
        return t

    def infer_response(
        self, request: pb.ModelInferRequest, plan: InferPlan, outs: dict[str, np.ndarray], version: int
    ) -> pb.ModelInferResponse:
        """The ModelInferResponse for ``outs`` (learning ``version``); raw contents unless
        ``plan.typed``."""
        served = self.served
        if plan is served.default_plan:  # the common answer: copy a prepared message, add the data
            names = plan.outputs
            rows = len(outs[names[0]])
            template = self._templates.get(rows)
            if template is None:
                template = self._templates.setdefault(rows, self._template(plan, outs))
            resp = pb.ModelInferResponse()
            resp.CopyFrom(template)
            resp.id = request.id
            resp.parameters["sjff_version"].int64_param = version
            resp.raw_output_contents.extend([outs[n].tobytes() for n in names])
            return resp
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
