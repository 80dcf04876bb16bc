"""Hostile request messages for the server fuzz run (benchmarks/fuzz_calls.py makes the calls).

Absurd ModelInfer / Learn requests (shapes, datatypes, contents, names, versions, parameters,
requested outputs, labels, etas, ...), valid ones, byte- and field-level mutations of valid
ones, bodies over ``--max-message-bytes``, and learning requests with one targeted defect.
All randomness comes from the ``rng`` passed in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sjff_client.client import build_infer_request, build_learn_request
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import learning_pb2 as lpb

INFER = "/inference.GRPCInferenceService/ModelInfer"
INFER_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
LEARN = "/spikingjelly_ff.v1.Learning/Learn"
LEARN_STREAM = "/spikingjelly_ff.v1.Learning/LearnStream"
ROLLBACK = "/spikingjelly_ff.v1.Learning/Rollback"
LIST_VERSIONS = "/spikingjelly_ff.v1.Learning/ListVersions"
GET_STATS = "/spikingjelly_ff.v1.Learning/GetStats"
SNAPSHOT = "/spikingjelly_ff.v1.Learning/Snapshot"
UNARY = [
    INFER,
    LEARN,
    ROLLBACK,
    LIST_VERSIONS,
    GET_STATS,
    SNAPSHOT,
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ServerMetadata",
]
STREAMS = [INFER_STREAM, LEARN_STREAM]

LEARNING = ("mnist", "snn")  # models that learn (analog, spiking)
FROZEN = ("frozen", "snn-frozen")  # the same artefacts with learning off
DATATYPES = ["FP32", "UINT8", "FP64", "FP16", "INT64", "INT32", "BOOL", "BYTES", "BF16", "", "fp32", "X" * 300]
NAMES = ["mnist", "snn", "frozen", "snn-frozen", "", "nope", "mnist\x00", "../mnist", "m" * 5000, "MNIST", "mnïst"]
NAME_P = [0.4, 0.2, 0.1, 0.1, 0.04, 0.04, 0.02, 0.02, 0.02, 0.03, 0.03]
VERSIONS = ["", "", "", "1", "0", "-1", "99", "x", "1" * 40, "1.0"]
NUM_CLASSES = 10
NEVER = 2**62  # an expected_version no model reaches: such an update is always refused (ABORTED)


@dataclass
class Context:
    """What the generators need: the token, sample images ``[M, 784]`` uint8 with their labels,
    and the server's ``--max-message-bytes`` / ``--max-learn-samples``."""

    token: str
    images: np.ndarray
    labels: np.ndarray
    max_message_bytes: int
    max_learn_samples: int = 64

    @property
    def good(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),)


def pick(rng: np.random.Generator, values: list):
    """One of ``values``, unchanged (``rng.choice`` turns big integers into floats)."""
    return values[int(rng.integers(0, len(values)))]


# -- absurd messages (field values a valid client would never send) ---------------------------


def random_value(rng: np.random.Generator) -> pb.InferParameter:
    kind = rng.integers(0, 6)
    return [
        lambda: pb.InferParameter(bool_param=bool(rng.integers(0, 2))),
        lambda: pb.InferParameter(int64_param=int(rng.integers(-(2**63), 2**63 - 1))),
        lambda: pb.InferParameter(string_param="x" * int(rng.integers(0, 50))),
        lambda: pb.InferParameter(double_param=float(rng.choice([np.nan, np.inf, -1.0, 1e308, 0.5]))),
        lambda: pb.InferParameter(uint64_param=int(rng.integers(0, 2**63)) * 2),
        lambda: pb.InferParameter(),
    ][kind]()


def infer_request(rng: np.random.Generator) -> pb.ModelInferRequest:
    """Absurd shapes, datatypes, contents, names, versions, parameters and requested outputs."""
    r = pb.ModelInferRequest(model_name=str(rng.choice(NAMES, p=NAME_P)), model_version=str(rng.choice(VERSIONS)))
    for _ in range(pick(rng, [0, 1, 1, 1, 2, 3])):
        shape = [pick(rng, [-1, 0, 1, 2, 7, 784, 28, 2**40, -(2**62)]) for _ in range(int(rng.integers(0, 4)))]
        t = r.inputs.add(
            name=str(rng.choice(["images", "images", "x", ""])), datatype=str(rng.choice(DATATYPES)), shape=shape
        )
        if rng.random() < 0.3:
            t.contents.fp32_contents.extend(rng.standard_normal(int(rng.integers(0, 1600))).astype(np.float32).tolist())
        if rng.random() < 0.1:
            t.contents.uint_contents.extend(rng.integers(0, 2**32, int(rng.integers(0, 900))).tolist())
        if rng.random() < 0.6:
            n = pick(rng, [0, 1, 783, 784, 3136, 3135, 6272, 100_000])
            data = rng.integers(0, 256, n, dtype=np.uint8)
            if rng.random() < 0.5 and n % 4 == 0 and n:  # plausible floats, sometimes NaN/Inf/out of range
                f = rng.random(n // 4).astype(np.float32)
                f[rng.integers(0, n // 4, 3)] = rng.choice([np.nan, np.inf, -1.0, 2.0, 0.5])
                data = f.view(np.uint8)
            r.raw_input_contents.append(data.tobytes())
    for _ in range(int(rng.integers(0, 3))):
        o = r.outputs.add(name=str(rng.choice(["scores", "label", "latent", "goodness", "probability", "nope", ""])))
        if rng.random() < 0.3:
            o.parameters["classification"].CopyFrom(random_value(rng))
    for key in rng.choice(["seed", "steps", "return_latent", "typed_output", "priority", "x"], int(rng.integers(0, 4))):
        r.parameters[str(key)].CopyFrom(random_value(rng))
    return r


def learn_request(rng: np.random.Generator) -> lpb.LearnRequest:
    """Absurd labels, encodings, byte counts, flags, etas, seeds and expected versions."""
    n = pick(rng, [0, 1, 2, 5])
    labels = rng.integers(-3, 14, n if rng.random() < 0.8 else n + 1).tolist()
    r = lpb.LearnRequest(
        model_name=str(rng.choice(NAMES, p=NAME_P)),
        model_version=str(rng.choice(VERSIONS)),
        labels=labels,
        encoding=pick(rng, [0, 1, 2, 7, -1]),
    )
    size = pick(rng, [n * 784, n * 3136, n * 3136 + 1, 0, 5])
    if rng.random() < 0.5:
        f = rng.random(max(0, size // 4)).astype(np.float32)
        if f.size and rng.random() < 0.3:
            f[0] = rng.choice([np.nan, np.inf, 7.0])
        r.images = f.tobytes()
    else:
        r.images = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    r.positive.extend(rng.integers(0, 2, pick(rng, [0, n, n + 2])).astype(bool).tolist())
    if rng.random() < 0.5:
        r.eta = float(rng.choice([0.0, -1.0, np.nan, np.inf, 1e-3, 0.1, 1e30]))
    if rng.random() < 0.3:
        r.seed = int(rng.integers(0, 2**63)) * 2
    if rng.random() < 0.2:
        r.expected_version = int(rng.integers(0, 5))
    return r


# -- valid requests and their mutations --------------------------------------------------------


def _sample(rng: np.random.Generator, ctx: Context, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, len(ctx.images), n)
    return ctx.images[idx], ctx.labels[idx]


def valid_infer(rng: np.random.Generator, ctx: Context, model: str | None = None) -> pb.ModelInferRequest:
    x, _ = _sample(rng, ctx, int(rng.integers(1, 5)) if rng.random() < 0.95 else 64)  # 64: --max-request-rows
    if rng.random() < 0.5:
        x = x.astype(np.float32) / np.float32(255.0)
    model = model or str(rng.choice(LEARNING + FROZEN))
    params = {"seed": int(rng.integers(0, 2**31))} if model.startswith("snn") and rng.random() < 0.7 else {}
    if model.startswith("snn") and rng.random() < 0.3:
        params["steps"] = int(rng.integers(1, 9))
    if rng.random() < 0.2:
        params["typed_output"] = True
    if model.startswith("snn") and rng.random() < 0.2:
        params["return_latent"] = True
    outputs = ["label", "scores"] if rng.random() < 0.3 else None
    r = build_infer_request(x, model, outputs=outputs, parameters=params, raw=rng.random() < 0.8)
    if outputs and rng.random() < 0.3:  # the classification extension: top k as "value:index"
        r.outputs[1].parameters["classification"].int64_param = int(rng.integers(1, NUM_CLASSES + 1))
    return r


def valid_learn(rng: np.random.Generator, ctx: Context, model: str | None = None) -> lpb.LearnRequest:
    """A learning request the server accepts (unless ``expected_version`` is stale)."""
    n = int(rng.integers(1, 5))
    x, y = _sample(rng, ctx, n)
    positive = rng.random(n) < 0.5
    y = np.where(positive, y, (y + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES)  # wrong label for negatives
    if rng.random() < 0.5:
        x = x.astype(np.float32) / np.float32(255.0)
    return build_learn_request(
        x,
        y,
        positive,
        model or str(rng.choice(LEARNING, p=[0.7, 0.3])),
        str(rng.choice(["", "1"])),
        seed=int(rng.integers(0, 2**63)) if rng.random() < 0.3 else None,
        eta=float(rng.choice([1e-4, 1e-3, 0.01])) if rng.random() < 0.3 else None,
        expected_version=int(rng.integers(0, 50)) if rng.random() < 0.1 else None,
    )


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def wire_fields(data: bytes) -> list[tuple[int, int, bytes]] | None:
    """Top-level protobuf fields ``(number, wire type, encoded value)``; None if not decodable."""
    out, i = [], 0
    try:
        while i < len(data):
            tag, i = _read_varint(data, i)
            num, wt = tag >> 3, tag & 7
            start = i
            if wt == 0:
                _, i = _read_varint(data, i)
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            elif wt == 2:
                n, i = _read_varint(data, i)
                i += n
            else:
                return None
            if i > len(data):
                return None
            out.append((num, wt, data[start:i]))
    except IndexError:
        return None
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = data[i]
        v |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            return v, i


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """Bit flips, truncations, insertions, or swapped / renumbered / duplicated / dropped fields."""
    op = int(rng.integers(0, 8))
    b = bytearray(data)
    if op == 0 and b:  # flip a few bits
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(b)
    if op == 1:  # truncate
        return bytes(b[: int(rng.integers(0, len(b) + 1))])
    if op == 2:  # insert garbage
        i = int(rng.integers(0, len(b) + 1))
        return bytes(b[:i]) + rng.bytes(int(rng.integers(1, 40))) + bytes(b[i:])
    fields = wire_fields(data)
    if not fields:
        return bytes(b[::-1])
    k = int(rng.integers(0, len(fields)))
    num, wt, val = fields[k]
    if op == 3 and len(fields) > 1:  # swap the values of two fields (each keeps its tag)
        j = int(rng.integers(0, len(fields)))
        fields[k], fields[j] = (num, fields[j][1], fields[j][2]), (fields[j][0], wt, val)
    elif op == 4:  # renumber a field
        fields[k] = (pick(rng, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 536870911]), wt, val)
    elif op == 5:  # duplicate a field (repeated fields grow, scalars take the last value)
        fields.insert(k, fields[k])
    elif op == 6:  # drop a field
        del fields[k]
    elif wt == 2:  # mutate inside a length-delimited field (nested messages: inputs, parameters)
        _, start = _read_varint(val, 0)
        inner = mutate(rng, val[start:])
        fields[k] = (num, wt, varint(len(inner)) + inner)
    return b"".join(varint(n << 3 | w) + v for n, w, v in fields)


def oversized(rng: np.random.Generator, ctx: Context) -> tuple[str, bytes]:
    """A body of 1.01-1.5 x ``max_message_bytes``: a valid-looking request or raw bytes, and
    the method to send it to."""
    size = int(ctx.max_message_bytes * rng.uniform(1.01, 1.5))
    rows = size // 784 + 1
    choice = rng.integers(0, 3)
    if choice == 0:
        x = rng.integers(0, 256, (rows, 784), dtype=np.uint8)
        return INFER, build_infer_request(x, str(rng.choice(LEARNING + FROZEN))).SerializeToString()
    if choice == 1:
        x = rng.integers(0, 256, (rows, 784), dtype=np.uint8)
        y = rng.integers(0, NUM_CLASSES, rows)
        return LEARN, build_learn_request(x, y, model=str(rng.choice(LEARNING))).SerializeToString()
    return str(rng.choice(UNARY)), rng.bytes(size)


def bad_learn(rng: np.random.Generator, ctx: Context) -> lpb.LearnRequest:
    """A valid request with one defect: labels out of range or miscounted, wrong byte counts or
    encoding, NaN/Inf pixels, NaN/Inf/huge eta, stale expected_version, too many samples, ..."""
    r = valid_learn(rng, ctx, str(rng.choice(LEARNING + FROZEN, p=[0.4, 0.3, 0.15, 0.15])))
    n = len(r.labels)
    defect = int(rng.integers(0, 11))
    if defect == 0:
        r.labels[int(rng.integers(0, n))] = pick(rng, [-1, NUM_CLASSES, 11, 2**62, -(2**63), 2**63 - 1])
    elif defect == 1:
        if rng.random() < 0.5:
            r.labels.append(1)
        else:
            del r.labels[-1]
    elif defect == 2:
        cut = int(rng.integers(1, 9))
        r.images = r.images[:-cut] if rng.random() < 0.5 else r.images + rng.bytes(cut)
    elif defect == 3:
        r.encoding = pick(rng, [1, 2, 3, 7, 2**31 - 1, -5])
    elif defect == 4:
        x = rng.random((n, 784)).astype("<f4")
        x[int(rng.integers(0, n)), int(rng.integers(0, 784))] = rng.choice([np.nan, np.inf, -np.inf, -0.5, 1.5, 3e38])
        r.images, r.encoding = x.tobytes(), lpb.IMAGE_ENCODING_FP32
    elif defect == 5:
        r.eta = float(rng.choice([np.nan, np.inf, -np.inf, -1.0, 1e300, 1.5, 5e-324, -0.0, 1e-300]))
    elif defect == 6:
        r.expected_version = pick(rng, [NEVER, 2**64 - 1, 10**9])
    elif defect == 7:
        r.positive[:] = rng.integers(0, 2, n + pick(rng, [-1, 1, 5])).astype(bool).tolist()
    elif defect == 8:  # more samples than --max-learn-samples
        m = ctx.max_learn_samples + int(rng.integers(1, 10))
        x = ctx.images[rng.integers(0, len(ctx.images), m)]
        r.images, r.encoding = x.tobytes(), lpb.IMAGE_ENCODING_UINT8
        r.labels[:] = rng.integers(0, NUM_CLASSES, m).tolist()
        del r.positive[:]
    elif defect == 9:
        r.seed = pick(rng, [2**64 - 1, 0, 2**63])
        r.id = "i" * pick(rng, [0, 1000, 100_000])
    else:
        r.model_version = str(rng.choice(VERSIONS[4:]))
    return r


def refused_learn(rng: np.random.Generator, ctx: Context) -> bytes:
    """A Learn message the server certainly refuses (so it changes no version even unanswered)."""
    r = valid_learn(rng, ctx)
    choice = int(rng.integers(0, 5))
    if choice == 0:
        r.labels[0] = -1
    elif choice == 1:
        r.expected_version = NEVER  # passes validation, refused by the model's writer
    elif choice == 2:
        r.model_name = str(rng.choice(FROZEN))
    elif choice == 3:
        r.model_name = "nope"
    else:
        return b"\xff\xff\xff" + rng.bytes(int(rng.integers(0, 50)))
    return r.SerializeToString()
