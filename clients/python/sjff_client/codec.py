"""Tensors <-> Open Inference Protocol messages, with numpy only.

Part of the wire contract with ``pb/``: the server imports it from this package, so it holds
only what both ends need (datatype tables, typed and raw contents, parameters); request
validation stays in the server (docs/clients.md, "Who owns the wire contract").

Datatype names are the protocol's (``FP32``, ``UINT8``, ``INT64``, ...). Raw contents are the
flattened row-major little-endian bytes of a tensor; typed contents use the
``InferTensorContents`` field that matches the datatype.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .pb import grpc_service_pb2 as pb

__all__ = [
    "CONTENTS_FIELD",
    "DATATYPES",
    "NUMPY_TO_DATATYPE",
    "datatype_of",
    "infer_parameter",
    "parameter_value",
    "parameters_dict",
    "response_arrays",
    "tensor_from_contents",
]

#: Protocol datatype -> numpy dtype (little-endian). BYTES is not a numeric type.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

#: numpy dtype -> protocol datatype.
NUMPY_TO_DATATYPE: dict[np.dtype, str] = {v.newbyteorder("="): k for k, v in DATATYPES.items()}

#: Protocol datatype -> field of ``InferTensorContents`` that carries it (FP16/BF16: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def datatype_of(array: np.ndarray) -> str:
    """Protocol datatype of a numpy array (``ValueError`` for unsupported dtypes)."""
    try:
        return NUMPY_TO_DATATYPE[array.dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"dtype {array.dtype} has no Open Inference Protocol datatype") from None


#: Typed-contents fields that hold numbers, and the numpy type that holds any value of each.
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int64),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint64),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


def tensor_from_contents(contents: pb.InferTensorContents, datatype: str, count: int) -> np.ndarray:
    """The ``count`` values of typed contents as a flat array of ``datatype``.

    ``ValueError`` if the datatype has no typed field, values sit in another field, the count
    differs, or an integer value does not fit the datatype (300 for UINT8: never wrapped)."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None or datatype == "BYTES":
        raise ValueError(f"datatype {datatype} cannot be sent as typed contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise ValueError(f"{datatype} values go in contents.{field}, got values in contents.{others[0]}")
    values = getattr(contents, field)
    if len(values) != count:
        raise ValueError(f"contents.{field} holds {len(values)} values, the shape needs {count}")
    dtype = DATATYPES[datatype]
    wide = np.asarray(values, dtype=_FIELD_DTYPE[field])  # every value of the field fits
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        bad = wide[(wide < info.min) | (wide > info.max)] if dtype.itemsize < wide.dtype.itemsize else wide[:0]
        if bad.size:
            raise ValueError(f"{datatype} values must lie in [{info.min}, {info.max}], got {bad[0]}")
    return wide.astype(dtype, copy=False)


def infer_parameter(value: bool | int | float | str) -> pb.InferParameter:
    """An ``InferParameter`` holding ``value`` (bool, int, float or str)."""
    if isinstance(value, bool | np.bool_):
        return pb.InferParameter(bool_param=bool(value))
    if isinstance(value, int | np.integer):
        return pb.InferParameter(int64_param=int(value))
    if isinstance(value, float | np.floating):
        return pb.InferParameter(double_param=float(value))
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    raise TypeError(f"parameter values must be bool, int, float or str, got {type(value).__name__}")


def parameter_value(p: pb.InferParameter) -> bool | int | float | str | None:
    """The Python value of an ``InferParameter`` (``None`` if unset)."""
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def response_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a ``ModelInferResponse`` as a numpy array of its shape, raw or typed."""
    out: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for i, t in enumerate(response.outputs):
        shape = tuple(t.shape)
        count = int(np.prod(shape, dtype=np.int64))
        if raw:
            dtype = DATATYPES.get(t.datatype)
            if dtype is None:
                raise ValueError(f"output {t.name}: datatype {t.datatype} is not numeric")
            arr = np.frombuffer(raw[i], dtype=dtype)
            if arr.size != count:
                raise ValueError(f"output {t.name}: {arr.size} raw values for shape {list(shape)}")
        else:
            arr = tensor_from_contents(t.contents, t.datatype, count)
        out[t.name] = arr.reshape(shape)
    return out


def parameters_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, bool | int | float | str | None]:
    """A parameters map as plain Python values."""
    return {k: parameter_value(v) for k, v in params.items()}
