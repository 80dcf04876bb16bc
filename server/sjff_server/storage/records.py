"""Records of the update log and their frames (pure byte layout; no files here).

:class:`Update` is the one object an update is from the request that brings it to the log.

A payload is ``<u8 kind><u64 version><f64 unix time>`` followed, for an update (kind 1), by
``<u64 seed><f64 eta><u32 n><u32 d>``, the images ``[n, d]`` float32, the labels ``[n]``
int64 and the positive flags ``[n]`` uint8; for a rollback (kind 2) by ``<u64 restored
version>``; for a digest (kind 3) by the 32-byte sha256 of the learning state at ``version``
(:func:`sjff_server.storage.snapshots.state_digest`). An update that came with a request id
is kind 4: kind 1's layout followed by ``<u16 id bytes>``, the id (UTF-8) and the log-odds
it was answered with ``[n]`` float32, so that a retry is answered the same after a restart
(requests.py); a log without request ids is written exactly as before. All little-endian.

Frames of format 2 (segments starting ``SJFFLOG2``) are ``<u32 length><u32 crc32(payload)>
<u32 crc32(first 8 header bytes)>`` + payload. The header's own checksum is what lets
recovery tell a torn write (the file ends inside a frame whose header is intact) from a
damaged length field (which would otherwise look like a frame running past the end of the
file). Format 1 (``SJFFLOG1``, written by earlier releases) has no header checksum; it is
still read.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from spikingjelly_ff.runtime.protocol import RuntimeModel

__all__ = [
    "DIGEST",
    "MAGIC",
    "MAGIC_V1",
    "MAX_PAYLOAD",
    "ROLLBACK",
    "UPDATE",
    "UPDATE_WITH_ID",
    "VERSIONED_KINDS",
    "Update",
    "UpdateRecord",
    "decode_payload",
    "decode_update",
    "encode_record",
    "encode_update",
    "header_size",
]

MAGIC = b"SJFFLOG2"
MAGIC_V1 = b"SJFFLOG1"
UPDATE, ROLLBACK, DIGEST = 1, 2, 3
UPDATE_WITH_ID = 4  # on disk only: read back as an UPDATE record with its request id
KINDS = {UPDATE: "update", ROLLBACK: "rollback", DIGEST: "digest"}
#: the kind bytes of the records that take a version, as written on disk
VERSIONED_KINDS = (UPDATE, UPDATE_WITH_ID, ROLLBACK)
FRAME_V1 = struct.Struct("<II")
FRAME = struct.Struct("<III")
_LEN_CRC = struct.Struct("<II")
HEAD = struct.Struct("<BQd")
_UPDATE = struct.Struct("<QdII")
_ROLLBACK = struct.Struct("<Q")
_ID_LEN = struct.Struct("<H")
MAX_PAYLOAD = 1 << 30


def header_size(magic: bytes) -> int:
    """Frame header bytes of a segment with this magic."""
    return FRAME.size if magic == MAGIC else FRAME_V1.size


@dataclass(frozen=True, slots=True)
class Update:
    """One learning update, validated once where it enters the server and never changed
    after: images ``[n, d]`` float32 in [0, 1], labels ``[n]`` int64 in [0, C), positive
    ``[n]`` float32 0/1. ``seed``/``eta`` None: the learner's defaults (the logged update
    carries the values used); ``expected_version``: apply only at that version (not logged);
    ``request_id``: the caller's idempotency key ("" none; logged with the update)."""

    images: np.ndarray
    labels: np.ndarray
    positive: np.ndarray
    seed: int | None = None
    eta: float | None = None
    expected_version: int | None = None
    request_id: str = ""

    @property
    def samples(self) -> int:
        return len(self.labels)

    def samples_sha256(self) -> bytes:
        """sha256 of the samples as logged: tells a retry from another update under its id."""
        return hashlib.sha256(_pack_samples(self.images, self.labels, self.positive)).digest()

    def apply(self, model: RuntimeModel) -> np.ndarray:
        """Learn this update in place on ``model``; the log-odds before it, ``[n]``. Overflow
        is not raised here: callers check the weights for non-finite values."""
        with np.errstate(all="ignore"):
            return model.learn(self.images, self.labels, self.positive, seed=self.seed, eta=self.eta)


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """One logged change: an ``update`` (with the seed and eta it used and, if it has a
    request id, the ``log_odds`` ``[n]`` float32 it was answered with), a rollback to
    ``restored``, or the ``digest`` (hex sha256) of the state at ``version`` (a check for
    replay, no change)."""

    kind: int
    version: int
    created: float
    update: Update | None = None
    restored: int = 0
    digest: str = ""
    log_odds: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return 0 if self.update is None else self.update.samples

    @property
    def changes_state(self) -> bool:
        """Updates and rollbacks take a version number; digests attest the current one."""
        return self.kind != DIGEST


def encode_payload(r: UpdateRecord) -> bytes:
    head = HEAD.pack(r.kind, r.version, r.created)
    if r.kind == UPDATE:
        u = r.update
        if u is None or u.seed is None or u.eta is None:
            raise ValueError(f"an update record needs an update with its seed and eta, got {u!r}")
        n, d = u.images.shape
        body = _UPDATE.pack(u.seed, u.eta, n, d) + _pack_samples(u.images, u.labels, u.positive)
        if not u.request_id:
            return head + body
        rid = u.request_id.encode()
        odds = np.ascontiguousarray(r.log_odds if r.log_odds is not None else (), dtype="<f4")
        if len(rid) > 0xFFFF or odds.shape != (n,):
            raise ValueError(f"an update record's request id must fit in 64 KiB and its log-odds be [{n}]")
        head = HEAD.pack(UPDATE_WITH_ID, r.version, r.created)
        return b"".join((head, body, _ID_LEN.pack(len(rid)), rid, odds.tobytes()))
    if r.kind == ROLLBACK:
        return head + _ROLLBACK.pack(r.restored)
    if r.kind == DIGEST:
        raw = bytes.fromhex(r.digest)
        if len(raw) != 32:
            raise ValueError(f"a digest record needs a sha256 (64 hex digits), got {r.digest!r}")
        return head + raw
    raise ValueError(f"unknown record kind {r.kind}")


def _pack_samples(images, labels, positive) -> bytes:
    """The sample block shared by log records and stream entries: images ``[n, d]`` float32,
    labels ``[n]`` int64, positive ``[n]`` uint8, little-endian."""
    return b"".join(
        (
            np.ascontiguousarray(images, dtype="<f4").tobytes(),
            np.ascontiguousarray(labels, dtype="<i8").tobytes(),
            (np.asarray(positive) > 0.5).astype(np.uint8).tobytes(),
        )
    )


def _unpack_samples(data: bytes, off: int, n: int, d: int, what: str, end: int | None = None):
    """Inverse of :func:`_pack_samples` for the block from ``off`` to ``end`` (default: the
    end of ``data``): ``(images float32, labels int64, positive float32)``; ``ValueError`` if
    its size is off."""
    need = n * d * 4 + n * 8 + n
    end = len(data) if end is None else end
    if end - off != need:
        raise ValueError(f"{what} {n}x{d} samples holds {end - off} data bytes, expected {need}")
    images = np.frombuffer(data, dtype="<f4", count=n * d, offset=off).reshape(n, d)
    off += n * d * 4
    labels = np.frombuffer(data, dtype="<i8", count=n, offset=off)
    off += n * 8
    positive = np.frombuffer(data, dtype=np.uint8, count=n, offset=off)
    return images.astype(np.float32), labels.astype(np.int64), positive.astype(np.float32)


def frame_header(payload: bytes) -> bytes:
    """The format-2 header of ``payload``."""
    lc = _LEN_CRC.pack(len(payload), zlib.crc32(payload))
    return lc + struct.pack("<I", zlib.crc32(lc))


def header_ok(header: bytes) -> bool:
    """Whether a format-2 frame header's own checksum matches."""
    return zlib.crc32(header[:8]) == struct.unpack_from("<I", header, 8)[0]


def encode_record(r: UpdateRecord) -> bytes:
    """The format-2 frame (header + payload) of a record."""
    payload = encode_payload(r)
    return frame_header(payload) + payload


def decode_payload(payload: bytes) -> UpdateRecord:
    """Inverse of :func:`encode_payload` (``ValueError`` if malformed)."""
    if len(payload) < HEAD.size:
        raise ValueError("payload too short")
    kind, version, created = HEAD.unpack_from(payload)
    off = HEAD.size
    if kind in (UPDATE, UPDATE_WITH_ID):
        if len(payload) < off + _UPDATE.size:
            raise ValueError("update payload too short")
        seed, eta, n, d = _UPDATE.unpack_from(payload, off)
        off += _UPDATE.size
        end, rid, odds = len(payload), "", None
        if kind == UPDATE_WITH_ID:  # the tail: <u16 len> id, log-odds [n]
            end = off + n * d * 4 + n * 8 + n
            if len(payload) < end + _ID_LEN.size:
                raise ValueError("update payload too short for its request id")
            (k,) = _ID_LEN.unpack_from(payload, end)
            if len(payload) != end + _ID_LEN.size + k + 4 * n:
                raise ValueError("update payload with a request id has the wrong size")
            rid = payload[end + _ID_LEN.size : end + _ID_LEN.size + k].decode()
            odds = np.frombuffer(payload, dtype="<f4", count=n, offset=end + _ID_LEN.size + k).astype(np.float32)
        images, labels, positive = _unpack_samples(payload, off, n, d, "update payload of", end)
        update = Update(images, labels, positive, seed, eta, request_id=rid)
        return UpdateRecord(UPDATE, version, created, update, log_odds=odds)
    if kind == ROLLBACK:
        if len(payload) != off + _ROLLBACK.size:
            raise ValueError("rollback payload has the wrong size")
        (restored,) = _ROLLBACK.unpack_from(payload, off)
        return UpdateRecord(ROLLBACK, version, created, restored=restored)
    if kind == DIGEST:
        if len(payload) != off + 32:
            raise ValueError("digest payload has the wrong size")
        return UpdateRecord(DIGEST, version, created, digest=payload[off:].hex())
    raise ValueError(f"unknown record kind {kind}")


# Replication entries (sjff_server.replication): one Update as bytes, apart from the log's
# records because a stream entry carries no version yet (the stream's order gives it) and
# keeps ``expected_version``, which is decided when the entry is applied; its request id is
# a field of the entry, not of these bytes.
# ``<u8 format><u8 flags><u64 seed><f64 eta><u64 expected version><u32 n><u32 d>`` + images
# ``[n, d]`` float32 + labels ``[n]`` int64 + positive ``[n]`` uint8, little-endian; a flag
# bit says which optional field is set (an unset one is stored as 0).
UPDATE_FORMAT = 1
_HAS_SEED, _HAS_ETA, _HAS_EXPECTED = 1, 2, 4
_UPDATE_HEAD = struct.Struct("<BBQdQII")


def encode_update(u: Update) -> bytes:
    """The bytes of ``u`` for a replication stream entry (format :data:`UPDATE_FORMAT`)."""
    images = np.asarray(u.images)
    if images.ndim != 2:
        raise ValueError(f"update images must be [n, d], got shape {images.shape}")
    n, d = images.shape
    labels, positive = np.asarray(u.labels), np.asarray(u.positive)
    if labels.shape != (n,) or positive.shape != (n,):
        raise ValueError(f"update labels and positive must be [{n}], got {labels.shape} and {positive.shape}")
    flags = (
        (_HAS_SEED if u.seed is not None else 0)
        | (_HAS_ETA if u.eta is not None else 0)
        | (_HAS_EXPECTED if u.expected_version is not None else 0)
    )
    try:
        head = _UPDATE_HEAD.pack(UPDATE_FORMAT, flags, u.seed or 0, u.eta or 0.0, u.expected_version or 0, n, d)
    except struct.error as exc:
        raise ValueError(f"update seed/expected_version must fit in u64, got {u.seed}/{u.expected_version}") from exc
    return head + _pack_samples(images, labels, positive)


def decode_update(data: bytes) -> Update:
    """Inverse of :func:`encode_update`; ``ValueError`` if ``data`` is truncated, too long,
    of another format or has unknown flags."""
    if len(data) < _UPDATE_HEAD.size:
        raise ValueError(f"update entry holds {len(data)} bytes, less than its {_UPDATE_HEAD.size}-byte header")
    fmt, flags, seed, eta, expected, n, d = _UPDATE_HEAD.unpack_from(data)
    if fmt != UPDATE_FORMAT:
        raise ValueError(f"update entry of format {fmt}, this server reads format {UPDATE_FORMAT}: upgrade it")
    if flags & ~(_HAS_SEED | _HAS_ETA | _HAS_EXPECTED):
        raise ValueError(f"update entry has unknown flags {flags:#04x}")
    images, labels, positive = _unpack_samples(data, _UPDATE_HEAD.size, n, d, "update entry of")
    return Update(
        images,
        labels,
        positive,
        seed if flags & _HAS_SEED else None,
        eta if flags & _HAS_ETA else None,
        expected if flags & _HAS_EXPECTED else None,
    )
