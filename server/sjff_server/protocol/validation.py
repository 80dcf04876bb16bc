"""Decode and validate client requests into numpy arrays and :class:`Update` objects
(everything a client sends is checked here, once, before it reaches a model; problems raise
:class:`InvalidInput` with a clear message). Answers are built in messages.py."""

from __future__ import annotations

import math

import numpy as np
from sjff_client.codec import tensor_from_contents
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import learning_pb2 as lpb

from ..errors import InvalidInput
from ..inference.engine import InferOptions, InferPlan
from ..storage.records import Update

__all__ = [
    "IMAGE_DTYPES",
    "MAX_REQUEST_ID",
    "check_images",
    "check_request_id",
    "decode_infer",
    "decode_learn",
    "min_version_of",
    "version_wait_of",
]

IMAGE_DTYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2")}
_INV255 = np.float32(255.0)
_F32 = IMAGE_DTYPES["FP32"]
INT_KINDS = ("int64_param", "uint64_param")
MAX_REQUEST_ID = 200  # characters of a LearnRequest.request_id (kept in Redis keys)


_min, _max = np.minimum.reduce, np.maximum.reduce


_ONE_BITS = np.uint32(0x3F800000)  # the bit pattern of float32 1.0
_U32 = np.dtype("<u4")


def check_images(x: np.ndarray) -> np.ndarray:
    """``x`` float32 ``[N, D]`` must be finite and in [0, 1]; returns it."""
    # One pass for the common case: read as unsigned integers, the floats in [+0, 1] are
    # exactly the patterns <= that of 1.0 (a set sign bit, Inf and NaN all read larger).
    # Anything else (-0.0 included, which is valid) takes the exact float check below.
    if x.dtype == np.float32 and x.size and _max(x.view(_U32), axis=None) <= _ONE_BITS:
        return x
    if x.size and not (_min(x, axis=None) >= 0.0 and _max(x, axis=None) <= 1.0):  # NaN fails both comparisons
        if not np.isfinite(x).all():
            raise InvalidInput("images contain NaN or Inf")
        # repr: every digit (1.0000001 as float32 is 1.0000001192092896, not a valid-looking "1")
        raise InvalidInput(
            f"image values must lie in [0, 1], got min {float(x.min())!r}, max {float(x.max())!r} "
            "(send UINT8 for 0..255 pixel values)"
        )
    return x


def _images(buf: bytes | None, tensor, datatype: str, shape, in_features: int, max_rows: int) -> np.ndarray:
    """Images ``[N, in_features]`` float32 from raw bytes ``buf`` or, without them, the typed
    contents of ``tensor`` (an InferInputTensor); ``shape`` as sent."""
    if buf is not None and datatype == "FP32" and len(shape) == 2 and shape[1] == in_features:
        n = shape[0]  # the common request: raw FP32 [N, D]
        if 1 <= n <= max_rows and len(buf) == 4 * n * in_features:
            return check_images(np.frombuffer(buf, dtype=_F32).reshape(n, in_features))
    shape = tuple(shape)
    if len(shape) < 2 or any(d < 0 for d in shape):
        raise InvalidInput(f"images must have shape [N, {in_features}], got {list(shape)}")
    n = shape[0]
    rest = math.prod(shape[1:])
    if rest != in_features:
        raise InvalidInput(
            f"images must have shape [N, {in_features}] (or [N, H, W] with H*W = {in_features}), got {list(shape)}"
        )
    if n < 1:
        raise InvalidInput("images holds no image (N = 0)")
    if n > max_rows:
        raise InvalidInput(f"at most {max_rows} images per request, got {n}")
    dtype = IMAGE_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"images must be FP32 (values in [0, 1]) or UINT8 (0..255), got datatype {datatype!r}")
    count = n * in_features
    if buf is not None:
        if len(buf) != count * dtype.itemsize:
            raise InvalidInput(
                f"raw contents of images hold {len(buf)} bytes; shape {list(shape)} of {datatype} "
                f"needs {count * dtype.itemsize}"
            )
        x = np.frombuffer(buf, dtype=dtype)
    else:
        if datatype == "FP16":
            raise InvalidInput("FP16 images must be sent as raw_input_contents")
        try:
            x = tensor_from_contents(tensor.contents, datatype, count)  # range-checked: 300 never wraps to 44
        except (ValueError, OverflowError) as exc:
            raise InvalidInput(f"images: {exc}") from None
    x = x.reshape(n, in_features)
    if datatype == "UINT8":
        return x.astype(np.float32) / _INV255  # always in [0, 1]
    if datatype != "FP32":
        # checked as sent: rounding to float32 would pass 1.00000001 as 1 and turn 1e300 into Inf
        return check_images(x).astype(np.float32)
    return check_images(x)


def _int_param(name: str, p: pb.InferParameter, lo: int, hi: int) -> int:
    kind = p.WhichOneof("parameter_choice")
    if kind not in INT_KINDS:
        raise InvalidInput(f"parameter {name!r} must be an integer (int64_param), got {kind}")
    v = getattr(p, kind)
    if not lo <= v <= hi:
        raise InvalidInput(f"parameter {name!r} must lie in [{lo}, {hi}], got {v}")
    return int(v)


def _bool_param(name: str, p: pb.InferParameter) -> bool:
    if p.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidInput(f"parameter {name!r} must be a boolean (bool_param)")
    return p.bool_param


def decode_infer(request: pb.ModelInferRequest, served, max_rows: int) -> tuple[np.ndarray, InferPlan]:
    """Images ``[N, D]`` float32 and the plan of a ModelInfer request for ``served``."""
    inputs = request.inputs
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input tensor named 'images', got {len(inputs)}")
    t = inputs[0]
    if t.name != "images":
        raise InvalidInput(f"unknown input {t.name[:100]!r}; this model takes one input named 'images'")
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise InvalidInput(f"raw_input_contents holds {len(raw)} tensors for 1 input")
        if t.HasField("contents"):
            raise InvalidInput("images has both raw_input_contents and typed contents; send one")
        buf = raw[0]
    else:
        buf = None
    x = _images(buf, t, t.datatype, t.shape, served.in_features, max_rows)
    if not request.parameters and not request.outputs:
        return x, served.default_plan  # the common request: nothing more to decode

    seed = steps = None
    latent = typed = False
    if request.parameters:
        for key, p in request.parameters.items():
            if key == "seed":
                seed = _int_param(key, p, 0, 2**63 - 1)
            elif key == "steps":
                if served.kind != "spiking":
                    raise InvalidInput("parameter 'steps' applies to spiking models only")
                steps = _int_param(key, p, 1, served.max_steps)
            elif key == "return_latent":
                latent = _bool_param(key, p)
            elif key == "typed_output":
                typed = _bool_param(key, p)
            # other keys (protocol extensions such as priority or timeout) are ignored

    available = served.engine.outputs
    classify = None
    if request.outputs:
        names = []
        for o in request.outputs:
            if o.name not in available:
                raise InvalidInput(f"unknown output {o.name[:100]!r} (outputs: {', '.join(available)})")
            names.append(o.name)
            if "classification" in o.parameters:
                k = _int_param("classification", o.parameters["classification"], 1, served.num_classes)
                if available[o.name].datatype not in ("FP32", "FP64") or len(available[o.name].shape) != 2:
                    raise InvalidInput(f"output {o.name!r} cannot be classified (needs [N, C] scores)")
                classify = {**(classify or {}), o.name: k}
        if len(set(names)) != len(names):
            raise InvalidInput("an output is requested twice")
    else:
        names = list(served.default_outputs)
    if latent or "latent" in names:  # return_latent asks for the output, listed or not
        if "latent" not in available:
            raise InvalidInput("this model has no latent output")
        if "latent" not in names:
            names.append("latent")
        latent = True
    if served.kind == "spiking":
        opts = InferOptions(seed, steps, latent)
    else:
        opts = InferOptions()  # deterministic: every request can share a batch
    return x, InferPlan(opts, tuple(names), classify, typed)


def decode_learn(request: lpb.LearnRequest, served, max_rows: int, max_eta: float) -> Update:
    """The validated update a LearnRequest asks of ``served``."""
    n = len(request.labels)
    if n == 0:
        raise InvalidInput("labels is empty: send one label per image")
    if n > max_rows:
        raise InvalidInput(f"at most {max_rows} samples per update, got {n}")
    enc = request.encoding
    if enc in (lpb.IMAGE_ENCODING_UNSPECIFIED, lpb.IMAGE_ENCODING_FP32):
        datatype = "FP32"
    elif enc == lpb.IMAGE_ENCODING_UINT8:
        datatype = "UINT8"
    else:
        raise InvalidInput(f"unknown image encoding {enc}")
    d = served.in_features
    itemsize = IMAGE_DTYPES[datatype].itemsize
    if len(request.images) != n * d * itemsize:
        raise InvalidInput(
            f"images hold {len(request.images)} bytes; {n} labels x {d} features x {itemsize} bytes ({datatype}) "
            f"= {n * d * itemsize}"
        )
    x = _images(request.images, None, datatype, (n, d), d, max_rows)
    labels = np.asarray(request.labels, dtype=np.int64)
    c = served.num_classes
    bad = labels[(labels < 0) | (labels >= c)]
    if bad.size:
        raise InvalidInput(f"labels must lie in [0, {c}), got {int(bad[0])}")
    if len(request.positive) == 0:
        positive = np.ones(n, dtype=np.float32)
    elif len(request.positive) == n:
        positive = np.asarray(request.positive, dtype=np.float32)
    else:
        raise InvalidInput(f"positive has {len(request.positive)} flags for {n} labels (send one per label, or none)")
    eta = None
    if request.HasField("eta"):
        eta = request.eta
        if not (math.isfinite(eta) and 0.0 < eta <= max_eta):
            raise InvalidInput(f"eta must be finite and in (0, {max_eta:g}], got {eta!r}")
    seed = request.seed if request.HasField("seed") else None
    if seed is not None and seed >= 2**63:
        raise InvalidInput("seed must be below 2**63")
    expected = request.expected_version if request.HasField("expected_version") else None
    return Update(np.ascontiguousarray(x), labels, positive, seed, eta, expected)


def check_request_id(request_id: str) -> str:
    """A LearnRequest's idempotency key: printable, at most :data:`MAX_REQUEST_ID` characters."""
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidInput(f"request_id must be at most {MAX_REQUEST_ID} characters, got {len(request_id)}")
    if not request_id.isprintable():
        raise InvalidInput("request_id must be printable text")
    return request_id


def min_version_of(request: pb.ModelInferRequest) -> int | None:
    """The ``min_version`` parameter of a ModelInferRequest (None: not given)."""
    if not request.parameters or "min_version" not in request.parameters:
        return None
    return _int_param("min_version", request.parameters["min_version"], 0, 2**63 - 1)


MAX_VERSION_WAIT_MS = 30_000  # the longest ``min_version_wait_ms`` (and the wait of a call without a deadline)


def version_wait_of(request: pb.ModelInferRequest) -> float | None:
    """The ``min_version_wait_ms`` parameter in seconds: how long the server waits for
    ``min_version`` before it answers DEADLINE_EXCEEDED (None: until just before the deadline)."""
    if not request.parameters or "min_version_wait_ms" not in request.parameters:
        return None
    return _int_param("min_version_wait_ms", request.parameters["min_version_wait_ms"], 0, MAX_VERSION_WAIT_MS) / 1e3
