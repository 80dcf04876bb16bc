"""Stream entries applied to a model, the same way on every replica (no network writes here).

The learning version is the number of accepted entries in stream order. Consecutive updates
are applied as one group by :func:`compute_group` (refused ones move nothing); a rollback to
``V`` makes a new version holding the state at ``V``, rebuilt from the shared snapshot its
entry names (chosen and checked by the replica that accepted it, and pinned in Redis until
every replica applied it) plus the stream entries after that snapshot. The only refusal
decided at apply time is ``V`` beyond the current version, a fact every replica sees alike;
a replica that cannot rebuild (its base gone: it was dead while the pin was released)
raises :class:`Unrestorable` and recovers from a newer snapshot instead of answering
differently from the others. Answers are stored in Redis as small JSON
documents (:func:`encode_result` / :func:`decode_result`) so any replica can repeat them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from spikingjelly_ff.runtime.protocol import RuntimeModel

from .. import errors
from ..errors import OutOfRange, RequestError
from ..inference.engine import Published
from .compute import compute_group

__all__ = [
    "Replayer",
    "RollbackResult",
    "Unrestorable",
    "decode_result",
    "encode_result",
    "id_le",
    "model_from_arrays",
]

#: a rollback's answer: (new version, restored version)
RollbackResult = tuple[int, int]
_ERRORS = {c.reason: c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, RequestError)}
_MAX_DEPTH = 64
_READ = 256  # entries per stream read while rebuilding


class Unrestorable(Exception):
    """The state a rollback entry names cannot be rebuilt on this replica (its snapshot or
    stream entries are gone): the replica recovers from a snapshot taken after ``entry_id``."""

    def __init__(self, message: str, entry_id: str = "0-0") -> None:
        super().__init__(message)
        self.entry_id = entry_id


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def id_le(a: str, b: str) -> bool:
    """Whether stream entry id ``a`` comes at or before ``b`` (``"<ms>-<seq>"``)."""
    return _id(a) <= _id(b)


def encode_result(res: Any) -> dict:
    """A JSON-able dict of an update's ``(version, log-odds [n])``, a rollback's ``(new,
    restored)`` or a refusal (float32 log-odds survive JSON exactly)."""
    if isinstance(res, RequestError):
        return {"e": res.reason, "m": res.message}
    version, other = res
    if isinstance(other, np.ndarray):
        return {"v": int(version), "lo": [float(x) for x in other]}
    return {"v": int(version), "r": int(other)}


def decode_result(d: dict) -> Any:
    """The inverse of :func:`encode_result` (a refusal comes back as its :class:`RequestError`)."""
    if "e" in d:
        return _ERRORS.get(d["e"], errors.InternalError)(d["m"])
    if "lo" in d:
        return int(d["v"]), np.asarray(d["lo"], dtype=np.float32)
    return int(d["v"]), int(d["r"])


def model_from_arrays(base: RuntimeModel, weights: Sequence[np.ndarray], eligibility: Sequence[np.ndarray]):
    """A copy of ``base`` holding ``weights`` / ``eligibility`` (shapes checked: ValueError)."""
    shapes = [w.shape for w in base.weights]
    if [w.shape for w in weights] != shapes or [e.shape for e in eligibility] != shapes:
        raise ValueError(f"snapshot shapes {[w.shape for w in weights]} do not match the model's {shapes}")
    model = base.copy()
    model.weights = [np.array(w, dtype=b.dtype) for w, b in zip(weights, base.weights)]
    model.eligibility = [np.array(e, dtype=b.dtype) for e, b in zip(eligibility, base.eligibility)]
    return model


class Replayer:
    """Applies entries of one model's stream. ``stream``: a ``ReplicationLog`` (read only);
    ``shared``: a ``SharedState`` (snapshots only); ``pool``: the thread that computes."""

    def __init__(
        self,
        base: RuntimeModel,
        publish: Callable[[int, RuntimeModel], Published],
        default_eta: float,
        stream: Any,
        shared: Any,
        pool: Executor,
    ) -> None:
        self.base = base
        self.publish = publish
        self.default_eta = default_eta
        self.stream = stream
        self.shared = shared
        self.pool = pool

    async def apply(self, pub: Published, entries: Sequence[Any], depth: int = 0) -> tuple[Published, list[Any]]:
        """``entries`` applied in order on ``pub``: the new published state and one result per entry."""
        loop = asyncio.get_running_loop()
        results: list[Any] = []
        i = 0
        while i < len(entries):
            if entries[i].kind == "rollback":
                pub, res = await self._rollback(pub, entries[i], depth)
                results.append(res)
                i += 1
                continue
            j = i
            while j < len(entries) and entries[j].kind != "rollback":
                j += 1
            updates = [e.update for e in entries[i:j]]
            staged = await loop.run_in_executor(self.pool, self._compute, pub, updates)
            if staged.published is not None:
                pub = staged.published
            results.extend(staged.results)
            i = j
        return pub, results

    def _compute(self, base: Published, updates: list):
        return compute_group(base, updates, default_eta=self.default_eta, digest_every=0, publish=self.publish)

    async def _rollback(self, pub: Published, entry: Any, depth: int) -> tuple[Published, Any]:
        target, base = int(entry.rollback_to), int(entry.base or 0)
        if target > pub.version:  # the same fact on every replica
            return pub, OutOfRange(f"version {target} does not exist (current: {pub.version})")
        try:
            model, _ = await self.state_at(target, base, depth + 1)
        except Unrestorable as exc:
            raise Unrestorable(f"rollback {entry.id} to version {target}: {exc}", entry.id) from None
        new = pub.version + 1
        return self.publish(new, model), (new, target)

    async def start_of(self, snap: Any) -> tuple[Published, str]:
        """The published state of a shared snapshot (None: the artefact) and the entry id after which
        the stream continues from it."""
        if snap is None:
            return self.publish(0, self.base.copy()), "0-0"
        return self.publish(int(snap.version), model_from_arrays(self.base, snap.weights, snap.eligibility)), str(
            snap.entry_id
        )

    async def plan_rollback(self, target: int, current: int) -> tuple[int, set[int]]:
        """At append time, on the accepting replica: the snapshot version to rebuild ``target``
        from (the newest at or below it; 0: the artefact) and every snapshot version the rebuild
        reads, checked by rebuilding it. :class:`OutOfRange` if ``target`` is not restorable."""
        if not 0 <= target <= current:
            raise OutOfRange(f"version {target} does not exist (current: {current})")
        refs = await self.shared.snapshots()
        below = [r.version for r in refs if r.version <= target]
        if refs and not below:
            raise OutOfRange(
                f"version {target} is no longer restorable: the oldest shared snapshot is version {refs[0].version}"
            )
        base = below[-1] if below else 0
        try:
            _, pins = await self.state_at(target, base)
        except Unrestorable as exc:
            raise OutOfRange(f"version {target} cannot be rebuilt: {exc}") from None
        return base, pins

    async def state_at(self, target: int, base: int, depth: int = 0) -> tuple[RuntimeModel, set[int]]:
        """A private copy of the model at ``target``, rebuilt from the shared snapshot at
        ``base`` (0: the artefact) plus the stream entries after it, and the snapshot versions
        that read (nested rollbacks read theirs). :class:`Unrestorable` if any of it is gone."""
        if depth > _MAX_DEPTH:
            raise Unrestorable("rollback chain too deep")
        snap = None
        if base > 0:
            try:
                snap = await self.shared.get_snapshot(base)
            except ValueError as exc:  # damaged
                raise Unrestorable(f"snapshot {base} is damaged: {exc}") from None
            if snap is None:
                raise Unrestorable(f"snapshot {base} is no longer shared")
            # its header digest only proves the bytes are intact; the published one, that they
            # are the state every replica had (as the bootstrap checks)
            published = await self.shared.digest_at(base)
            if published is not None and published != snap.digest:
                raise Unrestorable(
                    f"snapshot {base} has digest {snap.digest[:16]}, the replicas published {published[:16]}"
                )
        pub, after = await self.start_of(snap)
        pins = {base}
        while pub.version < target:
            entries = await self.stream.read(after, min(_READ, target - pub.version), None)
            if not entries or entries[0].position != _id(after)[1] + 1:
                raise Unrestorable(f"the stream after entry {after} (version {pub.version}) was trimmed")
            for e in entries:
                if e.kind == "rollback" and e.base:
                    pins.add(int(e.base))  # read again by the nested rebuild below
            pub, _ = await self.apply(pub, entries, depth)
            after = entries[-1].id
        return pub.model.copy(), pins
