"""Calls of the server fuzz run (benchmarks/fuzz_server.py, tests/test_server_fuzz.py).

``make_call(seed, index, ctx)`` draws call number ``index``: a kind (``KINDS``, with its share),
a method, the serialized request(s) (benchmarks/fuzz_requests.py), the call metadata and, for
streams, whether to abandon it. Everything is drawn from a generator seeded with
``(seed, index)``, so a call is reproduced from its index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fuzz_requests import (
    GET_STATS,
    INFER,
    INFER_STREAM,
    LEARN,
    LEARN_STREAM,
    LEARNING,
    LIST_VERSIONS,
    NAME_P,
    NAMES,
    NEVER,
    ROLLBACK,
    SNAPSHOT,
    STREAMS,
    UNARY,
    VERSIONS,
    Context,
    bad_learn,
    infer_request,
    learn_request,
    mutate,
    oversized,
    pick,
    refused_learn,
    valid_infer,
    valid_learn,
    varint,
)
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import learning_pb2 as lpb


@dataclass
class Call:
    """One call: ``payload`` is the request body (unary) or the list of stream messages.
    ``abandon`` ("cancel", or "close" the channel) leaves a stream after reading ``read``
    answers; ``sure_bad`` marks calls that must never be answered OK (bad tokens)."""

    kind: str
    method: str
    payload: bytes | list[bytes]
    metadata: tuple = ()
    abandon: str = ""
    read: int = 0
    sure_bad: bool = False


def admin(rng: np.random.Generator) -> tuple[str, bytes]:
    """Rollback to absurd versions (or of models that do not learn; a few to a restorable version
    while updates go on), ListVersions / GetStats / Snapshot of unknown models or versions,
    absurd limits."""
    name, version = str(rng.choice(NAMES, p=NAME_P)), str(rng.choice(VERSIONS))
    which = int(rng.integers(0, 4))
    if which == 0:
        if name in LEARNING and rng.random() < 0.4:  # restorable (snapshots are kept): a new version
            v = int(rng.integers(0, 4))
        elif name in LEARNING:
            v = pick(rng, [2**64 - 1, 2**63, 10**12, NEVER])
        else:
            v = pick(rng, [0, 1, 2, 2**64 - 1])
        return ROLLBACK, lpb.RollbackRequest(model_name=name, model_version=version, version=v).SerializeToString()
    if which == 1:
        limit = pick(rng, [0, 1, 100, 10000, 10001, 2**32 - 1])
        req = lpb.ListVersionsRequest(model_name=name, model_version=version, limit=limit)
        return LIST_VERSIONS, req.SerializeToString()
    if which == 2:
        name = "" if rng.random() < 0.2 else name
        return GET_STATS, lpb.GetStatsRequest(model_name=name, model_version=version).SerializeToString()
    req = lpb.SnapshotRequest(model_name=name, model_version=version, export_artifact=bool(rng.random() < 0.1))
    return SNAPSHOT, req.SerializeToString()


def bad_metadata(rng: np.random.Generator, ctx: Context) -> tuple:
    """Call metadata without a valid token: missing, wrong scheme, wrong token, huge header."""
    tok = ctx.token
    variants = [
        (),
        (("authorization", f"Basic {tok}"),),
        (("authorization", tok),),
        (("authorization", "Bearer"),),
        (("authorization", f"Bearer {tok[:-1]}"),),
        (("authorization", f"Bearer {tok}x"),),
        (("authorization", f"Bearer {tok[:-1]}{chr(ord(tok[-1]) ^ 1)}"),),
        (("authorization", "Bearer " + "A" * pick(rng, [16, 4000, 20_000, 100_000])),),
        (("authorization", "Bearer wrong-token-0123456789"), ("authorization", f"Bearer {tok}")),
        (("x-authorization", f"Bearer {tok}"),),
        (("authorization", f"Bearer: {tok}"),),
    ]
    return variants[int(rng.integers(0, len(variants)))]


def _stream_messages(rng: np.random.Generator, ctx: Context, learn: bool, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        u = rng.random()
        if u < 0.1:  # not a message at all: answered in-band
            out.append(b"\xff\xff\xff" + rng.bytes(int(rng.integers(0, 200))))
            continue
        if learn:
            msg = valid_learn(rng, ctx) if u < 0.5 else bad_learn(rng, ctx) if u < 0.8 else learn_request(rng)
        else:
            msg = valid_infer(rng, ctx) if u < 0.5 else infer_request(rng)
        if rng.random() < 0.7:  # clients number their stream messages
            msg.id = str(i)
        out.append(msg.SerializeToString())
    return out


def _mutated(rng: np.random.Generator, ctx: Context, learn: bool) -> tuple[str, bytes]:
    data = (valid_learn(rng, ctx) if learn else valid_infer(rng, ctx)).SerializeToString()
    for _ in range(int(rng.integers(1, 4))):
        data = mutate(rng, data)
    method = LEARN if learn else INFER
    if rng.random() < 0.15:  # the right bytes for the wrong method
        method = str(rng.choice(UNARY))
    return method, data


def _random_bytes(rng: np.random.Generator) -> bytes:
    if rng.random() < 0.5:
        return rng.bytes(int(rng.integers(0, 5000)))
    parts = []  # protobuf-looking: valid tags with random values
    for _ in range(int(rng.integers(1, 12))):
        num, wt = int(rng.integers(1, 16)), pick(rng, [0, 1, 2, 5])
        val = {0: varint(int(rng.integers(0, 2**63))), 1: rng.bytes(8), 5: rng.bytes(4)}.get(wt)
        if val is None:
            body = rng.bytes(int(rng.integers(0, 100)))
            val = varint(len(body) + pick(rng, [0, 0, 0, 1, 1000])) + body
        parts.append(varint(num << 3 | wt) + val)
    return b"".join(parts)


def _retry(rng: np.random.Generator, ctx: Context, seed: int) -> bytes:
    """A Learn with a request id that other calls of the run send too (concurrently or later):
    one of ``RETRY_IDS`` per run, drawn with its samples from its own generator; one in five
    carries other images under that id (refused while the first is known)."""
    g = int(rng.integers(0, RETRY_IDS))
    r = valid_learn(np.random.default_rng([seed, 1 << 20, g]), ctx)
    r.request_id = f"retry-{seed}-{g}"
    if rng.random() < 0.2:
        r.images = ctx.images[rng.integers(0, len(ctx.images), len(r.labels))].tobytes()
        r.encoding = lpb.IMAGE_ENCODING_UINT8
    return r.SerializeToString()


def _call(kind: str, rng: np.random.Generator, ctx: Context, seed: int = 0) -> Call:
    good = ctx.good
    if kind == "infer_absurd":
        return Call(kind, INFER, infer_request(rng).SerializeToString(), good)
    if kind == "infer_mutated":
        return Call(kind, *_mutated(rng, ctx, False), good)
    if kind == "infer_valid":
        return Call(kind, INFER, valid_infer(rng, ctx).SerializeToString(), good)
    if kind == "learn_absurd":
        return Call(kind, LEARN, learn_request(rng).SerializeToString(), good)
    if kind == "learn_bad":
        return Call(kind, LEARN, bad_learn(rng, ctx).SerializeToString(), good)
    if kind == "learn_mutated":
        return Call(kind, *_mutated(rng, ctx, True), good)
    if kind == "learn_valid":
        return Call(kind, LEARN, valid_learn(rng, ctx).SerializeToString(), good)
    if kind == "learn_retry":
        return Call(kind, LEARN, _retry(rng, ctx, seed), good)
    if kind == "random_bytes":
        if rng.random() < 0.2:
            method = str(rng.choice(STREAMS))
            return Call(kind, method, [_random_bytes(rng) for _ in range(int(rng.integers(1, 4)))], good)
        return Call(kind, str(rng.choice(UNARY)), _random_bytes(rng), good)
    if kind == "oversized":
        method, body = oversized(rng, ctx)
        if rng.random() < 0.2:  # one message of a stream is too big: the stream ends with a status
            # (learning messages around it are refused ones: an update the stream's end leaves
            # unanswered would still be applied, and could not be counted)
            if rng.random() < 0.5:
                msgs, method = [refused_learn(rng, ctx) for _ in range(2)], LEARN_STREAM
            else:
                msgs, method = _stream_messages(rng, ctx, False, 2), INFER_STREAM
            msgs.insert(int(rng.integers(0, 3)), body)
            return Call(kind, method, msgs, good)
        return Call(kind, method, body, good)
    if kind == "bad_token":
        which = int(rng.integers(0, 5))
        if which == 0:
            method, payload = INFER, valid_infer(rng, ctx).SerializeToString()
        elif which == 1:
            method, payload = LEARN, valid_learn(rng, ctx).SerializeToString()
        elif which == 2:
            method, payload = LEARN_STREAM, [valid_learn(rng, ctx).SerializeToString() for _ in range(3)]
        elif which == 3:
            method, payload = INFER_STREAM, [valid_infer(rng, ctx).SerializeToString() for _ in range(2)]
        else:
            method, payload = admin(rng)
        return Call(kind, method, payload, bad_metadata(rng, ctx), sure_bad=True)
    if kind in ("infer_stream", "learn_stream"):
        learn = kind == "learn_stream"
        n = int(rng.integers(1, 7)) if rng.random() < 0.95 else int(rng.integers(60, 100))  # past the window
        msgs = _stream_messages(rng, ctx, learn, n)
        return Call(kind, LEARN_STREAM if learn else INFER_STREAM, msgs, good)
    if kind in ("abandoned_infer_stream", "abandoned_learn_stream"):
        learn = kind == "abandoned_learn_stream"
        read = int(rng.integers(0, 4))
        head = _stream_messages(rng, ctx, learn, read)  # answered (read) before leaving
        tail = [
            refused_learn(rng, ctx) if learn else valid_infer(rng, ctx).SerializeToString()
            for _ in range(int(rng.integers(1, 4)))
        ]
        how = str(rng.choice(["cancel", "close"]))
        return Call(kind, LEARN_STREAM if learn else INFER_STREAM, head + tail, good, abandon=how, read=read)
    if kind == "admin":
        return Call(kind, *admin(rng), good)
    if kind == "metadata":
        method = str(rng.choice(UNARY[6:8]))
        req = (pb.ModelMetadataRequest if method.endswith("Metadata") else pb.ModelReadyRequest)(
            name=str(rng.choice(NAMES, p=NAME_P)), version=str(rng.choice(VERSIONS))
        )
        return Call(kind, method, req.SerializeToString(), good if rng.random() < 0.8 else ())
    raise ValueError(f"unknown kind {kind!r}")


#: request kind -> share of the calls (percent)
KINDS = {
    "infer_absurd": 14,
    "infer_mutated": 8,
    "infer_valid": 3,
    "learn_absurd": 8,
    "learn_bad": 10,
    "learn_mutated": 7,
    "learn_valid": 9,
    "learn_retry": 3,
    "random_bytes": 6,
    "oversized": 1,
    "bad_token": 6,
    "infer_stream": 5,
    "learn_stream": 6,
    "abandoned_infer_stream": 3,
    "abandoned_learn_stream": 3,
    "admin": 6,
    "metadata": 2,
}
_NAMES = list(KINDS)
#: request ids shared by the run's learn_retry calls
RETRY_IDS = 40
_P = np.array(list(KINDS.values()), float) / sum(KINDS.values())


def make_call(seed: int, index: int, ctx: Context) -> Call:
    """Call number ``index`` of the run with ``seed`` (the same call every time)."""
    rng = np.random.default_rng([seed, index])
    return _call(str(rng.choice(_NAMES, p=_P)), rng, ctx, seed)
